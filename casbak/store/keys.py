"""Key files: the master keys wrapped by password-derived keys, one file per password.

A key file `keys/<random id>` is an unsealed msgpack map with the scrypt parameters,
salt, and the AES-256-GCM-wrapped master keys, plus informational host, user and
creation time. Any one key file opens the repository. The informational fields are not
authenticated: `key list` shows what the file contains, which anyone with write access to
the store could change.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import secrets
import socket
from dataclasses import dataclass

import msgpack

from casbak.crypto import KdfParams, MasterKeys, unwrap_master_keys, wrap_master_keys
from casbak.errors import CorruptObject, IntegrityError, KeyFilesMissing, UsageError, WrongPassword
from casbak.store.backend import Backend
from casbak.store.config import config_is_encrypted
from casbak.store.objects import CIPHER_NONE, HEADER_SIZE

log = logging.getLogger(__name__)

KEY_VERSION = 1
KEYS_PREFIX = "keys"
# Key files are about 260 bytes; anything far larger is not a key file.
MAX_KEY_FILE_SIZE = 64 * 1024
KEY_FIELDS = ("version", "created", "host", "user", "kdf", "n", "r", "p", "salt", "data")


@dataclass(frozen=True)
class KeyInfo:
    """Public facts about one key file."""

    key_id: str
    created: str
    host: str
    user: str


def key_path(key_id: str) -> str:
    return f"{KEYS_PREFIX}/{key_id}"


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
    """Return the fields of one key file; raise CorruptObject when it is not one."""
    data = backend.read(key_path(key_id))
    if len(data) > MAX_KEY_FILE_SIZE:
        raise CorruptObject(f"key {key_id}: file of {len(data)} bytes is too large for a key file")
    try:
        fields = msgpack.unpackb(data)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CorruptObject(f"key {key_id}: cannot be parsed ({exc})") from exc
    if not isinstance(fields, dict) or fields.get("version") != KEY_VERSION:
        raise CorruptObject(f"key {key_id}: not a version {KEY_VERSION} key file")
    missing = [name for name in KEY_FIELDS if name not in fields]
    if missing:
        raise CorruptObject(f"key {key_id}: fields {missing} are missing")
    return fields


def list_key_ids(backend: Backend) -> list[str]:
    return [name.split("/", 1)[1] for name in backend.list(KEYS_PREFIX)]


def list_keys(backend: Backend) -> list[KeyInfo]:
    """Return the informational fields of every key file, damaged ones marked as such."""
    infos = []
    for key_id in list_key_ids(backend):
        try:
            fields = read_key_fields(backend, key_id)
        except IntegrityError as exc:
            log.error("key %s: %s", key_id, exc)
            infos.append(KeyInfo(key_id, "(damaged)", "", ""))
            continue
        infos.append(KeyInfo(key_id, str(fields.get("created")), str(fields.get("host")), str(fields.get("user"))))
    return infos


def unlock(backend: Backend, password: bytes) -> tuple[str, MasterKeys]:
    """Try the password on every key file; return (key id, master keys) of the first that opens.

    A damaged key file is logged and skipped, so one bad file cannot lock out the
    passwords of the others.
    """
    key_ids = list_key_ids(backend)
    if not key_ids:
        raise KeyFilesMissing(f"repository {backend.url}: has no key files under {KEYS_PREFIX}/")
    damaged: list[str] = []
    for key_id in key_ids:
        try:
            return key_id, unwrap_master_keys(read_key_fields(backend, key_id), password, what=f"key {key_id}")
        except WrongPassword:
            continue
        except IntegrityError as exc:
            log.error("%s; trying the other key files", exc)
            damaged.append(f"{exc}")
    if len(damaged) == len(key_ids):
        raise CorruptObject(
            f"repository {backend.url}: none of its {len(key_ids)} key files is usable: {'; '.join(damaged)}; "
            f"restore {KEYS_PREFIX}/ from a copy"
        )
    skipped = f" ({len(damaged)} damaged key files were skipped: {'; '.join(damaged)})" if damaged else ""
    raise WrongPassword(
        f"wrong password: {_no_key_opens(len(key_ids) - len(damaged))}"
        f"{skipped}; check CASBAK_PASSWORD, --password-file or --password-command "
        "(a key file altered in storage fails the same way)"
    )


def check_keyless_store(backend: Backend, sealed_config: bytes) -> None:
    """Raise KeyFilesMissing when a repository without key files contains encrypted data.

    This catches both lost key files and a downgrade where someone replaced the
    config of an encrypted repository with an unencrypted one: opening it as
    unencrypted would make the next snapshot store plaintext next to ciphertext.
    """
    hint = f"restore the {KEYS_PREFIX}/ directory from a copy of the repository"
    if config_is_encrypted(sealed_config):
        raise KeyFilesMissing(f"repository {backend.url}: is encrypted but has no key files under {KEYS_PREFIX}/; {hint}")
    for prefix in ("index", "snapshots"):
        names = backend.list(prefix)
        if not names:
            continue
        header = backend.read(names[0], 0, HEADER_SIZE)
        if len(header) == HEADER_SIZE and header[2] != CIPHER_NONE:
            raise KeyFilesMissing(
                f"repository {backend.url}: its config is unencrypted, but {names[0]} is encrypted and "
                f"no key files exist; the config or {KEYS_PREFIX}/ was altered; {hint}"
            )


def resolve_key_id(backend: Backend, selector: str) -> str:
    """Return the key id that `selector` (a whole id or a unique prefix) names."""
    key_ids = list_key_ids(backend)
    if selector in key_ids:
        return selector
    matches = [key_id for key_id in key_ids if selector and key_id.startswith(selector)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"key {selector}: prefix matches {len(matches)} keys; give more characters")
    raise UsageError(f"key {selector}: not found; `casbak key list` shows the key ids")


def add_key(backend: Backend, keys: MasterKeys, password: bytes, kdf: KdfParams) -> str:
    """Store a key file for `password` and check that it opens before returning its id."""
    key_id = write_key(backend, keys, password, kdf)
    reopened = unwrap_master_keys(read_key_fields(backend, key_id), password, what=f"key {key_id}")
    if reopened != keys:
        backend.delete(key_path(key_id))
        raise CorruptObject(f"key {key_id}: read back with different master keys; it was removed again")
    return key_id


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


def change_password(backend: Backend, keys: MasterKeys, current_key_id: str, password: bytes, kdf: KdfParams) -> str:
    """Replace the key in use with a new key file for `password`; return the new id.

    The new file is written and read back before the old one is deleted, so a crash
    in between leaves both passwords valid and never zero keys.
    """
    new_key_id = add_key(backend, keys, password, kdf)
    remove_key(backend, current_key_id, new_key_id)
    return new_key_id


def _no_key_opens(usable: int) -> str:
    if usable == 1:
        return "the key file of this repository does not open with it"
    return f"none of the {usable} key files of this repository opens with it"
