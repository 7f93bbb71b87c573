"""Per-file SHA-256: recording in snapshots, SHA256SUMS export checked by the real sha256sum."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from casbak.audit.checksums import escape_sums_name, iter_file_digests
from casbak.catalog import lookup_path
from casbak.operations.snapshot import create_snapshot
from casbak.operations.sources import StreamSource
from casbak.store.repository import Repository
from tests.audit.cli_runner import run_casbak
from tests.conftest import CORPUS, FAST_KDF, PASSWORD, make_tree, small_config

SHA256SUM = shutil.which("sha256sum")
needs_sha256sum = pytest.mark.skipif(SHA256SUM is None, reason="GNU sha256sum is not installed")


def sha256sum_check(directory: Path, sums: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SHA256SUM, "--strict", "-c", str(sums)], cwd=directory, capture_output=True, timeout=120)


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


@needs_sha256sum
@pytest.mark.skipif(not CORPUS.is_dir(), reason="corpus directory is missing")
def test_sums_verify_corpus_restore(repository, repo_path, tmp_path):
    create_snapshot(repository, [str(CORPUS)])
    sums = tmp_path / "SHA256SUMS"
    target = tmp_path / "restored"

    exported = run_casbak(repo_path, "audit", "export", "latest", "--path", str(CORPUS), "--output", str(sums))
    restored = run_casbak(repo_path, "restore", "latest", "--target", str(target), "--path", str(CORPUS))
    checked = sha256sum_check(target, sums)

    assert exported.returncode == 0, exported.stderr
    assert restored.returncode == 0, restored.stderr
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(sums.read_bytes().splitlines()) == len(all_files(CORPUS))

    victim = all_files(target)[len(all_files(target)) // 2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    broken = sha256sum_check(target, sums)

    assert broken.returncode == 1
    assert f"{victim.relative_to(target)}: FAILED".encode() in broken.stdout


@needs_sha256sum
def test_sums_escape_special_names(repository, repo_path, tmp_path):
    source = tmp_path / "source"
    names = ["new\nline.txt", "back\\slash.txt", "carriage\rreturn.txt", "plain.txt", "sp ace.txt"]
    make_tree(source, {"dir": {name: name.encode() * 10 for name in names}})
    create_snapshot(repository, [str(source)])
    sums = tmp_path / "SHA256SUMS"
    target = tmp_path / "restored"

    exported = run_casbak(repo_path, "audit", "export", "latest", "--path", str(source), "--output", str(sums))
    restored = run_casbak(repo_path, "restore", "latest", "--target", str(target), "--path", str(source))
    checked = sha256sum_check(target, sums)

    assert exported.returncode == 0, exported.stderr
    assert restored.returncode == 0, restored.stderr
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(b": OK") == len(names)
    assert b"\\" + hashlib.sha256(names[0].encode() * 10).hexdigest().encode() + b"  dir/new\\nline.txt\n" in sums.read_bytes()


def test_escape_matches_coreutils_rules():
    assert escape_sums_name(b"a b") == (b"a b", False)
    assert escape_sums_name(b"a\\b") == (b"a\\\\b", True)
    assert escape_sums_name(b"a\nb") == (b"a\\nb", True)
    assert escape_sums_name(b"a\rb") == (b"a\\rb", True)
    assert escape_sums_name(b"\xff\\") == (b"\xff\\\\", True)


@needs_sha256sum
def test_sums_single_file_path(repository, repo_path, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"sub": {"data.bin": b"abc" * 5000}})
    create_snapshot(repository, [str(source)])
    sums = tmp_path / "SHA256SUMS"
    target = tmp_path / "restored"
    file_path = str(source / "sub" / "data.bin")

    exported = run_casbak(repo_path, "audit", "export", "latest", "--path", file_path, "--output", str(sums))
    restored = run_casbak(repo_path, "restore", "latest", "--target", str(target), "--path", file_path)
    checked = sha256sum_check(target, sums)

    assert exported.returncode == 0, exported.stderr
    assert restored.returncode == 0, restored.stderr
    assert sums.read_bytes() == hashlib.sha256(b"abc" * 5000).hexdigest().encode() + b"  data.bin\n"
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_json_export_lists_every_field(repository, repo_path, tmp_path):
    source = tmp_path / "source"
    content = b"prompt,chosen,rejected\n" * 300
    make_tree(source, {"prefs.csv": content})
    result = create_snapshot(repository, [str(source)])
    entry = lookup_path(repository, result.manifest.tree, str(source / "prefs.csv"))

    exported = run_casbak(repo_path, "--json", "audit", "export", "latest", "--path", str(source))
    document = json.loads(exported.stdout)
    record = document["files"][0]

    assert exported.returncode == 0, exported.stderr
    assert document["snapshot"] == result.manifest.id
    assert document["files_without_sha256"] == 0
    assert record["path"] == "prefs.csv"
    assert record["size"] == len(content)
    assert record["mtime_ns"] == (source / "prefs.csv").stat().st_mtime_ns
    assert record["mtime"].endswith("Z")
    assert record["sha256"] == hashlib.sha256(content).hexdigest()
    assert record["sha256_source"] == "snapshot"
    assert record["blake3"] == entry.content.hex()
    assert record["blake3_keyed"] is True


def test_unchanged_file_keeps_parent_sha256(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a.bin": b"a" * 9000, "b.bin": b"b" * 9000})
    create_snapshot(repository, [str(source)])
    (source / "b.bin").write_bytes(b"B" * 9000)
    second = create_snapshot(repository, [str(source)])

    digests = {item.path: item.sha256 for item in iter_file_digests(repository, second.manifest, str(source))}

    assert second.stats.files_unmodified == 1
    assert digests[b"a.bin"] == hashlib.sha256(b"a" * 9000).digest()
    assert digests[b"b.bin"] == hashlib.sha256(b"B" * 9000).digest()


def test_stream_source_records_sha256(repository, tmp_path):
    with StreamSource("dumps/db.sql", io.BytesIO(b"dump-content"), "test") as stream:
        result = create_snapshot(repository, [], streams=[stream])

    entry = lookup_path(repository, result.manifest.tree, "/dumps/db.sql")

    assert entry.sha256 == hashlib.sha256(b"dump-content").digest()


@pytest.fixture
def legacy_repo(tmp_path) -> Path:
    """A repository with file_sha256 off, which is how configs from before the setting read."""
    path = tmp_path / "legacy"
    Repository.init(str(path), PASSWORD, config=small_config(file_sha256=False), kdf=FAST_KDF)
    return path


def test_export_reports_files_without_sha256(legacy_repo, tmp_path):
    repository = Repository.open(str(legacy_repo), PASSWORD)
    source = tmp_path / "source"
    make_tree(source, {"old.txt": b"recorded before sha256\n", "other.txt": b"x"})
    create_snapshot(repository, [str(source)])
    sums = tmp_path / "SHA256SUMS"

    partial = run_casbak(legacy_repo, "audit", "export", "latest", "--path", str(source), "--output", str(sums))
    computed = run_casbak(legacy_repo, "audit", "export", "latest", "--path", str(source), "--compute-missing")

    assert repository.config.file_sha256 is False
    assert partial.returncode == 3
    assert b"no SHA-256 recorded: old.txt" in partial.stderr
    assert b"2 files of snapshot" in partial.stderr
    assert sums.read_bytes() == b""
    assert computed.returncode == 0, computed.stderr
    assert hashlib.sha256(b"recorded before sha256\n").hexdigest().encode() + b"  old.txt\n" in computed.stdout


def test_init_without_file_sha256(tmp_path):
    repo = tmp_path / "repo"

    created = run_casbak(repo, "init", "--kdf-n", "1024", "--no-file-sha256")
    repository = Repository.open(str(repo), PASSWORD)

    assert created.returncode == 0, created.stderr
    assert repository.config.file_sha256 is False
    assert small_config().file_sha256 is True
