"""Model weights in a snapshot: stored with the byte-plane codec and restored exactly."""

from __future__ import annotations

import random
import struct

import pytest

from casbak.chunking import ChunkerParams
from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import create_snapshot
from casbak.store.objects import CODEC_ZSTD_PLANES
from casbak.store.packs import pack_path
from casbak.store.repository import Repository
from tests.conftest import FAST_KDF, PASSWORD, read_tree, small_config


def write_checkpoint(path, count: int = 400_000) -> None:
    # float16 weights from N(0, 0.02) after an 8-byte header, as in a safetensors file.
    generator = random.Random(3)
    values = [generator.gauss(0, 0.02) for _ in range(count)]
    path.write_bytes(struct.pack("<Q", 0) + struct.pack(f"<{count}e", *values))


def stored_codecs(repository: Repository) -> list[int]:
    codecs = []
    for digest in repository.index.digests():
        location = repository.index.lookup(digest)
        name = pack_path(location.kind, location.pack_id)
        codecs.append(repository.backend.read(name, location.offset, location.offset + 2)[1])
    return codecs


@pytest.mark.parametrize("byte_planes", [True, False])
def test_weights_round_trip(tmp_path, byte_planes):
    source = tmp_path / "src"
    source.mkdir()
    write_checkpoint(source / "model.safetensors")
    (source / "config.yaml").write_text("learning_rate: 0.0001\nbeta: 0.1\n" * 50)
    location = str(tmp_path / "repo")
    # Default chunk sizes: byte planes are tried only for objects of 64 KiB and more.
    chunker = ChunkerParams(seed=ChunkerParams.random_seed())
    config = small_config(chunker=chunker, pack_size=4 << 20, byte_planes=byte_planes)
    Repository.init(location, PASSWORD, config=config, kdf=FAST_KDF)
    repository = Repository.open(location, PASSWORD)

    result = create_snapshot(repository, [str(source)])
    target = tmp_path / "restored"
    restore_snapshot(Repository.open(location, PASSWORD), result.manifest, str(target), str(source))

    assert read_tree(target) == read_tree(source)
    codecs = stored_codecs(Repository.open(location, PASSWORD))
    assert (CODEC_ZSTD_PLANES in codecs) is byte_planes
