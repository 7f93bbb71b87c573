"""The repository config: format version, id, chunker, compression and pack settings.

Stored as the sealed object `config` in the role "config" (encrypted with the master
key in an encrypted repository, so the chunker seed stays secret). It is written once
by `init` and never changed afterwards.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field

import msgpack

from casbak.chunking import ChunkerParams
from casbak.errors import CorruptObject, UnsupportedFormat
from casbak.store.objects import CIPHER_NONE, HEADER_SIZE, ROLE_CONFIG, Sealer

REPOSITORY_VERSION = 1
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
ENCRYPTION_AES = "aes-256-gcm"
ENCRYPTION_NONE = "none"
ENCRYPTIONS = (ENCRYPTION_AES, ENCRYPTION_NONE)
CHUNKER_ALGORITHM = "fastcdc-2020"
COMPRESSION_CODEC = "zstd"
HASH_KEYED = "blake3-keyed"
HASH_PLAIN = "blake3"


@dataclass(frozen=True)
class RepositoryConfig:
    """Settings fixed for the lifetime of a repository."""

    repository_id: str = field(default_factory=lambda: secrets.token_hex(32))
    version: int = REPOSITORY_VERSION
    encryption: str = ENCRYPTION_AES
    chunker: ChunkerParams = field(default_factory=ChunkerParams)
    compression_level: int = 3
    pack_size: int = DEFAULT_PACK_SIZE
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat())
    # S3 Object Lock retention of new packs, index files and manifests; 0 days is off.
    object_lock_days: int = 0
    object_lock_mode: str = "governance"
    # Record a SHA-256 of every file next to its BLAKE3 content hash. On for new
    # repositories; a config without the key (written before the setting existed) is off.
    file_sha256: bool = True
    # Seal arrays of numbers with the byte-plane codec (codec 2). On for new repositories.
    # A config without the key is off, so that casbak versions that predate the codec
    # can still read every object written to it.
    byte_planes: bool = True

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "version": self.version,
                "id": self.repository_id,
                "created": self.created,
                "encryption": self.encryption,
                "hash": HASH_KEYED if self.encryption != ENCRYPTION_NONE else HASH_PLAIN,
                "chunker": {"algorithm": CHUNKER_ALGORITHM, **self.chunker.to_dict()},
                "compression": {"codec": COMPRESSION_CODEC, "level": self.compression_level},
                "pack_size": self.pack_size,
                # Written only when set, so configs without Object Lock keep their old bytes.
                **({"object_lock": {"days": self.object_lock_days, "mode": self.object_lock_mode}}
                   if self.object_lock_days else {}),
                **({"file_sha256": True} if self.file_sha256 else {}),
                **({"byte_planes": True} if self.byte_planes else {}),
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> "RepositoryConfig":
        try:
            body = msgpack.unpackb(data)
            version = int(body["version"])
        except (ValueError, KeyError, TypeError, OverflowError, msgpack.UnpackException) as exc:
            raise CorruptObject(f"config: cannot be parsed ({exc})") from exc
        if version != REPOSITORY_VERSION:
            raise UnsupportedFormat(
                f"config: repository format version {version} is not supported by this casbak "
                f"(supports {REPOSITORY_VERSION}); upgrade casbak"
            )
        try:
            chunker = dict(body["chunker"])
            algorithm = chunker.pop("algorithm")
            if algorithm != CHUNKER_ALGORITHM:
                raise UnsupportedFormat(f"config: unknown chunker algorithm {algorithm!r}; upgrade casbak")
            _check_encryption_fields(body)
            return cls(
                repository_id=str(body["id"]),
                version=version,
                encryption=str(body["encryption"]),
                chunker=ChunkerParams.from_dict(chunker),
                compression_level=int(body["compression"]["level"]),
                pack_size=int(body["pack_size"]),
                created=str(body["created"]),
                object_lock_days=int(body.get("object_lock", {}).get("days", 0)),
                object_lock_mode=str(body.get("object_lock", {}).get("mode", "governance")),
                file_sha256=body.get("file_sha256", False) is True,
                byte_planes=body.get("byte_planes", False) is True,
            )
        # OverflowError comes from int() of an infinite float, AttributeError from a
        # field that should be a map but is not.
        except (ValueError, KeyError, TypeError, OverflowError, AttributeError) as exc:
            raise CorruptObject(f"config: missing or invalid field ({exc})") from exc


def _check_encryption_fields(body: dict) -> None:
    encryption = body["encryption"]
    if encryption not in ENCRYPTIONS:
        raise UnsupportedFormat(f"config: unknown encryption {encryption!r}; upgrade casbak")
    expected_hash = HASH_PLAIN if encryption == ENCRYPTION_NONE else HASH_KEYED
    if body["hash"] != expected_hash:
        raise CorruptObject(f"config: hash {body['hash']!r} does not match encryption {encryption!r}")
    if body["compression"]["codec"] != COMPRESSION_CODEC:
        raise UnsupportedFormat(f"config: unknown compression codec {body['compression']['codec']!r}")


def seal_config(config: RepositoryConfig, sealer: Sealer) -> bytes:
    """Return the stored bytes of the `config` file."""
    return sealer.seal(config.encode(), role=ROLE_CONFIG)


def open_config(sealed: bytes, sealer: Sealer) -> RepositoryConfig:
    """Decode the `config` file and check that its encryption matches the sealer's cipher.

    The check stops a config that names the other mode (for example "none" sealed in
    an encrypted repository) from switching how new data is written.
    """
    config = RepositoryConfig.decode(sealer.open(sealed, what="config", role=ROLE_CONFIG))
    expected = ENCRYPTION_NONE if sealer.cipher is None else ENCRYPTION_AES
    if config.encryption != expected:
        raise CorruptObject(
            f"config: records encryption {config.encryption!r}, but it is stored with cipher {sealer.cipher_id}; "
            "the config was altered"
        )
    return config


def config_is_encrypted(sealed: bytes) -> bool:
    """Return whether the stored `config` bytes carry a cipher other than none."""
    return len(sealed) >= HEADER_SIZE and sealed[2] != CIPHER_NONE
