"""Encryption at rest: no plaintext in storage, keyed digests, AAD roles, config swaps."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbak.chunking import ChunkerParams
from casbak.crypto import Cipher, KdfParams, MasterKeys, read_wrapping_fields, unwrap_master_keys, wrap_master_keys
from casbak.errors import CorruptObject, KeyFilesMissing, UsageError, WrongPassword
from casbak.operations.snapshot import create_snapshot
from casbak.store.keys import key_path, list_key_ids
from casbak.store.objects import (
    CIPHER_AES256GCM,
    CIPHER_NONE,
    OBJECT_VERSION,
    ROLE_CONFIG,
    ROLE_INDEX,
    ROLE_OBJECT,
    ROLE_PACK_HEADER,
    Sealer,
)
from casbak.store.packs import TRAILER
from casbak.store.repository import Repository
from tests.conftest import FAST_KDF, PASSWORD, make_tree, small_config

# 40 bytes that cannot occur in ciphertext by chance.
MARKER = b"casbak-plaintext-marker-9f2c41d07be3a85e"
ROLES = [ROLE_OBJECT, ROLE_CONFIG, ROLE_INDEX, ROLE_PACK_HEADER]


def stored_files(root: Path) -> dict[str, bytes]:
    files = {}
    for directory, _subdirs, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, root)] = handle.read()
    return files


def marker_source(tmp_path: Path) -> Path:
    """A tree with MARKER in a file's content (amid random bytes) and in a file name."""
    source = tmp_path / "source"
    content = os.urandom(3000) + MARKER * 3 + os.urandom(3000)
    make_tree(source, {"notes.txt": content, MARKER.decode() + ".jsonl": b"{}\n", "sub": {"x": os.urandom(100)}})
    return source


def snapshot_into(path: Path, password, config, source: Path) -> Repository:
    Repository.init(str(path), password, config=config, kdf=FAST_KDF)
    repository = Repository.open(str(path), password)
    create_snapshot(repository, [str(source)])
    return repository


def test_encrypted_store_has_no_plaintext(tmp_path):
    source = marker_source(tmp_path)
    repo_path = tmp_path / "repo"
    snapshot_into(repo_path, PASSWORD, small_config(), source)

    files = stored_files(repo_path)

    assert any(name.startswith("data/") for name in files)
    for name, data in files.items():
        assert MARKER not in data, name
        assert MARKER.decode() not in name


def test_unencrypted_store_marker_is_visible(tmp_path):
    # The same check on an unencrypted repository must find the marker, or the
    # encrypted test above could pass without proving anything.
    source = marker_source(tmp_path)
    repo_path = tmp_path / "repo"
    snapshot_into(repo_path, None, small_config(encrypted=False), source)

    files = stored_files(repo_path)

    assert any(MARKER in data for data in files.values())


def test_different_keys_share_no_digests(tmp_path):
    source = marker_source(tmp_path)
    chunker = ChunkerParams(1024, 4096, 16384, seed=ChunkerParams.random_seed())
    first = snapshot_into(tmp_path / "one", PASSWORD, small_config(chunker=chunker), source)
    second = snapshot_into(tmp_path / "two", PASSWORD, small_config(chunker=chunker), source)

    first_digests = set(first.load_index().digests())
    second_digests = set(second.load_index().digests())
    first_packs = {pack_id for pack_id, _kind, _size in first.load_index().packs()}
    second_packs = {pack_id for pack_id, _kind, _size in second.load_index().packs()}

    assert first_digests
    assert not first_digests & second_digests
    assert first_packs
    assert not first_packs & second_packs
    assert not set(first.list_snapshot_ids()) & set(second.list_snapshot_ids())


def test_unencrypted_headers_are_plain(tmp_path):
    source = marker_source(tmp_path)
    repo_path = tmp_path / "repo"
    snapshot_into(repo_path, None, small_config(encrypted=False), source)

    files = stored_files(repo_path)
    reopened = Repository.open(str(repo_path))

    assert not reopened.encrypted
    assert "keys" not in {name.split("/")[0] for name in files}
    for name, data in files.items():
        if name.startswith(("data/", "tree/")):
            continue
        assert data[0] == OBJECT_VERSION, name
        assert data[2] == CIPHER_NONE, name
    for pack_id, kind, _size in reopened.index.packs():
        data = files[f"{kind}/{pack_id[:2]}/{pack_id}"]
        assert data[2] == CIPHER_NONE
        (header_length,) = TRAILER.unpack(data[-TRAILER.size :])
        assert data[-TRAILER.size - header_length + 2] == CIPHER_NONE


def test_encrypted_headers_name_cipher(repository, repo_path, tmp_path):
    create_snapshot(repository, [str(marker_source(tmp_path))])

    for name, data in stored_files(repo_path).items():
        if name.startswith(("config", "index/", "snapshots/")):
            assert data[2] == CIPHER_AES256GCM, name


def test_unencrypted_config_swap_refused(repository, repo_path, tmp_path):
    plain_path = tmp_path / "plain"
    Repository.init(str(plain_path), None, config=small_config(encrypted=False))
    shutil.copyfile(plain_path / "config", repo_path / "config")

    with pytest.raises(CorruptObject, match="unencrypted"):
        Repository.open(str(repo_path), PASSWORD)


