"""The byte-plane codec: round trips, the width choice, and rejection of damaged payloads."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbak.crypto import Cipher
from casbak.errors import CorruptObject
from casbak.store import planes, zstd_frames
from casbak.store.config import RepositoryConfig
from casbak.store.objects import CODEC_ZSTD, CODEC_ZSTD_PLANES, Sealer

def weights(dtype: str, count: int = 100_000) -> bytes:
    """Return model-like weights: values from N(0, 0.02) stored as `dtype`."""
    generator = random.Random(7)
    values = [generator.gauss(0, 0.02) for _ in range(count)]
    if dtype == "float16":
        return struct.pack(f"<{count}e", *values)
    single = struct.pack(f"<{count}f", *values)
    if dtype == "float32":
        return single
    # bfloat16 is the upper half of a float32.
    return b"".join(single[i + 2 : i + 4] for i in range(0, len(single), 4))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=5000), width=st.integers(min_value=2, max_value=8))
def test_encode_decode_round_trip(data, width):
    payload = planes.encode(data, width, level=3)

    assert planes.decode(payload, limit=len(data), what="test") == data


@pytest.mark.parametrize(
    ("dtype", "width"), [("float16", 2), ("bfloat16", 2), ("float32", 4)],
)
def test_weights_choose_their_width(dtype, width):
    assert planes.choose_width(weights(dtype)) == width


@pytest.mark.parametrize(
    "data",
    [b"a line of training config text\n" * 4000, os.urandom(100_000), b"\x00" * 100_000],
    ids=["text", "random", "zeros"],
)
def test_other_data_keeps_plain_zstd(data):
    assert planes.choose_width(data) == 0


def test_small_objects_are_not_tried():
    assert planes.choose_width(weights("float16", count=1000)) == 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_planes_beat_plain_zstd_on_weights(dtype):
    data = weights(dtype)
    sealer = Sealer(None, 3, byte_planes=True)
    plain = Sealer(None, 3)

    with_planes = sealer.seal(data)
    without = plain.seal(data)

    assert with_planes[1] == CODEC_ZSTD_PLANES
    assert without[1] == CODEC_ZSTD
    assert len(with_planes) < 0.95 * len(without)


@pytest.mark.parametrize("encrypted", [True, False])
def test_sealer_opens_plane_objects(encrypted):
    sealer = Sealer(Cipher(os.urandom(32)) if encrypted else None, 3, byte_planes=True)
    data = weights("bfloat16")

    sealed = sealer.seal(data)

    assert sealed[1] == CODEC_ZSTD_PLANES
    assert sealer.open(sealed, expected_size=len(data)) == data
    # A reader without the writer setting opens the object too: the codec is in the header.
    assert Sealer(sealer.cipher, 3).open(sealed, expected_size=len(data)) == data


def payload_of(data: bytes, width: int = 2) -> bytearray:
    return bytearray(planes.encode(data, width, level=3))


def test_decode_rejects_bad_width():
    payload = payload_of(weights("float16"))
    payload[0] = 9

    with pytest.raises(CorruptObject, match="width 9"):
        planes.decode(payload, limit=1 << 20, what="chunk")


def test_decode_rejects_lengths_that_do_not_add_up():
    payload = payload_of(weights("float16"))
    struct.pack_into("<I", payload, 1, struct.unpack_from("<I", payload, 1)[0] + 1)

    with pytest.raises(CorruptObject, match="add up"):
        planes.decode(payload, limit=1 << 20, what="chunk")


def test_decode_rejects_planes_of_wrong_sizes():
    # Two planes of 10 and 4 bytes cannot come from one 14-byte plaintext.
    frames = [zstd_frames.compressor(3).compress(b"x" * 10), zstd_frames.compressor(3).compress(b"y" * 4)]
    payload = bytes((2,)) + b"".join(struct.pack("<I", len(f)) for f in frames) + b"".join(frames)

    with pytest.raises(CorruptObject, match="plane 0"):
        planes.decode(payload, limit=100, what="chunk")


def test_decode_bounds_output_by_limit():
    data = weights("float16")
    payload = payload_of(data)

    with pytest.raises(CorruptObject, match="more than"):
        planes.decode(payload, limit=len(data) // 4, what="chunk")


def test_decode_rejects_truncated_payload():
    payload = payload_of(weights("float16"))

    with pytest.raises(CorruptObject):
        planes.decode(payload[:-10], limit=1 << 20, what="chunk")
    with pytest.raises(CorruptObject, match="shorter"):
        planes.decode(payload[:5], limit=1 << 20, what="chunk")
    with pytest.raises(CorruptObject, match="empty"):
        planes.decode(b"", limit=1 << 20, what="chunk")


def test_config_without_key_keeps_planes_off():
    config = RepositoryConfig(byte_planes=False)

    decoded = RepositoryConfig.decode(config.encode())

    assert decoded.byte_planes is False
    assert RepositoryConfig.decode(RepositoryConfig().encode()).byte_planes is True
