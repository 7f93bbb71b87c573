"""The byte-plane codec: zstd over the byte planes of fixed-width numbers.

Model weights are arrays of 2- or 4-byte numbers (float16, bfloat16, float32). In such
an array the byte that contains the sign and exponent repeats a few values, while the low
mantissa bytes look random. zstd on the interleaved bytes finds little to exploit:
float16 values drawn from N(0, 0.02) shrink by 8%. Split into planes first (plane k
contains bytes k, k + W, k + 2W, ... for element width W) and compressed plane by plane,
the same data shrinks by 16%, because each plane gets its own entropy coding.

Payload layout (codec 2, see docs/format.md):

    byte 0              element width W, 2 to 8
    bytes 1 .. 4W       W little-endian u32: the length of each compressed plane
    rest                W zstd frames, plane 0 first

The plaintext length n is the sum of the decompressed plane lengths, and plane k contains
ceil((n - k) / W) bytes. Readers check both.
"""

from __future__ import annotations

import struct
from typing import Union

import zstandard

from casbak.errors import CorruptObject
from casbak.store import zstd_frames

MIN_WIDTH = 2
MAX_WIDTH = 8

# Objects below this size are not worth a trial: the planes of small objects gain little,
# and small objects are mostly text such as configs and trees.
MIN_OBJECT_SIZE = 64 * 1024

# Bytes from the middle of an object that decide whether planes pay off. The middle,
# because a weights file starts with a text header (safetensors' JSON).
SAMPLE_SIZE = 2048

# A width is chosen only when its sample compresses at least this much better.
MIN_GAIN = 0.97

# A sample that plain zstd shrinks below this fraction is text or similar: byte planes
# only help data whose bytes look random to zstd, so the plane trials are skipped.
TEXT_LIKE = 0.75

# Fast level for the trial only; the object itself uses the repository's level.
TRIAL_LEVEL = 1

_LENGTH = struct.Struct("<I")

Bytes = Union[bytes, bytearray, memoryview]


def choose_width(plaintext: Bytes) -> int:
    """Return the element width whose planes compress best, or 0 when planes do not pay.

    Compresses a small sample from the middle of the object as it is, as 2 planes and as
    4 planes. Text and already compressed data (Parquet pages, archives) give 0.
    """
    if len(plaintext) < MIN_OBJECT_SIZE:
        return 0
    middle = len(plaintext) // 2
    sample = bytes(plaintext[middle : middle + SAMPLE_SIZE])
    compressor = zstd_frames.compressor(TRIAL_LEVEL)
    plain = len(compressor.compress(sample))
    if plain < len(sample) * TEXT_LIKE:
        return 0
    best_width, best_size = 0, plain * MIN_GAIN
    for width in (2, 4):
        size = _planes_size(compressor, sample, width)
        if size < best_size:
            best_width, best_size = width, size * MIN_GAIN
    return best_width


def encode(plaintext: Bytes, width: int, level: int) -> bytes:
    """Return the codec-2 payload of `plaintext` split into `width` planes."""
    if not MIN_WIDTH <= width <= MAX_WIDTH:
        raise ValueError(f"plane width {width} is outside {MIN_WIDTH} to {MAX_WIDTH}")
    compressor = zstd_frames.compressor(level)
    frames = [compressor.compress(plaintext[k::width]) for k in range(width)]
    lengths = b"".join(_LENGTH.pack(len(frame)) for frame in frames)
    return bytes((width,)) + lengths + b"".join(frames)


def decode(payload: Bytes, limit: int, what: str) -> bytes:
    """Return the plaintext of a codec-2 payload of at most `limit` bytes.

    Raises CorruptObject on a bad width, lengths that do not add up, a frame that
    declares or yields more than the limit, or planes of inconsistent sizes.
    """
    view = memoryview(payload)
    width = _read_width(view, what)
    offset = 1 + _LENGTH.size * width
    if len(view) < offset:
        raise CorruptObject(f"{what}: byte-plane payload is shorter than its {width} plane lengths")
    lengths = [_LENGTH.unpack_from(view, 1 + _LENGTH.size * k)[0] for k in range(width)]
    if offset + sum(lengths) != len(view):
        raise CorruptObject(f"{what}: byte-plane lengths add up to {offset + sum(lengths)} bytes, the payload has {len(view)}")
    planes = []
    remaining = limit
    for length in lengths:
        plane = zstd_frames.decompress_frame(view[offset : offset + length], remaining, what)
        planes.append(plane)
        remaining -= len(plane)
        offset += length
    return _interleave(planes, width, what)


def _read_width(view: memoryview, what: str) -> int:
    if not len(view):
        raise CorruptObject(f"{what}: byte-plane payload is empty")
    width = view[0]
    if not MIN_WIDTH <= width <= MAX_WIDTH:
        raise CorruptObject(f"{what}: byte-plane width {width} is outside {MIN_WIDTH} to {MAX_WIDTH}")
    return width


def _interleave(planes: list[bytes], width: int, what: str) -> bytes:
    size = sum(map(len, planes))
    out = bytearray(size)
    for k, plane in enumerate(planes):
        expected = (size - k + width - 1) // width
        if len(plane) != expected:
            raise CorruptObject(f"{what}: byte plane {k} has {len(plane)} bytes, expected {expected}")
        out[k::width] = plane
    return bytes(out)


def _planes_size(compressor: zstandard.ZstdCompressor, sample: bytes, width: int) -> int:
    return sum(len(compressor.compress(sample[k::width])) for k in range(width))
