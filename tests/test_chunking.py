"""Chunker tests: pinned cut points, lossless splitting, parameter validation."""

from __future__ import annotations

import io
import random

import pyfastcdc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbak.chunking import Chunker, ChunkerParams
from casbak.errors import UsageError
from tests.conftest import SMALL_CHUNKER

GOLDEN_INPUT_SIZE = 2_000_000

# Chunk lengths of random.Random(1234).randbytes(2_000_000). A change here means
# existing repositories would stop deduplicating against new snapshots.
DEFAULT_LENGTHS = [
    186604, 157464, 130677, 114889, 262634, 265075, 141110,
    239949, 89002, 163622, 200363, 38438, 10173,
]
SEED_7_LENGTHS = [404034, 261164, 209566, 184859, 204081, 185209, 87375, 270367, 193345]
SMALL_FIRST_LENGTHS = [
    5575, 4443, 2807, 11377, 1944, 5085, 4361, 7449, 7267, 6720,
    5522, 4916, 2378, 5248, 4589, 2686, 1914, 9618, 4240, 5308,
]
SMALL_CHUNK_COUNT = 395


class TrickleReader(io.RawIOBase):
    """A raw stream that returns at most `step` bytes per read, like a pipe or socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._position = 0
        self._step = step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._step, len(self._data) - self._position)
        buffer[:count] = self._data[self._position : self._position + count]
        self._position += count
        return count


@pytest.fixture(scope="module")
def golden_input() -> bytes:
    return random.Random(1234).randbytes(GOLDEN_INPUT_SIZE)


def chunk_lengths(params: ChunkerParams, data: bytes) -> list[int]:
    return [len(chunk) for chunk in Chunker(params).chunks(io.BytesIO(data))]


def test_default_params_cut_points(golden_input):
    assert chunk_lengths(ChunkerParams(), golden_input) == DEFAULT_LENGTHS


def test_seed_moves_cut_points(golden_input):
    assert chunk_lengths(ChunkerParams(seed=7), golden_input) == SEED_7_LENGTHS


def test_small_params_cut_points(golden_input):
    lengths = chunk_lengths(SMALL_CHUNKER, golden_input)

    assert len(lengths) == SMALL_CHUNK_COUNT
    assert lengths[:20] == SMALL_FIRST_LENGTHS
    assert sum(lengths) == GOLDEN_INPUT_SIZE


def test_small_params_respect_limits(golden_input):
    lengths = chunk_lengths(SMALL_CHUNKER, golden_input)

    assert max(lengths) <= SMALL_CHUNKER.max_size
    # Only the final chunk may be shorter than the minimum.
    assert min(lengths[:-1]) >= SMALL_CHUNKER.min_size


def test_stream_and_buffer_agree(golden_input):
    data = golden_input[:300_000]
    from_buffer = [len(c) for c in Chunker(SMALL_CHUNKER).chunk_bytes(data)]

    from_stream = chunk_lengths(SMALL_CHUNKER, data)

    assert from_stream == from_buffer


def test_short_reads_keep_cut_points(golden_input):
    data = golden_input[:300_000]
    expected = chunk_lengths(SMALL_CHUNKER, data)

    trickled = [len(c) for c in Chunker(SMALL_CHUNKER).chunks(TrickleReader(data, 777))]

    assert trickled == expected


def test_empty_stream_has_no_chunks():
    assert list(Chunker(SMALL_CHUNKER).chunks(io.BytesIO(b""))) == []


@settings(max_examples=80, deadline=None)
@given(size=st.integers(min_value=0, max_value=3 * SMALL_CHUNKER.min_size), seed=st.integers(min_value=0, max_value=2**16))
def test_chunk_bytes_matches_fastcdc_near_min_size(size, seed):
    # chunk_bytes skips pyfastcdc for inputs up to min_size, so its cuts must match pyfastcdc's.
    data = random.Random(seed).randbytes(size)
    params = ChunkerParams(SMALL_CHUNKER.min_size, SMALL_CHUNKER.avg_size, SMALL_CHUNKER.max_size, seed=seed)
    reference = pyfastcdc.FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size,
                                  normalized_chunking=params.normalization, seed=params.seed)

    chunks = Chunker(params).chunk_bytes(data)

    assert chunks == [bytes(chunk.data) for chunk in reference.cut_buf(data)]
    assert all(type(chunk) is bytes for chunk in chunks)


def test_chunk_bytes_copies_mutable_input():
    buffer = bytearray(b"row\n" * 10)

    chunks = Chunker(SMALL_CHUNKER).chunk_bytes(buffer)
    buffer[:3] = b"xxx"

    assert chunks == [b"row\n" * 10]


def test_insert_shifts_few_chunks(golden_input):
    # Content-defined cuts resynchronise after an edit, which is what makes dedup work.
    data = golden_input[:500_000]
    edited = data[:100_000] + b"inserted line\n" + data[100_000:]
    before = set(Chunker(SMALL_CHUNKER).chunk_bytes(data))

    after = Chunker(SMALL_CHUNKER).chunk_bytes(edited)

    changed = [chunk for chunk in after if chunk not in before]
    assert len(changed) <= 3
    assert len(after) > 50


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=60_000), step=st.integers(min_value=1, max_value=9000))
def test_chunks_concatenate_to_input(data, step):
    chunks = list(Chunker(SMALL_CHUNKER).chunks(TrickleReader(data, step)))

    assert b"".join(chunks) == data
    assert all(len(chunk) <= SMALL_CHUNKER.max_size for chunk in chunks)
    assert all(chunks)


@pytest.mark.parametrize(
    "changes",
    [
        {"avg_size": 100},
        {"min_size": 10},
        {"max_size": 32 * 1024 * 1024},
        {"min_size": 8192, "avg_size": 4096},
        {"normalization": 4},
        {"seed": -1},
        {"seed": 2**63},
    ],
)
def test_invalid_params_rejected(changes):
    values = {"min_size": 1024, "avg_size": 4096, "max_size": 16384, **changes}

    with pytest.raises(UsageError):
        ChunkerParams(**values).validate()


def test_params_dict_round_trip():
    params = ChunkerParams(min_size=2048, avg_size=8192, max_size=65536, normalization=2, seed=99)

    assert ChunkerParams.from_dict(params.to_dict()) == params