def test_downgrade_without_keys_refused(repository, repo_path, tmp_path):
    create_snapshot(repository, [str(marker_source(tmp_path))])
    plain_path = tmp_path / "plain"
    Repository.init(str(plain_path), None, config=small_config(encrypted=False))
    shutil.copyfile(plain_path / "config", repo_path / "config")
    for key_id in list_key_ids(repository.backend):
        repository.backend.delete(key_path(key_id))

    with pytest.raises(KeyFilesMissing, match="is encrypted"):
        Repository.open(str(repo_path))


def test_chunk_installed_as_index_rejected(repository, repo_path, tmp_path):
    create_snapshot(repository, [str(marker_source(tmp_path))])
    pack_id, kind, _size = repository.index.packs()[0]
    location = next(
        repository.index.lookup(digest)
        for digest in repository.index.digests()
        if repository.index.lookup(digest).pack_id == pack_id
    )
    pack = (repo_path / kind / pack_id[:2] / pack_id).read_bytes()
    sealed_chunk = pack[location.offset : location.offset + location.length]
    repository.backend.write(f"index/{blake3.blake3(sealed_chunk).hexdigest()}", sealed_chunk)

    with pytest.raises(CorruptObject, match="authentication"):
        repository.load_index(strict=True)


def test_index_installed_as_config_rejected(repository, repo_path, tmp_path):
    create_snapshot(repository, [str(marker_source(tmp_path))])
    index_name = repository.backend.list("index")[0]
    shutil.copyfile(repo_path / index_name, repo_path / "config")

    with pytest.raises(CorruptObject, match="config: authentication"):
        Repository.open(str(repo_path), PASSWORD)


@settings(max_examples=40, deadline=None)
@given(payload=st.binary(max_size=4000), role=st.sampled_from(ROLES), level=st.integers(1, 5))
def test_seal_open_round_trip(payload, role, level):
    sealer = Sealer(Cipher(os.urandom(32)), level)

    sealed = sealer.seal(payload, role=role)

    assert sealer.open(sealed, expected_size=len(payload), role=role) == payload
    assert payload not in sealed or len(payload) < 8


@pytest.mark.parametrize("encrypted", [True, False])
@pytest.mark.parametrize("payload", [b"", b"short raw payload", b"compressible row\n" * 400, os.urandom(5000)])
def test_open_memoryview_slice(encrypted, payload):
    # Restores open objects as slices of one pack read, without copying each slice first.
    sealer = Sealer(Cipher(os.urandom(32)) if encrypted else None)
    sealed = sealer.seal(payload)
    view = memoryview(b"before" + sealed + b"after")[6 : 6 + len(sealed)]

    plaintext = sealer.open(view, expected_size=len(payload))

    assert type(plaintext) is bytes
    assert plaintext == payload


def test_open_from_many_threads():
    # Each thread decompresses with its own reused zstd context.
    sealer = Sealer(Cipher(os.urandom(32)))
    payloads = [f"row {number}\n".encode() * (100 + number) for number in range(64)]
    sealed = [sealer.seal(payload) for payload in payloads]

    with ThreadPoolExecutor(max_workers=4) as pool:
        opened = list(pool.map(lambda blob: sealer.open(blob), sealed * 4))

    assert opened == payloads * 4


@pytest.mark.parametrize("opened_as", ROLES)
def test_open_in_other_role_fails(opened_as):
    sealer = Sealer(Cipher(os.urandom(32)))
    for sealed_as in ROLES:
        sealed = sealer.seal(b"role-bound payload " * 10, role=sealed_as)
        if sealed_as == opened_as:
            assert sealer.open(sealed, role=opened_as)
        else:
            with pytest.raises(CorruptObject, match="authentication"):
                sealer.open(sealed, role=opened_as)


@pytest.mark.parametrize("position", [1, 2, 3, 10, -1])
def test_flipped_byte_fails(position):
    sealer = Sealer(Cipher(os.urandom(32)))
    sealed = bytearray(sealer.seal(b"x" * 500))
    sealed[position] ^= 0x01

    with pytest.raises(CorruptObject):
        sealer.open(bytes(sealed))


def test_unencrypted_object_rejected_by_encrypted_sealer():
    plain = Sealer(None).seal(b"planted by someone without the key")

    with pytest.raises(CorruptObject, match="cipher 0"):
        Sealer(Cipher(os.urandom(32))).open(plain)


def test_wrap_round_trip_and_wrong_password():
    keys = MasterKeys.generate()
    fields = wrap_master_keys(keys, PASSWORD, FAST_KDF)

    assert unwrap_master_keys(fields, PASSWORD) == keys
    with pytest.raises(WrongPassword):
        unwrap_master_keys(fields, b"wrong")


@pytest.mark.parametrize(
    "params, message",
    [
        (KdfParams(n=1000), "power of two"),
        (KdfParams(n=2**9), "at least"),
        (KdfParams(n=2**24), "memory"),
        (KdfParams(r=0), "scrypt r"),
        (KdfParams(p=17), "scrypt p"),
    ],
)
def test_kdf_bounds_on_write(params, message):
    with pytest.raises(UsageError, match=message):
        wrap_master_keys(MasterKeys.generate(), PASSWORD, params)


def test_kdf_bounds_checked_before_derive():
    fields = wrap_master_keys(MasterKeys.generate(), PASSWORD, FAST_KDF)
    fields["n"] = 2**60

    with pytest.raises(CorruptObject, match="memory"):
        read_wrapping_fields(fields)


def test_default_kdf_is_accepted():
    assert KdfParams().problem() is None
    assert FAST_KDF.problem() is None
