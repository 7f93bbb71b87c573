"""Signing keys, signed manifests and the `key signing-init` command."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from casbak.audit.signing import (
    SIGNERS_PREFIX,
    SigningKey,
    create_key_file,
    default_key_path,
    fingerprint_of,
    load_key_file,
    load_public_key,
    publish_public_key,
    sign_manifest,
    signature_is_valid,
    signing_key_for,
)
from casbak.catalog import load_manifests
from casbak.errors import CorruptObject, PasswordMissing, UsageError
from casbak.manifest import Manifest
from casbak.operations.snapshot import create_snapshot
from tests.audit.cli_runner import run_casbak
from tests.conftest import make_tree

KEY_PASSWORD = b"signing secret"


def new_key() -> SigningKey:
    private_key = Ed25519PrivateKey.generate()
    return SigningKey(private_key, fingerprint_of(private_key.public_key()))


def sample_manifest(**changes) -> Manifest:
    values = dict(time_ns=1_700_000_000_000_000_000, hostname="host", username="user", sources=["/src"],
                  tree=b"\x01" * 32, program_version="0", previous="ab" * 32)
    values.update(changes)
    return Manifest(**values)


def test_key_file_roundtrip(tmp_path):
    path = tmp_path / "keys" / "signing.pem"

    created = create_key_file(path, KEY_PASSWORD)
    loaded = load_key_file(path, KEY_PASSWORD)

    assert loaded.fingerprint == created.fingerprint
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    with pytest.raises(UsageError, match="cannot be decrypted"):
        load_key_file(path, b"wrong password")
    with pytest.raises(UsageError, match="already exists"):
        create_key_file(path, KEY_PASSWORD)


def test_key_file_needs_password(tmp_path):
    with pytest.raises(UsageError, match="empty"):
        create_key_file(tmp_path / "k.pem", b"")


def test_fingerprint_is_sha256_of_raw_key():
    key = new_key()
    raw = key.public_key.public_bytes_raw()

    assert key.fingerprint == hashlib.sha256(raw).hexdigest()


def test_signature_covers_previous_and_tree():
    key = new_key()
    manifest = sample_manifest()
    sign_manifest(manifest, key)

    assert signature_is_valid(manifest, key.public_key)
    for change in ({"previous": "cd" * 32}, {"tree": b"\x02" * 32}, {"signer": "00" * 32}, {"tags": ["x"]}):
        fields = {"signer": manifest.signer, "signature": manifest.signature, **change}
        altered = sample_manifest(**fields)
        assert not signature_is_valid(altered, key.public_key), change
    assert not signature_is_valid(manifest, new_key().public_key)


def test_signed_bytes_leave_out_signature():
    key = new_key()
    manifest = sample_manifest()
    sign_manifest(manifest, key)

    signed = msgpack.unpackb(manifest.signed_bytes())
    stored = msgpack.unpackb(manifest.encode())

    assert "signature" not in signed
    assert signed["signer"] == key.fingerprint
    assert signed["previous"] == "ab" * 32
    assert list(stored)[-2:] == ["signer", "signature"]
    assert {k: v for k, v in stored.items() if k != "signature"} == signed


def test_unsigned_manifest_has_no_signature_keys():
    encoded = msgpack.unpackb(sample_manifest().encode())

    assert "signer" not in encoded
    assert "signature" not in encoded


def test_public_key_roundtrip(repository):
    key = new_key()

    fingerprint = publish_public_key(repository, key.public_key)
    loaded = load_public_key(repository, fingerprint)

    assert fingerprint == key.fingerprint
    assert fingerprint_of(loaded) == fingerprint
    assert repository.backend.list(SIGNERS_PREFIX) == [f"{SIGNERS_PREFIX}/{fingerprint}"]


def test_public_key_under_wrong_name_rejected(repository):
    key = new_key()
    other = "0" * 64
    publish_public_key(repository, key.public_key)
    stored = repository.backend.read(f"{SIGNERS_PREFIX}/{key.fingerprint}")
    repository.backend.write(f"{SIGNERS_PREFIX}/{other}", stored)

    with pytest.raises(CorruptObject, match="does not match the fingerprint"):
        load_public_key(repository, other)


def test_snapshot_id_covers_signature(repository, tmp_path):
    key = new_key()
    publish_public_key(repository, key.public_key)
    make_tree(tmp_path / "src", {"a": b"a"})

    result = create_snapshot(repository, [str(tmp_path / "src")], signing_key=key)
    plaintext = repository.read_manifest(result.manifest.id)

    assert repository.hasher.digest(plaintext).hex() == result.manifest.id
    assert msgpack.unpackb(plaintext)["signature"] == result.manifest.signature
    assert signature_is_valid(load_manifests(repository)[0], key.public_key)


def test_signing_key_for_default_path(repository, monkeypatch):
    assert signing_key_for(repository, None) is None

    path = default_key_path(repository.config.repository_id)
    created = create_key_file(path, KEY_PASSWORD)
    monkeypatch.setenv("CASBAK_SIGNING_KEY_PASSWORD", KEY_PASSWORD.decode())
    with pytest.raises(UsageError, match="is not stored in repository"):
        signing_key_for(repository, None)

    publish_public_key(repository, created.public_key)

    assert signing_key_for(repository, None).fingerprint == created.fingerprint


def test_signing_key_for_named_missing(repository, tmp_path):
    with pytest.raises(UsageError, match="not found"):
        signing_key_for(repository, str(tmp_path / "missing.pem"))


def test_signing_key_for_without_password(repository):
    create_key_file(default_key_path(repository.config.repository_id), KEY_PASSWORD)

    with pytest.raises(PasswordMissing, match="CASBAK_SIGNING_KEY_PASSWORD"):
        signing_key_for(repository, None)


def test_cli_signing_init_then_signed_snapshot(repository, repo_path, tmp_path):
    key_path = tmp_path / "outside" / "signing.pem"
    env = {"CASBAK_SIGNING_KEY_PASSWORD": KEY_PASSWORD.decode(), "CASBAK_SIGNING_KEY": str(key_path)}
    make_tree(tmp_path / "src", {"a": b"a"})

    no_password = run_casbak(repo_path, "key", "signing-init", env={"CASBAK_SIGNING_KEY": str(key_path)})
    created = run_casbak(repo_path, "key", "signing-init", env=env)
    snapshot = run_casbak(repo_path, "snapshot", str(tmp_path / "src"), env=env)
    fingerprint = load_key_file(key_path, KEY_PASSWORD).fingerprint

    assert no_password.returncode == 1
    assert b"CASBAK_SIGNING_KEY_PASSWORD" in no_password.stderr
    assert created.returncode == 0, created.stderr
    assert fingerprint.encode() in created.stdout
    assert not str(key_path).startswith(str(repo_path))
    assert snapshot.returncode == 0, snapshot.stderr
    assert load_manifests(repository)[0].signer == fingerprint
    assert os.listdir(repo_path / SIGNERS_PREFIX) == [fingerprint]


def test_cli_snapshot_fails_without_key_password(repository, repo_path, tmp_path):
    path = Path(default_key_path(repository.config.repository_id))
    key = create_key_file(path, KEY_PASSWORD)
    publish_public_key(repository, key.public_key)
    make_tree(tmp_path / "src", {"a": b"a"})
    env = {"XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}

    result = run_casbak(repo_path, "snapshot", str(tmp_path / "src"), env=env)

    assert result.returncode == 1
    assert b"CASBAK_SIGNING_KEY_PASSWORD" in result.stderr
    assert load_manifests(repository) == []
