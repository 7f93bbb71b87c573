"""Encryption and hashing primitives of a repository.

An encrypted repository has one random master key set (`MasterKeys`): an AES-256-GCM
key for every stored object, index, manifest and the config, and a BLAKE3 key for object
digests. Key files wrap that set with a key derived from a
password by scrypt, so several passwords can open the same repository.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Optional

import blake3
import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from casbak.errors import CorruptObject, WrongPassword

DIGEST_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32


@dataclass(frozen=True)
class KdfParams:
    """scrypt parameters stored in each key file.

    The defaults (N=2**15, r=8, p=1) cost 32 MiB of memory and about 0.1 s per attempt,
    the interactive-login setting recommended in RFC 7914's successors; raise N for
    repositories whose password could be guessed offline.
    """

    n: int = 2**15
    r: int = 8
    p: int = 1

    def derive(self, password: bytes, salt: bytes) -> bytes:
        kdf = Scrypt(salt=salt, length=KEY_SIZE, n=self.n, r=self.r, p=self.p)
        return kdf.derive(password)


@dataclass(frozen=True)
class MasterKeys:
    """The secrets shared by every key file of one repository."""

    encryption_key: bytes
    hash_key: bytes

    @classmethod
    def generate(cls) -> "MasterKeys":
        return cls(encryption_key=secrets.token_bytes(KEY_SIZE), hash_key=secrets.token_bytes(KEY_SIZE))

    def pack(self) -> bytes:
        return msgpack.packb({"encryption_key": self.encryption_key, "hash_key": self.hash_key})

    @classmethod
    def unpack(cls, data: bytes) -> "MasterKeys":
        try:
            values = msgpack.unpackb(data)
            keys = cls(
                encryption_key=bytes(values["encryption_key"]),
                hash_key=bytes(values["hash_key"]),
            )
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise CorruptObject(f"master key set: cannot parse ({exc})") from exc
        if len(keys.encryption_key) != KEY_SIZE or len(keys.hash_key) != KEY_SIZE:
            raise CorruptObject("master key set: key length is not 32 bytes")
        return keys


def wrap_master_keys(keys: MasterKeys, password: bytes, kdf: KdfParams) -> dict:
    """Encrypt `keys` under a password-derived key; return the key-file fields."""
    salt = secrets.token_bytes(32)
    wrapping_key = kdf.derive(password, salt)
    nonce = secrets.token_bytes(NONCE_SIZE)
    sealed = AESGCM(wrapping_key).encrypt(nonce, keys.pack(), b"casbak-key-v1")
    return {
        "kdf": "scrypt",
        "n": kdf.n,
        "r": kdf.r,
        "p": kdf.p,
        "salt": salt,
        "data": nonce + sealed,
    }


def unwrap_master_keys(fields: dict, password: bytes) -> MasterKeys:
    """Decrypt the master keys of one key file; raise WrongPassword on a failed tag."""
    if fields.get("kdf") != "scrypt":
        raise CorruptObject(f"key file: unsupported kdf {fields.get('kdf')!r}")
    kdf = KdfParams(n=int(fields["n"]), r=int(fields["r"]), p=int(fields["p"]))
    wrapping_key = kdf.derive(password, bytes(fields["salt"]))
    blob = bytes(fields["data"])
    try:
        plain = AESGCM(wrapping_key).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], b"casbak-key-v1")
    except InvalidTag as exc:
        raise WrongPassword("wrong password for this key file") from exc
    return MasterKeys.unpack(plain)


class Hasher:
    """Object digests: BLAKE3-256, keyed with the repository's hash key when encrypted."""

    def __init__(self, key: Optional[bytes]) -> None:
        self._key = key

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def digest(self, data: bytes) -> bytes:
        if self._key is None:
            return blake3.blake3(data).digest()
        return blake3.blake3(data, key=self._key).digest()

    def stream(self) -> "blake3.blake3":
        """Return an incremental hasher with the same key, for whole-file hashes."""
        if self._key is None:
            return blake3.blake3()
        return blake3.blake3(key=self._key)


class Cipher:
    """AES-256-GCM with a random 96-bit nonce per message.

    Random nonces stay safe for about 2**32 messages per key (NIST SP 800-38D, 8.3);
    a repository would reach that only after billions of objects.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def decrypt(self, blob: bytes, associated: bytes) -> bytes:
        if len(blob) < NONCE_SIZE + TAG_SIZE:
            raise CorruptObject(f"ciphertext of {len(blob)} bytes is shorter than nonce and tag")
        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], associated)
        except InvalidTag as exc:
            raise CorruptObject("authentication tag mismatch (data altered or wrong key)") from exc
