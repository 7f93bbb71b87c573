"""Encryption and hashing primitives of a repository.

An encrypted repository has one random master key set (`MasterKeys`): an AES-256-GCM
key for every stored object, index, manifest and the config, and a BLAKE3 key for object
digests. Key files wrap that set with a key derived from a password by scrypt, so
several passwords can open the same repository.

NOTE: Python cannot reliably erase secrets: `bytes` are immutable and may be copied by
the interpreter, so passwords and keys stay in process memory until it is reused.
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

from casbak.errors import CorruptObject, UsageError, WrongPassword

DIGEST_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32
SALT_SIZE = 32

KDF_SCRYPT = "scrypt"
# Associated data of the wrapped master keys. It names the wrapping format, so a
# future key-file format with a new label cannot be mistaken for this one.
KEY_WRAP_AAD = b"casbak-key-v1"

# Bounds on scrypt parameters. A key file is not authenticated before the key is
# derived, so a tampered file could otherwise ask for terabytes of memory.
KDF_MIN_N = 2**10
KDF_MAX_MEMORY = 1 << 30  # bytes; scrypt needs about 128 * n * r
KDF_MAX_R = 32
KDF_MAX_P = 16
SALT_SIZE_RANGE = (16, 64)
# A wrapped master-key blob is a nonce, the 93-byte ciphertext of the key map, and a tag.
WRAPPED_SIZE_RANGE = (NONCE_SIZE + TAG_SIZE + 1, 1024)


@dataclass(frozen=True)
class KdfParams:
    """scrypt parameters stored in each key file.

    The defaults (N=2**15, r=8, p=1) need 32 MiB of memory per attempt (128 * N * r
    bytes) and took 0.12 s on a 2-core x86-64 test machine with cryptography 48.
    Raise N for repositories whose password could be guessed offline.
    """

    n: int = 2**15
    r: int = 8
    p: int = 1

    def problem(self) -> Optional[str]:
        """Return why these parameters are outside the accepted bounds, or None."""
        for name, value in (("n", self.n), ("r", self.r), ("p", self.p)):
            if isinstance(value, bool) or not isinstance(value, int):
                return f"scrypt {name} must be an integer, got {value!r}"
        if self.n < KDF_MIN_N or self.n & (self.n - 1):
            return f"scrypt n {self.n} must be a power of two of at least {KDF_MIN_N}"
        if not 1 <= self.r <= KDF_MAX_R:
            return f"scrypt r {self.r} must be between 1 and {KDF_MAX_R}"
        if not 1 <= self.p <= KDF_MAX_P:
            return f"scrypt p {self.p} must be between 1 and {KDF_MAX_P}"
        if 128 * self.n * self.r > KDF_MAX_MEMORY:
            return f"scrypt n {self.n} with r {self.r} needs more than {KDF_MAX_MEMORY >> 20} MiB of memory"
        return None

    def validate(self) -> None:
        """Raise UsageError when these parameters may not be used for a new key."""
        problem = self.problem()
        if problem is not None:
            raise UsageError(f"key derivation: {problem}")

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
    kdf.validate()
    salt = secrets.token_bytes(SALT_SIZE)
    wrapping_key = kdf.derive(password, salt)
    nonce = secrets.token_bytes(NONCE_SIZE)
    sealed = AESGCM(wrapping_key).encrypt(nonce, keys.pack(), KEY_WRAP_AAD)
    return {
        "kdf": KDF_SCRYPT,
        "n": kdf.n,
        "r": kdf.r,
        "p": kdf.p,
        "salt": salt,
        "data": nonce + sealed,
    }


def read_wrapping_fields(fields: dict, what: str = "key file") -> tuple[KdfParams, bytes, bytes]:
    """Return (kdf params, salt, wrapped blob) after checking their types and bounds.

    Raises CorruptObject before any key is derived, so a tampered key file cannot make
    scrypt allocate unbounded memory.
    """
    if fields.get("kdf") != KDF_SCRYPT:
        raise CorruptObject(f"{what}: unsupported kdf {fields.get('kdf')!r} (expected {KDF_SCRYPT!r})")
    kdf = KdfParams(n=fields.get("n"), r=fields.get("r"), p=fields.get("p"))  # type: ignore[arg-type]
    problem = kdf.problem()
    if problem is not None:
        raise CorruptObject(f"{what}: {problem}; the key file is damaged or was altered")
    salt, blob = fields.get("salt"), fields.get("data")
    if not isinstance(salt, bytes) or not SALT_SIZE_RANGE[0] <= len(salt) <= SALT_SIZE_RANGE[1]:
        raise CorruptObject(f"{what}: salt must be {SALT_SIZE_RANGE[0]} to {SALT_SIZE_RANGE[1]} bytes")
    if not isinstance(blob, bytes) or not WRAPPED_SIZE_RANGE[0] <= len(blob) <= WRAPPED_SIZE_RANGE[1]:
        raise CorruptObject(f"{what}: wrapped key data has an invalid type or length")
    return kdf, salt, blob


def unwrap_master_keys(fields: dict, password: bytes, what: str = "key file") -> MasterKeys:
    """Decrypt the master keys of one key file; raise WrongPassword on a failed tag.

    A flipped bit in the salt, parameters or wrapped data also fails the tag, and
    cannot be told apart from a wrong password: no secret-free checksum would survive
    an attacker who can rewrite the file.
    """
    kdf, salt, blob = read_wrapping_fields(fields, what)
    wrapping_key = kdf.derive(password, salt)
    try:
        plain = AESGCM(wrapping_key).decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], KEY_WRAP_AAD)
    except InvalidTag as exc:
        raise WrongPassword(f"{what}: wrong password (or the key file was altered)") from exc
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

    Random nonces stay within NIST SP 800-38D's collision bound (section 8.3) for up to
    2**32 messages per key; a repository would reach that only after billions of objects.
    NOTE: nothing counts messages, so a repository past 2**32 sealed objects would need
    a new master key, which no command creates yet.
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def encrypt_parts(self, plaintext: bytes, associated: bytes) -> tuple[bytes, bytes]:
        """Return what encrypt() returns as two parts: the nonce, then ciphertext and tag.

        A caller that writes both parts into a pack saves the copy that joining them
        would make, which mattered because AES-GCM here runs with the GIL held.
        """
        nonce = os.urandom(NONCE_SIZE)
        return nonce, self._aead.encrypt(nonce, plaintext, associated)

    def decrypt(self, blob: bytes, associated: bytes) -> bytes:
        if len(blob) < NONCE_SIZE + TAG_SIZE:
            raise CorruptObject(f"ciphertext of {len(blob)} bytes is shorter than nonce and tag")
        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], associated)
        except InvalidTag as exc:
            raise CorruptObject("authentication tag mismatch (data altered, moved, or wrong key)") from exc
