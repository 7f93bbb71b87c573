"""Key files: unlocking, adding, removing, changing passwords and damaged key files."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbak.crypto import KdfParams, unwrap_master_keys
from casbak.errors import CorruptObject, KeyFilesMissing, UsageError, WrongPassword
from casbak.store.keys import (
    add_key,
    change_password,
    key_path,
    list_key_ids,
    list_keys,
    read_key_fields,
    remove_key,
    resolve_key_id,
    unlock,
)
from casbak.store.repository import Repository
from tests.conftest import FAST_KDF, PASSWORD

OTHER_PASSWORD = b"a second, different passphrase"


def store_state(root: Path) -> dict[str, tuple[int, int]]:
    """Return (size, mtime_ns) of every file and directory under `root`."""
    state = {}
    for directory, subdirs, files in os.walk(root):
        for name in subdirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            state[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return state


def rewrite_key(repository: Repository, key_id: str, **changes) -> None:
    fields = read_key_fields(repository.backend, key_id)
    fields.update(changes)
    repository.backend.write(key_path(key_id), msgpack.packb(fields))


def test_unlock_returns_key_in_use(repository, repo_path):
    key_id, keys = unlock(repository.backend, PASSWORD)

    assert key_id == repository.key_id
    assert keys == repository.master_keys


def test_wrong_password_writes_nothing(repository, repo_path):
    before = store_state(repo_path)

    with pytest.raises(WrongPassword, match="wrong password"):
        Repository.open(str(repo_path), b"not the password")

    assert store_state(repo_path) == before


def test_all_key_files_deleted(repository, repo_path):
    for key_id in list_key_ids(repository.backend):
        repository.backend.delete(key_path(key_id))

    with pytest.raises(KeyFilesMissing, match="no key files"):
        Repository.open(str(repo_path), PASSWORD)


def test_added_key_opens_same_repository(repository, repo_path):
    new_id = add_key(repository.backend, repository.master_keys, OTHER_PASSWORD, FAST_KDF)

    reopened = Repository.open(str(repo_path), OTHER_PASSWORD)

    assert reopened.key_id == new_id
    assert reopened.master_keys == repository.master_keys
    assert reopened.config.repository_id == repository.config.repository_id
    assert Repository.open(str(repo_path), PASSWORD).key_id == repository.key_id


def test_removed_key_no_longer_opens(repository, repo_path):
    new_id = add_key(repository.backend, repository.master_keys, OTHER_PASSWORD, FAST_KDF)

    remove_key(repository.backend, repository.key_id, current_key_id=new_id)

    assert list_key_ids(repository.backend) == [new_id]
    assert Repository.open(str(repo_path), OTHER_PASSWORD).key_id == new_id
    with pytest.raises(WrongPassword):
        Repository.open(str(repo_path), PASSWORD)


def test_remove_rejects_key_in_use(repository):
    add_key(repository.backend, repository.master_keys, OTHER_PASSWORD, FAST_KDF)

    with pytest.raises(UsageError, match="in use"):
        remove_key(repository.backend, repository.key_id, current_key_id=repository.key_id)

    assert repository.key_id in list_key_ids(repository.backend)


def test_remove_rejects_last_key(repository):
    with pytest.raises(UsageError, match="last key"):
        remove_key(repository.backend, repository.key_id, current_key_id="some-other-session-key")

    assert list_key_ids(repository.backend) == [repository.key_id]


def test_remove_unknown_key(repository):
    with pytest.raises(UsageError, match="not found"):
        remove_key(repository.backend, "0" * 32, current_key_id=repository.key_id)


def test_change_password_replaces_key(repository, repo_path):
    new_id = change_password(repository.backend, repository.master_keys, repository.key_id, OTHER_PASSWORD, FAST_KDF)

    assert list_key_ids(repository.backend) == [new_id]
    assert Repository.open(str(repo_path), OTHER_PASSWORD).key_id == new_id
    with pytest.raises(WrongPassword):
        Repository.open(str(repo_path), PASSWORD)


def test_crash_inside_change_password_keeps_both(repository, repo_path):
    # change_password adds the new key before it removes the old one; a crash after the
    # first step is the state add_key alone leaves behind.
    add_key(repository.backend, repository.master_keys, OTHER_PASSWORD, FAST_KDF)

    assert len(list_key_ids(repository.backend)) == 2
    assert Repository.open(str(repo_path), PASSWORD).master_keys == repository.master_keys
    assert Repository.open(str(repo_path), OTHER_PASSWORD).master_keys == repository.master_keys


def test_list_keys_reports_metadata(repository):
    infos = list_keys(repository.backend)

    assert [info.key_id for info in infos] == [repository.key_id]
    assert infos[0].created.startswith("20")
    assert infos[0].host
    assert infos[0].user


def test_resolve_key_id_by_prefix(repository):
    assert resolve_key_id(repository.backend, repository.key_id) == repository.key_id
    assert resolve_key_id(repository.backend, repository.key_id[:6]) == repository.key_id
    with pytest.raises(UsageError, match="not found"):
        resolve_key_id(repository.backend, "zz")


@pytest.mark.parametrize("field", ["salt", "data"])
def test_flipped_bit_fails_cleanly(repository, repo_path, field):
    value = bytearray(read_key_fields(repository.backend, repository.key_id)[field])
    value[len(value) // 2] ^= 0x01
    rewrite_key(repository, repository.key_id, **{field: bytes(value)})

    with pytest.raises(WrongPassword, match="altered"):
        Repository.open(str(repo_path), PASSWORD)


def test_changed_kdf_cost_fails_cleanly(repository, repo_path):
    fields = read_key_fields(repository.backend, repository.key_id)
    rewrite_key(repository, repository.key_id, n=fields["n"] * 2)

    with pytest.raises(WrongPassword):
        Repository.open(str(repo_path), PASSWORD)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"n": 2**40}, "memory"),
        ({"n": 3000}, "power of two"),
        ({"n": 2}, "power of two"),
        ({"r": 0}, "scrypt r"),
        ({"r": 10**6}, "scrypt r"),
        ({"p": 1000}, "scrypt p"),
        ({"n": "32768"}, "integer"),
        ({"kdf": "argon2id"}, "unsupported kdf"),
        ({"salt": b"short"}, "salt"),
        ({"data": b"x" * 5000}, "wrapped key data"),
    ],
)
def test_absurd_kdf_fields_rejected(repository, repo_path, changes, message):
    rewrite_key(repository, repository.key_id, **changes)

    with pytest.raises(CorruptObject, match=message):
        Repository.open(str(repo_path), PASSWORD)


def test_unparsable_key_file_rejected(repository, repo_path):
    repository.backend.write(key_path(repository.key_id), b"\xc1 not msgpack")

    with pytest.raises(CorruptObject, match="key files is usable"):
        Repository.open(str(repo_path), PASSWORD)


def test_key_file_missing_field_rejected(repository):
    fields = read_key_fields(repository.backend, repository.key_id)
    del fields["salt"]
    repository.backend.write(key_path(repository.key_id), msgpack.packb(fields))

    with pytest.raises(CorruptObject, match="salt"):
        read_key_fields(repository.backend, repository.key_id)


def test_damaged_key_does_not_block_others(repository, repo_path):
    new_id = add_key(repository.backend, repository.master_keys, OTHER_PASSWORD, FAST_KDF)
    rewrite_key(repository, repository.key_id, n=2**40)

    assert Repository.open(str(repo_path), OTHER_PASSWORD).key_id == new_id
    with pytest.raises(WrongPassword, match="1 damaged key files were skipped"):
        Repository.open(str(repo_path), PASSWORD)


def test_new_key_rejects_weak_kdf(repository):
    with pytest.raises(UsageError, match="power of two"):
        add_key(repository.backend, repository.master_keys, OTHER_PASSWORD, KdfParams(n=1000))

    assert list_key_ids(repository.backend) == [repository.key_id]


def test_new_key_rejects_empty_password(repository):
    with pytest.raises(UsageError, match="empty"):
        add_key(repository.backend, repository.master_keys, b"", FAST_KDF)


FIELD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([1024, 2048, 8, 1]),
    st.binary(max_size=80), st.text(max_size=10),
)


@settings(max_examples=150, deadline=None)
@given(
    kdf=st.sampled_from(["scrypt", "argon2id", None]),
    n=FIELD_VALUES, r=FIELD_VALUES, p=FIELD_VALUES, salt=FIELD_VALUES, data=FIELD_VALUES,
)
def test_arbitrary_key_fields_fail_cleanly(kdf, n, r, p, salt, data):
    fields = {"kdf": kdf, "n": n, "r": r, "p": p, "salt": salt, "data": data}

    with pytest.raises((CorruptObject, WrongPassword)):
        unwrap_master_keys(fields, PASSWORD)
