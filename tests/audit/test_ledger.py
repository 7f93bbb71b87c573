"""`verify --ledger` on damaged chains, and the ledger export checked without casbak."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import msgpack
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from casbak.audit.ledger import MANIFEST_UNSIGNED, SIGNATURE_INVALID, SIGNER_UNKNOWN
from casbak.audit.signing import SigningKey, fingerprint_of, publish_public_key, sign_manifest
from casbak.catalog import load_manifests
from casbak.cli.tag_cmd import retag
from casbak.manifest import Manifest
from casbak.operations.snapshot import create_snapshot
from casbak.operations.verify import VerifyOptions, verify_repository
from casbak.operations.verify.findings import CHAIN_BROKEN
from casbak.store.locks import EXCLUSIVE, RepositoryLock
from casbak.store.repository import SNAPSHOTS_PREFIX, Repository
from tests.audit.cli_runner import run_casbak
from tests.conftest import make_tree


def new_key() -> SigningKey:
    private_key = Ed25519PrivateKey.generate()
    return SigningKey(private_key, fingerprint_of(private_key.public_key()))


@dataclasses.dataclass
class Chain:
    repository: Repository
    key: SigningKey
    manifests: list[Manifest]  # oldest first: one unsigned, then signed ones


@pytest.fixture
def chain(repository, tmp_path) -> Chain:
    """Five snapshots: the first taken before signing began, the other four signed."""
    key = new_key()
    source = tmp_path / "source"
    make_tree(source, {"prefs.jsonl": b'{"chosen": "a"}\n'})
    create_snapshot(repository, [str(source)])
    publish_public_key(repository, key.public_key)
    for number in range(4):
        (source / "prefs.jsonl").write_bytes(b'{"chosen": "b"}\n' * (number + 2))
        create_snapshot(repository, [str(source)], signing_key=key)
    return Chain(repository, key, load_manifests(repository))


def verify_ledger(repository: Repository, signers: tuple[str, ...] = ()):
    options = VerifyOptions(ledger=True, signers=frozenset(signers) or None)
    return verify_repository(repository, options)


def replace_manifest(repository: Repository, manifest: Manifest, plaintext: bytes) -> str:
    """Store `plaintext` under its own id and delete `manifest`, as someone with the password could."""
    new_id = repository.write_manifest(plaintext)
    repository.backend.delete(f"{SNAPSHOTS_PREFIX}/{manifest.id}")
    return new_id


def test_clean_chain_verifies(chain):
    result = verify_ledger(chain.repository, (chain.key.fingerprint,))

    assert result.ok, [f.message for f in result.errors]
    assert result.first_broken_link is None
    assert [m.signer is not None for m in chain.manifests] == [False, True, True, True, True]


def test_manifest_edited_in_place(chain):
    victim = chain.manifests[2]
    edited = dataclasses.replace(victim, hostname="elsewhere", id="").encode()
    chain.repository.backend.write(f"{SNAPSHOTS_PREFIX}/{victim.id}", chain.repository.sealer.seal(edited))

    result = verify_ledger(chain.repository)
    first = result.first_broken_link

    assert not result.ok
    assert first.kind == CHAIN_BROKEN
    assert first.snapshot == chain.manifests[3].id
    assert first.previous == victim.id
    assert "damaged or edited" in first.message


def test_manifest_edited_under_new_id(chain):
    victim = chain.manifests[2]
    edited = dataclasses.replace(victim, tags=["approved"], id="")
    new_id = replace_manifest(chain.repository, victim, edited.encode())

    result = verify_ledger(chain.repository)
    first = result.first_broken_link

    assert first.kind == SIGNATURE_INVALID
    assert first.snapshot == new_id
    assert victim.time_iso in first.message
    assert any(f.kind == CHAIN_BROKEN and f.previous == victim.id for f in result.errors)


def test_manifest_removed_from_middle(chain):
    victim = chain.manifests[2]
    chain.repository.backend.delete(f"{SNAPSHOTS_PREFIX}/{victim.id}")

    result = verify_ledger(chain.repository)
    first = result.first_broken_link

    assert first.kind == CHAIN_BROKEN
    assert first.snapshot == chain.manifests[3].id
    assert first.previous == victim.id
    assert "is missing" in first.message


def test_manifest_resigned_with_unknown_key(chain):
    victim = chain.manifests[2]
    forged = dataclasses.replace(victim, tags=["approved"], id="")
    sign_manifest(forged, new_key())
    new_id = replace_manifest(chain.repository, victim, forged.encode())

    result = verify_ledger(chain.repository)
    first = result.first_broken_link

    assert first.kind == SIGNER_UNKNOWN
    assert first.snapshot == new_id
    assert "no public key stored" in first.message


def test_resigned_with_planted_key_needs_pin(chain):
    # The newest manifest has no successor, so only the signature can expose it.
    victim = chain.manifests[-1]
    planted = new_key()
    publish_public_key(chain.repository, planted.public_key)
    forged = dataclasses.replace(victim, tags=["approved"], id="")
    sign_manifest(forged, planted)
    new_id = replace_manifest(chain.repository, victim, forged.encode())

    unpinned = verify_ledger(chain.repository)
    pinned = verify_ledger(chain.repository, (chain.key.fingerprint,))

    assert unpinned.ok
    assert pinned.first_broken_link.kind == SIGNER_UNKNOWN
    assert pinned.first_broken_link.snapshot == new_id
    assert "not one of the pinned signers" in pinned.first_broken_link.message


def test_unsigned_after_signing_began(chain, tmp_path):
    source = tmp_path / "later"
    make_tree(source, {"x": b"x"})
    unsigned = create_snapshot(chain.repository, [str(source)]).manifest

    result = verify_ledger(chain.repository)

    assert result.first_broken_link.kind == MANIFEST_UNSIGNED
    assert result.first_broken_link.snapshot == unsigned.id
    assert chain.manifests[1].id[:12] in result.first_broken_link.message


def test_pinned_signer_not_stored(chain):
    result = verify_ledger(chain.repository, ("ff" * 32,))

    assert any(f.kind == "signer_not_stored" for f in result.errors)
    assert result.first_broken_link.kind == SIGNER_UNKNOWN


def test_cli_verify_ledger_names_first_break(chain, repo_path):
    victim = chain.manifests[2]
    chain.repository.backend.delete(f"{SNAPSHOTS_PREFIX}/{victim.id}")

    text = run_casbak(repo_path, "verify", "--ledger", "--signer", chain.key.fingerprint)
    report = run_casbak(repo_path, "--json", "verify", "--ledger")
    first = json.loads(report.stdout)["first_broken_link"]

    assert text.returncode == 5
    assert f"first broken link: snapshot {chain.manifests[3].id[:12]}".encode() in text.stderr
    assert first["snapshot"] == chain.manifests[3].id
    assert first["previous"] == victim.id


def test_cli_signer_needs_ledger(chain, repo_path):
    result = run_casbak(repo_path, "verify", "--signer", chain.key.fingerprint)

    assert result.returncode == 2
    assert b"--signer given without --ledger" in result.stderr


def read_ledger(repo_path: Path) -> list[dict]:
    exported = run_casbak(repo_path, "audit", "ledger")
    assert exported.returncode == 0, exported.stderr
    return [json.loads(line) for line in exported.stdout.splitlines()]


def test_ledger_export_verifies_independently(chain, repo_path):
    lines = read_ledger(repo_path)
    pinned = chain.key.fingerprint

    assert [line["id"] for line in lines] == [m.id for m in chain.manifests]
    assert lines[0]["signature"] is None
    for earlier, line in zip(lines, lines[1:]):
        assert line["previous"] == earlier["id"]
        public_raw = bytes.fromhex(line["public_key"])
        assert hashlib.sha256(public_raw).hexdigest() == pinned
        signed = base64.b64decode(line["signed_bytes"])
        # Raises InvalidSignature when the signature does not cover exactly these bytes.
        Ed25519PublicKey.from_public_bytes(public_raw).verify(bytes.fromhex(line["signature"]), signed)
        body = msgpack.unpackb(signed)
        assert body["previous"] == earlier["id"]
        assert body["tree"].hex() == line["tree"]
        assert body["time_ns"] == line["time_ns"]
        assert body["signer"] == pinned


def test_ledger_signature_fails_on_edit(chain, repo_path):
    line = read_ledger(repo_path)[-1]
    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(line["public_key"]))
    signed = bytearray(base64.b64decode(line["signed_bytes"]))
    signed[-1] ^= 0x01

    with pytest.raises(InvalidSignature):
        public_key.verify(bytes.fromhex(line["signature"]), bytes(signed))


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_ledger_signature_verifies_with_openssl(chain, repo_path, tmp_path):
    line = read_ledger(repo_path)[-1]
    public_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(line["public_key"]))
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "signer.pem").write_bytes(pem)
    (tmp_path / "signed.bin").write_bytes(base64.b64decode(line["signed_bytes"]))
    (tmp_path / "signature.bin").write_bytes(bytes.fromhex(line["signature"]))
    command = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "signer.pem", "-rawin",
               "-in", "signed.bin", "-sigfile", "signature.bin"]

    good = subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=60)
    (tmp_path / "signed.bin").write_bytes(base64.b64decode(line["signed_bytes"]) + b"\x00")
    bad = subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=60)

    assert good.returncode == 0, good.stdout + good.stderr
    assert b"Signature Verified Successfully" in good.stdout
    assert bad.returncode != 0


def test_retag_resigns_manifest(chain):
    # A re-tagged manifest used to keep the old signature, which covers the old tags.
    newest = chain.manifests[-1]
    with RepositoryLock(chain.repository, EXCLUSIVE, "tag") as lock:
        outcome = retag(chain.repository, newest, ["audited"], lock, chain.key)

    retagged = [m for m in load_manifests(chain.repository) if m.id == outcome.new_id][0]
    result = verify_ledger(chain.repository, (chain.key.fingerprint,))
    assert retagged.tags == ["audited"]
    assert retagged.signer == chain.key.fingerprint
    assert result.ok, [f.message for f in result.errors]
    assert result.first_broken_link is None


def test_retag_without_key_drops_signature(chain):
    newest = chain.manifests[-1]
    with RepositoryLock(chain.repository, EXCLUSIVE, "tag") as lock:
        outcome = retag(chain.repository, newest, ["audited"], lock)

    result = verify_ledger(chain.repository)
    assert result.first_broken_link.kind == MANIFEST_UNSIGNED
    assert result.first_broken_link.snapshot == outcome.new_id
