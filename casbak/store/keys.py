"""Key files: the master keys wrapped by password-derived keys, one file per password.

A key file `keys/<random id>` is an unsealed msgpack map with the scrypt parameters,
salt, and the AES-256-GCM-wrapped master keys, plus informational host, user and
creation time. Any one key file opens the repository.
"""

from __future__ import annotations

import datetime as dt
import getpass
import secrets
import socket
from dataclasses import dataclass

import msgpack

from casbak.crypto import KdfParams, MasterKeys, unwrap_master_keys, wrap_master_keys
from casbak.errors import CorruptObject, UsageError, WrongPassword
from casbak.store.backend import Backend

KEY_VERSION = 1


@dataclass(frozen=True)
class KeyInfo:
    """Public facts about one key file."""

    key_id: str
    created: str
    host: str
    user: str


def key_path(key_id: str) -> str:
    return f"keys/{key_id}"


def write_key(backend: Backend, keys: MasterKeys, password: bytes, kdf: KdfParams) -> str:
    """Store a new key file wrapping `keys` with `password`; return its id."""
    if not password:
        raise UsageError("password is empty: an encrypted repository needs a non-empty password")
    key_id = secrets.token_hex(16)
    fields = {
        "version": KEY_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "host": socket.gethostname(),
        "user": getpass.getuser(),
        **wrap_master_keys(keys, password, kdf),
    }
    backend.write(key_path(key_id), msgpack.packb(fields))
    return key_id


def read_key_fields(backend: Backend, key_id: str) -> dict:
    data = backend.read(key_path(key_id))
    try:
        fields = msgpack.unpackb(data)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CorruptObject(f"key {key_id}: cannot be parsed ({exc})") from exc
    if not isinstance(fields, dict) or fields.get("version") != KEY_VERSION:
        raise CorruptObject(f"key {key_id}: not a version {KEY_VERSION} key file")
    return fields


def list_key_ids(backend: Backend) -> list[str]:
    return [name.split("/", 1)[1] for name in backend.list("keys")]


def list_keys(backend: Backend) -> list[KeyInfo]:
    infos = []
    for key_id in list_key_ids(backend):
        fields = read_key_fields(backend, key_id)
        infos.append(KeyInfo(key_id, str(fields.get("created")), str(fields.get("host")), str(fields.get("user"))))
    return infos


def unlock(backend: Backend, password: bytes) -> tuple[str, MasterKeys]:
    """Try the password on every key file; return (key id, master keys) of the first that opens."""
    key_ids = list_key_ids(backend)
    for key_id in key_ids:
        fields = read_key_fields(backend, key_id)
        try:
            return key_id, unwrap_master_keys(fields, password)
        except WrongPassword:
            continue
    raise WrongPassword(
        f"wrong password: none of the {len(key_ids)} key files of this repository opens with it; "
        "check CASBAK_PASSWORD, --password-file or --password-command"
    )


def remove_key(backend: Backend, key_id: str, current_key_id: str) -> None:
    """Delete a key file; the key used to open the repository and the last key are kept."""
    key_ids = list_key_ids(backend)
    if key_id not in key_ids:
        raise UsageError(f"key {key_id}: not found; `casbak key list` shows the key ids")
    if key_id == current_key_id:
        raise UsageError(f"key {key_id}: is the key in use; open the repository with another password to remove it")
    if len(key_ids) == 1:
        raise UsageError(f"key {key_id}: is the last key; removing it would make the repository unreadable")
    backend.delete(key_path(key_id))
