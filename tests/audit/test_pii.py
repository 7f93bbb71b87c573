"""PII scan: detectors, the streaming scanner, the allow-list, snapshots and the CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casbak.audit.pii import Allowlist, FileScanner, PiiScan, find_matches, is_text_like
from casbak.audit.pii import scanner as scanner_module
from casbak.audit.pii.detectors import DETECTOR_NAMES, MAX_MATCH, luhn_valid, shannon_entropy
from casbak.catalog import lookup_path, resolve_snapshot, walk
from casbak.cli.main import main
from casbak.errors import EXIT_PII, PiiFound, UsageError
from casbak.operations.snapshot import create_snapshot
from casbak.store.repository import Repository
from tests.conftest import CORPUS, PASSWORD, make_tree, small_config

# (detector, text, expected value). Values are made up: no real person, card or key.
POSITIVES = [
    ("email", b"contact jane.doe@mailhost.io today", b"jane.doe@mailhost.io"),
    ("email", b'{"author": "r.smith+ml@uni-example.de"}', b"r.smith+ml@uni-example.de"),
    ("email", b"mail a.b@sub.mailhost.co.uk: ok", b"a.b@sub.mailhost.co.uk"),
    ("phone", b"call +1 415 555 2671 now", b"+1 415 555 2671"),
    ("phone", b'"tel": "+442079460958"', b"+442079460958"),
    ("phone", b"office (415) 555-2671", b"(415) 555-2671"),
    ("phone", b"cell 415-555-2671.", b"415-555-2671"),
    ("phone", b"London 020 7946 0958", b"020 7946 0958"),
    ("phone", b"Berlin 030 12345678", b"030 12345678"),
    ("phone", b"+49 (30) 1234 5678", b"+49 (30) 1234 5678"),
    ("payment_card", b"card 4111 1111 1111 1111 exp", b"4111 1111 1111 1111"),
    ("payment_card", b'"pan": "4111111111111111"', b"4111111111111111"),
    ("payment_card", b"amex 3782 822463 10005", b"3782 822463 10005"),
    ("payment_card", b"mc 5555-5555-5555-4444", b"5555-5555-5555-4444"),
    ("payment_card", b"discover 6011000990139424", b"6011000990139424"),
    ("payment_card", b"id,card,qty\n7,4111111111111111,2", b"4111111111111111"),
    ("ipv4", b"client 8.8.4.4 connected", b"8.8.4.4"),
    ("ipv4", b'"ip": "10.20.30.40"', b"10.20.30.40"),
    ("ipv4", b"from 192.168.1.254:8080", b"192.168.1.254"),
    ("ipv6", b"addr 2607:f8b0:4005:80a::200e", b"2607:f8b0:4005:80a::200e"),
    ("ipv6", b"[fe80::1ff:fe23:4567:890a]", b"fe80::1ff:fe23:4567:890a"),
    ("ipv6", b"host 2a00:1450:4001:81c:0:0:0:200e up", b"2a00:1450:4001:81c:0:0:0:200e"),
    ("aws_access_key_id", b"aws_access_key_id = AKIAQX7R3MZP2WBK4N6Y", b"AKIAQX7R3MZP2WBK4N6Y"),
    ("aws_access_key_id", b'"ASIAZ9Y8X7W6V5U4T3S2"', b"ASIAZ9Y8X7W6V5U4T3S2"),
    ("gcp_api_key", b"key=AIzaSyB7q2Rk9xLm4Np0Qs3Tu6Vw8Yz1Ab2Cd3E", b"AIzaSyB7q2Rk9xLm4Np0Qs3Tu6Vw8Yz1Ab2Cd3E"),
    ("github_token", b"token ghp_Ab3De5Gh7Jk9Lm1Np3Qr5St7Vw9Yz1Bc3Df5", b"ghp_Ab3De5Gh7Jk9Lm1Np3Qr5St7Vw9Yz1Bc3Df5"),
    ("slack_token", b"SLACK=xoxb-1234567890-abcdefGHIJ", b"xoxb-1234567890-abcdefGHIJ"),
    ("huggingface_token", b"HF hf_Qw3Er5Ty7Ui9Op1As3Df5Gh7Jk9Lz1Xc3V", b"hf_Qw3Er5Ty7Ui9Op1As3Df5Gh7Jk9Lz1Xc3V"),
    ("stripe_key", b"sk_live_4eC39HqLyjWDarjtT1zdp7dc", b"sk_live_4eC39HqLyjWDarjtT1zdp7dc"),
    ("private_key", b"-----BEGIN RSA PRIVATE KEY-----", b"-----BEGIN RSA PRIVATE KEY-----"),
    ("private_key", b'"-----BEGIN PRIVATE KEY-----\\nMIIE', b"-----BEGIN PRIVATE KEY-----"),
    ("private_key", b"-----BEGIN OPENSSH PRIVATE KEY-----", b"-----BEGIN OPENSSH PRIVATE KEY-----"),
    ("bearer_token", b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl1", b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl1"),
    ("secret_assignment", b"api_key=9f8e7d6c5b4a39281716", b"9f8e7d6c5b4a39281716"),
    ("secret_assignment", b'  "client_secret": "Zr8Kq2Lm5Np7Qs9Tu1Vw"', b"Zr8Kq2Lm5Np7Qs9Tu1Vw"),
    ("secret_assignment", b"OPENAI_API_KEY=sk-proj-A1b2C3d4E5f6G7h8", b"sk-proj-A1b2C3d4E5f6G7h8"),
    ("secret_assignment", b"db_password: 7hG2kLp9QzX4mN8w", b"7hG2kLp9QzX4mN8w"),
]

# Look-alikes that no detector may report.
NEGATIVES = [
    b"user@example.com and ops@mail.example.org",
    b"logo@2x.png and icon@3x.svg",
    b"git@github.com:org/repo.git",
    b"pip install pkg==1.2.3 torch@2.1.0",
    b"2024-01-15T12:30:45+05:30",
    b"2024-01-15 12:30:45.123456",
    b'{"time_ns": 1700000000123456789, "id": 12345678901234}',
    b"epoch_ms 1712345678901",
    b"version 1.2.3 and 10.4.1-rc2",
    b"version: 1.2.3.4",
    b'"version": "4.3.2.1"',
    b"requires v1.20.30.4",
    b"[0.1234567, 0.2345678, 0.3456789012, -1.5e+10]",
    b'{"embedding": [0.015625, -0.4110000000000001, 3.14159265358979]}',
    b"4111111111111112",
    b"1234567812345678",
    b"0000 0000 0000 0000",
    b"9999999999999995",
    b"commit 3f2a9c1b7e6d5f4a3b2c1d0e9f8a7b6c5d4e3f2a",
    b"sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    b"uuid 123e4567-e89b-12d3-a456-426614174000",
    b"run at 12:30:45 and 09:15",
    b"local ::1 and 127.0.0.1 and 0.0.0.0",
    b"docs 192.0.2.10 and 2001:db8::1",
    b"std::vector<int> a::b",
    b"mac de:ad:be:ef:00:01",
    b"api_key: your_api_key_here",
    b"api_key: ${OPENAI_API_KEY}",
    b"secret: xxxxxxxxxxxxxxxxxxxx",
    b"password: hunter2",
    b"max_tokens: 2048, tokenizer: meta-llama/Llama-2-7b-hf",
    b"the bearer of this letter",
    b"AKIA1234",
    b"ISBN 978-3-16-148410-0",
    b"price 1,234,567.89 and 3.14",
    b"oid 1.3.6.1.4.1.311",
    b"+1000 points",
]


def values_by_detector(text: bytes) -> list[tuple[str, bytes]]:
    return [(name, text[start:end]) for name, start, end in find_matches(text)]


@pytest.mark.parametrize("detector, text, value", POSITIVES, ids=[f"{d}-{i}" for i, (d, _t, _v) in enumerate(POSITIVES)])
def test_detector_finds_positive(detector, text, value):
    found = values_by_detector(text)

    assert (detector, value) in found
    assert all(name == detector for name, _value in found)


@pytest.mark.parametrize("text", NEGATIVES, ids=[f"negative-{i}" for i in range(len(NEGATIVES))])
def test_detector_ignores_lookalike(text):
    assert values_by_detector(text) == []


def test_every_detector_has_positive_sample():
    assert {detector for detector, _text, _value in POSITIVES} == set(DETECTOR_NAMES)


def test_luhn_known_numbers():
    assert luhn_valid(b"4111111111111111")
    assert luhn_valid(b"79927398713")
    assert not luhn_valid(b"4111111111111112")
    assert not luhn_valid(b"79927398710")


def test_entropy_of_uniform_and_constant():
    assert shannon_entropy(b"aaaa") == 0.0
    assert shannon_entropy(bytes(range(16))) == pytest.approx(4.0)


def test_text_like_suffixes():
    assert is_text_like("/d/prefs.jsonl")
    assert is_text_like("/d/Train.JSONL.GZ")
    assert is_text_like("/d/notes.md")
    assert not is_text_like("/d/model.safetensors")
    assert not is_text_like("/d/archive.tar.gz")


# The streaming scanner

DOCUMENT = (
    b'{"prompt": "hello", "chosen": "write to jane.doe@mailhost.io"}\n'
    b'{"prompt": "card", "chosen": "4111 1111 1111 1111"}\n'
    b"plain line without anything\n"
    b'{"ip": "8.8.4.4", "key": "AKIAQX7R3MZP2WBK4N6Y"}\n'
    b"last line call +1 415 555 2671"
)
DOCUMENT_HITS = {"email": [1], "payment_card": [2], "ipv4": [4], "aws_access_key_id": [4], "phone": [5]}


def scan(parts: list[bytes], path: str = "/d/data.jsonl", allowlist: Allowlist | None = None):
    scanner = FileScanner(path, allowlist)
    for part in parts:
        scanner.feed(part)
    return scanner.finish()


def hit_lines(findings) -> dict[str, list[int]]:
    return {name: hits.lines for name, hits in findings.hits.items()}


def test_scanner_whole_document():
    findings = scan([DOCUMENT])

    assert hit_lines(findings) == DOCUMENT_HITS
    assert findings.scanned_bytes == len(DOCUMENT)
    assert findings.incomplete is None


def test_scanner_every_cut_position():
    for cut in range(1, len(DOCUMENT)):
        findings = scan([DOCUMENT[:cut], DOCUMENT[cut:]])

        assert hit_lines(findings) == DOCUMENT_HITS, cut


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=len(DOCUMENT) - 1), max_size=12))
def test_scanner_random_cuts(cuts):
    edges = [0] + sorted(set(cuts)) + [len(DOCUMENT)]
    parts = [DOCUMENT[a:b] for a, b in zip(edges, edges[1:])]

    assert hit_lines(scan(parts)) == DOCUMENT_HITS


def test_scanner_line_over_carry_limit():
    # One line longer than MAX_CARRY with an address right where the first piece is cut.
    filler = b"x " * (scanner_module.MAX_CARRY // 2)
    line = filler + b" jane.doe@mailhost.io " + filler + b"\n"
    findings = scan([line[i : i + 65536] for i in range(0, len(line), 65536)] + [b"next card 4111111111111111\n"])

    assert findings.hits["email"].count == 1
    assert findings.hits["email"].lines == [1]
    assert findings.hits["payment_card"].lines == [2]


def test_scanner_match_at_cut_of_long_line():
    # Place the address so that it straddles len(carry) - MAX_MATCH on the first long-line pass.
    email = b"jane.doe@mailhost.io"
    head = b"y " * ((scanner_module.MAX_CARRY + 2) // 2)
    position = len(head) - MAX_MATCH - 5
    data = head[:position] + b" " + email + b" " + head[position + len(email) + 2 :] + b" tail"
    findings = scan([data[i : i + 4096] for i in range(0, len(data), 4096)])

    assert findings.hits["email"].count == 1


def test_scanner_counts_exact_and_caps_lines():
    data = b"".join(b"row %d jane.doe@mailhost.io\n" % i for i in range(100))
    findings = scan([data])

    assert findings.hits["email"].count == 100
    assert findings.hits["email"].lines == list(range(1, scanner_module.MAX_LINES + 1))


def test_scanner_gzip_in_small_chunks():
    compressed = gzip.compress(DOCUMENT)
    findings = scan([compressed[i : i + 7] for i in range(0, len(compressed), 7)], path="/d/data.jsonl.gz")

    assert hit_lines(findings) == DOCUMENT_HITS
    assert findings.scanned_bytes == len(DOCUMENT)


def test_scanner_gzip_several_members():
    compressed = gzip.compress(b"first line\n") + gzip.compress(b"second jane.doe@mailhost.io\n")
    findings = scan([compressed], path="/d/log.txt.gz")

    assert findings.hits["email"].lines == [2]


def test_scanner_gzip_invalid_data():
    findings = scan([b"this is not gzip at all\n" * 10], path="/d/broken.json.gz")

    assert findings.incomplete is not None
    assert "gzip" in findings.incomplete


def test_scanner_gzip_cap(monkeypatch):
    monkeypatch.setattr(scanner_module, "MAX_DECOMPRESSED", 1000)
    data = b"a line of text\n" * 1000 + b"jane.doe@mailhost.io\n"
    findings = scan([gzip.compress(data)], path="/d/big.log.gz")

    assert findings.scanned_bytes == 1000
    assert findings.incomplete is not None
    assert "email" not in findings.hits


def test_scanner_leaves_binary_suffix_alone():
    pii = PiiScan("warn")

    assert pii.scanner_for("/d/weights.bin") is None
    assert pii.scanner_for("/d/notes.txt") is not None


# The allow-list


def test_allowlist_path_glob_suppresses_detector():
    allowlist = Allowlist.parse("# known test fixtures\nemail:/d/fixtures/*\n")

    assert hit_lines(scan([DOCUMENT], "/d/fixtures/a.jsonl", allowlist)).get("email") is None
    assert hit_lines(scan([DOCUMENT], "/d/fixtures/a.jsonl", allowlist))["ipv4"] == [4]
    assert hit_lines(scan([DOCUMENT], "/d/other.jsonl", allowlist))["email"] == [1]


def test_allowlist_hash_suppresses_value():
    digest = hashlib.sha256(b"8.8.4.4").hexdigest()
    findings = scan([DOCUMENT], allowlist=Allowlist.parse(f"ipv4:sha256:{digest}\n"))

    assert "ipv4" not in findings.hits
    assert findings.suppressed == {"ipv4": 1}
    assert findings.hits["email"].lines == [1]


def test_allowlist_documented_example():
    text = Path(__file__).resolve().parents[2].joinpath("docs", "audit.md").read_text(encoding="utf-8")
    example = text.split("# The data set's support address", 1)[1].split("```", 1)[0]
    allowlist = Allowlist.parse(example.split("\n", 1)[1])
    findings = scan([b"write to support@mailhost.io\n"], allowlist=allowlist)

    assert findings.hits == {}
    assert findings.suppressed == {"email": 1}


def test_allowlist_star_detector():
    allowlist = Allowlist.parse("*:*/data.jsonl\n")

    assert scan([DOCUMENT], allowlist=allowlist).hits == {}


@pytest.mark.parametrize("line", ["email", "nosuch:/x/*", "email:sha256:abc", "email:"])
def test_allowlist_rejects_invalid_line(line):
    with pytest.raises(UsageError):
        Allowlist.parse(line + "\n")


# Snapshots

EMAIL = b"jane.doe@mailhost.io"
CARD = b"4111 1111 1111 1111"
AWS_KEY = b"AKIAQX7R3MZP2WBK4N6Y"
SECRET_VALUES = (EMAIL, CARD, AWS_KEY)


def pii_source(root: Path) -> Path:
    make_tree(
        root,
        {
            "prefs.jsonl": (b'{"prompt": "hi", "chosen": "mail ' + EMAIL + b'"}\n') * 3,
            "notes": {"pay.csv": b"id,card\n1," + CARD + b"\n", "keys.yaml.gz": gzip.compress(b"aws:\n  id: " + AWS_KEY + b"\n")},
            "weights.bin": b"binary " + EMAIL,
            "clean.txt": b"nothing to see here\n",
        },
    )
    return root


@pytest.fixture
def plain_repository(tmp_path) -> Repository:
    path = tmp_path / "plain-repo"
    Repository.init(str(path), None, config=small_config(encrypted=False))
    return Repository.open(str(path))


def test_snapshot_warn_records_findings(plain_repository, tmp_path):
    source = pii_source(tmp_path / "src")

    result = create_snapshot(plain_repository, [str(source)], pii_scan=PiiScan("warn"))
    record = resolve_snapshot(plain_repository, "latest").pii

    assert result.manifest.pii == record
    assert record["mode"] == "warn"
    assert record["counts"] == {"aws_access_key_id": 1, "email": 3, "payment_card": 1}
    assert record["files_scanned"] == 4
    by_path = {(row["path"], row["detector"]): row["lines"] for row in record["findings"]}
    assert by_path[(str(source / "prefs.jsonl"), "email")] == [1, 2, 3]
    assert by_path[(str(source / "notes" / "pay.csv"), "payment_card")] == [2]
    assert by_path[(str(source / "notes" / "keys.yaml.gz"), "aws_access_key_id")] == [2]
    assert not any(row["path"].endswith("weights.bin") for row in record["findings"])


def test_snapshot_stores_no_value_outside_file_chunks(plain_repository, tmp_path):
    source = pii_source(tmp_path / "src")
    create_snapshot(plain_repository, [str(source)], pii_scan=PiiScan("warn"))
    manifest = resolve_snapshot(plain_repository, "latest")
    file_chunks = {chunk for _path, entry in walk(plain_repository, manifest.tree) if entry.chunks for chunk in entry.chunks}
    tree_digests = {entry.subtree for _path, entry in walk(plain_repository, manifest.tree) if entry.subtree}

    manifest_plaintext = plain_repository.read_manifest(manifest.id)
    for value in SECRET_VALUES:
        assert value not in manifest_plaintext
    for digest in plain_repository.index.digests():
        plaintext = plain_repository.get(digest)
        if digest in tree_digests or digest == manifest.tree:
            assert not any(value in plaintext for value in SECRET_VALUES), digest.hex()
        elif any(value in plaintext for value in SECRET_VALUES):
            assert digest in file_chunks, digest.hex()
    for stored in Path(plain_repository.backend.root).rglob("*"):
        if stored.is_file() and not stored.relative_to(plain_repository.backend.root).parts[0] == "data":
            assert not any(value in stored.read_bytes() for value in SECRET_VALUES), stored


def test_snapshot_fail_writes_no_manifest(plain_repository, tmp_path, caplog):
    source = pii_source(tmp_path / "src")
    caplog.set_level(logging.DEBUG)

    with pytest.raises(PiiFound) as raised:
        create_snapshot(plain_repository, [str(source)], pii_scan=PiiScan("fail"))

    message = str(raised.value)
    assert plain_repository.list_snapshot_ids() == []
    assert raised.value.exit_code == EXIT_PII
    assert str(source / "prefs.jsonl") in message
    assert "--exclude" in message
    assert "--pii-allowlist" in message
    for value in SECRET_VALUES:
        assert value.decode() not in message
        assert value.decode() not in caplog.text


def test_snapshot_fail_passes_with_allowlist(plain_repository, tmp_path):
    source = pii_source(tmp_path / "src")
    allowlist = Allowlist.parse(f"email:{source}/*.jsonl\n*:{source}/notes/*\n")

    result = create_snapshot(plain_repository, [str(source)], pii_scan=PiiScan("fail", allowlist))

    assert result.manifest.pii["counts"] == {}
    assert plain_repository.list_snapshot_ids() == [result.manifest.id]


def test_snapshot_unchanged_files_keep_findings(plain_repository, tmp_path):
    source = pii_source(tmp_path / "src")
    create_snapshot(plain_repository, [str(source)], pii_scan=PiiScan("warn"))
    (source / "clean.txt").write_bytes(b"changed, still clean\n")

    second = create_snapshot(plain_repository, [str(source)], pii_scan=PiiScan("warn")).manifest.pii

    assert second["files_scanned"] == 1
    assert second["files_carried"] == 3
    assert second["counts"] == {"aws_access_key_id": 1, "email": 3, "payment_card": 1}


def test_snapshot_after_unscanned_parent_reads_all(plain_repository, tmp_path):
    source = pii_source(tmp_path / "src")
    create_snapshot(plain_repository, [str(source)])

    record = create_snapshot(plain_repository, [str(source)], pii_scan=PiiScan("warn")).manifest.pii

    assert record["files_scanned"] == 4
    assert record["counts"]["email"] == 3


def test_snapshot_lists_incomplete_scan(plain_repository, tmp_path):
    source = tmp_path / "src"
    make_tree(source, {"broken.json.gz": b"not gzip, although the name says so\n"})

    record = create_snapshot(plain_repository, [str(source)], pii_scan=PiiScan("warn")).manifest.pii

    assert [item["path"] for item in record["incomplete"]] == [str(source / "broken.json.gz")]
    assert "gzip" in record["incomplete"][0]["reason"]
    assert record["counts"] == {}


def test_snapshot_without_scan_has_no_record(plain_repository, tmp_path):
    source = pii_source(tmp_path / "src")

    manifest = create_snapshot(plain_repository, [str(source)]).manifest

    assert manifest.pii is None
    assert b"pii" not in manifest.encode()


# Command line


@pytest.fixture
def run(monkeypatch, capsys):
    """Run `casbak ARGS...` in this process; return (exit code, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["casbak", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        code = exit_info.value.code
        return (0 if code is None else int(code)), captured.out, captured.err

    return invoke


@pytest.fixture
def cli_repository(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cli-repo"
    Repository.init(str(path), None, config=small_config(encrypted=False))
    monkeypatch.setenv("CASBAK_REPOSITORY", str(path))
    return path


def assert_no_values(*outputs: str) -> None:
    for output in outputs:
        for value in SECRET_VALUES:
            assert value.decode() not in output


def test_cli_fail_mode_exit_code(run, cli_repository, tmp_path):
    source = pii_source(tmp_path / "src")

    code, out, err = run("snapshot", str(source), "--pii-scan", "fail")

    assert code == EXIT_PII
    assert "prefs.jsonl" in err
    assert Repository.open(str(cli_repository)).list_snapshot_ids() == []
    assert_no_values(out, err)


def test_cli_warn_then_audit(run, cli_repository, tmp_path):
    source = pii_source(tmp_path / "src")

    code, out, err = run("snapshot", str(source), "--pii-scan", "warn")
    audit_code, audit_out, audit_err = run("audit", "pii", "latest")
    json_code, json_out, _json_err = run("audit", "pii", "latest", "--json")
    document = json.loads(json_out)

    assert code == 0
    assert "PII scan: 5 matches in 3 files" in err
    assert audit_code == 0
    assert "prefs.jsonl: email x3 (lines 1, 2, 3)" in audit_out
    assert json_code == 0
    assert document["scanned"] is True
    assert document["pii"]["counts"] == {"aws_access_key_id": 1, "email": 3, "payment_card": 1}
    assert_no_values(out, err, audit_out, audit_err, json_out)


def test_cli_allowlist_file(run, cli_repository, tmp_path):
    source = pii_source(tmp_path / "src")
    allowlist = tmp_path / "allow.txt"
    card_hash = hashlib.sha256(CARD).hexdigest()
    allowlist.write_text(f"email:*/prefs.jsonl\npayment_card:sha256:{card_hash}\naws_access_key_id:*.gz\n")

    code, _out, err = run("snapshot", str(source), "--pii-scan", "fail", "--pii-allowlist", str(allowlist))

    assert code == 0, err


def test_cli_profile_sets_fail_mode(run, cli_repository, tmp_path):
    source = pii_source(tmp_path / "src")
    config = tmp_path / "config.toml"
    config.write_text(f'[profiles.scan]\nsources = ["{source}"]\npii-scan = "fail"\n')

    code, out, err = run("--config", str(config), "--profile", "scan", "snapshot")

    assert code == EXIT_PII
    assert "keys.yaml.gz" in err
    assert_no_values(out, err)


def test_cli_rejects_unknown_mode(run, cli_repository, tmp_path):
    source = pii_source(tmp_path / "src")

    code, _out, err = run("snapshot", str(source), "--pii-scan", "loud")

    assert code == 2
    assert "--pii-scan" in err


def test_cli_audit_unscanned_snapshot(run, cli_repository, tmp_path):
    source = pii_source(tmp_path / "src")
    run("snapshot", str(source))

    code, out, _err = run("audit", "pii", "latest")

    assert code == 0
    assert "without a PII scan" in out


# The real corpus


@pytest.mark.skipif(not CORPUS.is_dir(), reason="corpus not available")
def test_corpus_warn_mode(memory_repository):
    result = create_snapshot(memory_repository, [str(CORPUS)], pii_scan=PiiScan("warn"))
    record = result.manifest.pii

    assert record["files_scanned"] > 0
    assert record["bytes_scanned"] > 0
    assert record["incomplete"] == []
    assert all(row["count"] >= len(row["lines"]) for row in record["findings"])
