"""Pack building: the reusable pack buffer and the builder on top of it."""

from __future__ import annotations

import os

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbak.crypto import Cipher
from casbak.store.objects import Sealer
from casbak.store.backend import LocalBackend
from casbak.store.packs import KIND_DATA, PackBuffer, PackBuilder, StagedPack, pack_path, parse_pack_header

SEALER = Sealer(Cipher(os.urandom(32)))


@settings(max_examples=50, deadline=None)
@given(parts=st.lists(st.binary(max_size=3000), max_size=20), capacity=st.integers(min_value=1, max_value=5000))
def test_buffer_appends_and_grows(parts, capacity):
    buffer = PackBuffer(capacity)

    for part in parts:
        buffer.append(part)

    with buffer.view() as view:
        assert view.tobytes() == b"".join(parts)
    assert len(buffer) == sum(map(len, parts))


def test_cleared_buffer_keeps_only_new_bytes():
    buffer = PackBuffer(4096)
    buffer.append(b"x" * 10_000)
    buffer.clear()

    buffer.append(b"second pack")

    with buffer.view() as view:
        assert view.tobytes() == b"second pack"
    assert buffer.capacity >= 10_000


def test_buffer_cannot_grow_while_viewed():
    # A pack being uploaded is a view of its buffer, so growing it then must fail loudly
    # instead of unmapping memory that the upload still reads.
    buffer = PackBuffer(4096)
    buffer.append(b"a" * 4000)

    with buffer.view():
        with pytest.raises(BufferError):
            buffer.append(b"b" * 5000)


def test_builder_on_reused_buffer_makes_valid_pack():
    buffer = PackBuffer(1 << 16)
    first = PackBuilder(KIND_DATA, buffer)
    first.add(b"\x01" * 32, SEALER.seal(os.urandom(50_000)), 50_000)
    first_id, first_data = first.finish(SEALER)
    first_data.release()
    buffer.clear()

    second = PackBuilder(KIND_DATA, buffer)
    chunks = [b"row %d\n" % n * 50 for n in range(5)]
    for number, chunk in enumerate(chunks):
        second.add(bytes([number]) * 32, SEALER.seal(chunk), len(chunk))
    second_id, data = second.finish(SEALER)
    pack = data.tobytes()
    data.release()

    kind, entries = parse_pack_header(second_id, pack, len(pack), SEALER)
    assert second_id != first_id
    assert kind == KIND_DATA
    assert entries == second.entries
    opened = [SEALER.open(pack[e.offset : e.offset + e.length], e.raw_length) for e in entries]
    assert opened == chunks


@pytest.mark.parametrize("sealer", [SEALER, Sealer(None)], ids=["encrypted", "plain"])
@pytest.mark.parametrize("payload", [b"", b"short", b"compressible row\n" * 300, os.urandom(4000)])
def test_sealed_parts_join_to_object(sealer, payload):
    head, body = sealer.seal_parts(payload)

    assert sealer.open(head + body, expected_size=len(payload)) == payload
    assert len(head) == (15 if sealer.cipher else 3)


def test_staged_pack_hidden_until_published(tmp_path):
    backend = LocalBackend(str(tmp_path))
    builder = PackBuilder(KIND_DATA, StagedPack(lambda: backend.stage(KIND_DATA)))
    chunks = [os.urandom(3000), b"text row\n" * 400]
    for number, chunk in enumerate(chunks):
        head, body = SEALER.seal_parts(chunk)
        builder.add_parts(bytes([number]) * 32, (head, body), len(chunk))

    pack_id = builder.complete(SEALER)
    staged = [p.name for p in (tmp_path / KIND_DATA).iterdir()]
    listed_before = backend.list(KIND_DATA)
    backend.publish(builder.sink.file, pack_path(KIND_DATA, pack_id))

    pack = backend.read(pack_path(KIND_DATA, pack_id))
    assert len(staged) == 1
    assert staged[0].startswith(".tmp-")
    assert listed_before == []
    assert backend.list(KIND_DATA) == [pack_path(KIND_DATA, pack_id)]
    assert blake3.blake3(pack).hexdigest() == pack_id
    _kind, entries = parse_pack_header(pack_id, pack, len(pack), SEALER)
    assert [SEALER.open(pack[e.offset : e.offset + e.length], e.raw_length) for e in entries] == chunks


def test_staged_pack_without_objects_creates_no_file(tmp_path):
    backend = LocalBackend(str(tmp_path))
    sink = StagedPack(lambda: backend.stage(KIND_DATA))

    sink.discard()

    assert not (tmp_path / KIND_DATA).exists()


@pytest.mark.parametrize("sealer", [SEALER, Sealer(None, 3, byte_planes=True)], ids=["encrypted", "plain"])
def test_sealing_many_matches_one_by_one(sealer):
    # Small objects are compressed in one group call; the result must not differ in
    # codec or content from sealing each object alone.
    plaintexts = [b"", b"tiny", b"row of text\n" * 40, os.urandom(3000), b"config: 1\n" * 7000, os.urandom(70_000)]

    together = sealer.seal_parts_many(plaintexts)
    alone = [sealer.seal_parts(plaintext) for plaintext in plaintexts]

    assert [head[1] for head, _body in together] == [head[1] for head, _body in alone]
    for (head, body), plaintext in zip(together, plaintexts):
        assert sealer.open(head + body, expected_size=len(plaintext)) == plaintext
