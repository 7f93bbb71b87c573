"""The repository config: format version, id, chunker, compression and pack settings.

Stored as the sealed object `config` (encrypted with the master key in an encrypted
repository, so the chunker seed stays secret). It is written once by `init` and never
changed afterwards.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field

import msgpack

from casbak.chunking import ChunkerParams
from casbak.errors import CorruptObject, UnsupportedFormat

REPOSITORY_VERSION = 1
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
ENCRYPTION_AES = "aes-256-gcm"
ENCRYPTION_NONE = "none"


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

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "version": self.version,
                "id": self.repository_id,
                "created": self.created,
                "encryption": self.encryption,
                "hash": "blake3-keyed" if self.encryption != ENCRYPTION_NONE else "blake3",
                "chunker": {"algorithm": "fastcdc-2020", **self.chunker.to_dict()},
                "compression": {"codec": "zstd", "level": self.compression_level},
                "pack_size": self.pack_size,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> "RepositoryConfig":
        try:
            body = msgpack.unpackb(data)
            version = int(body["version"])
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise CorruptObject(f"config: cannot be parsed ({exc})") from exc
        if version != REPOSITORY_VERSION:
            raise UnsupportedFormat(
                f"config: repository format version {version} is not supported by this casbak "
                f"(supports {REPOSITORY_VERSION}); upgrade casbak"
            )
        try:
            chunker = dict(body["chunker"])
            if chunker.pop("algorithm") != "fastcdc-2020":
                raise CorruptObject("config: unknown chunker algorithm")
            return cls(
                repository_id=str(body["id"]),
                version=version,
                encryption=str(body["encryption"]),
                chunker=ChunkerParams.from_dict(chunker),
                compression_level=int(body["compression"]["level"]),
                pack_size=int(body["pack_size"]),
                created=str(body["created"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"config: missing or invalid field ({exc})") from exc
