"""docs/format.md against the code: stated constants, field lists and golden vectors.

The golden-vector tests build repositories byte by byte with struct, msgpack, zstandard,
blake3, hashlib and AES-GCM, following only docs/format.md, and check that casbak reads
them. If the page left out a rule that casbak needs, these tests fail.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import re
import struct
from pathlib import Path

import blake3
import msgpack
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from casbak import crypto, manifest, tree
from casbak.audit import signing
from casbak.catalog import load_tree, resolve_snapshot
from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import create_snapshot
from casbak.store import config, index, keys, objects, packs
from casbak.store import repository as repository_module
from casbak.store.repository import Repository
from tests.conftest import FAST_KDF, PASSWORD, small_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "format.md"


# Parsing the page


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def section(title: str) -> str:
    """Return the text of the `## title` section, up to the next `## ` heading."""
    text = doc_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Return (header cells, body rows) of every Markdown table in `text`."""
    found = []
    block: list[str] = []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2:
            rows = [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in block]
            found.append((rows[0], rows[2:]))
        block = []
    return found


def table(text: str, *header: str) -> list[list[str]]:
    """Return the body rows of the first table in `text` whose header starts with `header`."""
    for cells, rows in tables(text):
        if tuple(cells[: len(header)]) == header:
            return rows
    raise AssertionError(f"docs/format.md: no table with header {header}")


def unquote(cell: str) -> str:
    return cell.strip("`")


def key_column(text: str) -> list[str]:
    return [unquote(row[0]) for row in table(text, "Key", "Type")]


# Constants and field lists


def constant_values() -> dict[str, object]:
    values: dict[str, object] = {
        "object header version": objects.OBJECT_VERSION,
        "codec raw": objects.CODEC_RAW,
        "codec zstd": objects.CODEC_ZSTD,
        "codec zstd byte planes": objects.CODEC_ZSTD_PLANES,
        "cipher none": objects.CIPHER_NONE,
        "cipher AES-256-GCM": objects.CIPHER_AES256GCM,
        "pack header version": packs.PACK_VERSION,
        "index version": index.INDEX_VERSION,
        "tree version": tree.TREE_VERSION,
        "sha256 tree version": tree.SHA256_TREE_VERSION,
        "etag tree version": tree.ETAG_TREE_VERSION,
        "signer record version": signing.SIGNER_RECORD_VERSION,
        "manifest version": manifest.MANIFEST_VERSION,
        "copied manifest version": manifest.COPIED_MANIFEST_VERSION,
        "key file version": keys.KEY_VERSION,
        "config version": config.REPOSITORY_VERSION,
        "nonce size": crypto.NONCE_SIZE,
        "tag size": crypto.TAG_SIZE,
        "digest size": crypto.DIGEST_SIZE,
        "pack trailer size": packs.TRAILER.size,
        "key wrapping AAD": crypto.KEY_WRAP_AAD.decode(),
        "role pack header": objects.ROLE_PACK_HEADER.decode(),
        "role index": objects.ROLE_INDEX.decode(),
        "role config": objects.ROLE_CONFIG.decode(),
    }
    forget = optional_module("casbak.operations.forget")
    if forget is not None:
        values["forget record version"] = forget.FORGET_RECORD_VERSION
    return values


def optional_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def test_constants_match_code():
    stated = {row[0]: unquote(row[1]) for row in table(section("Versions and future changes"), "Constant", "Value")}
    expected = constant_values()

    for name, value in expected.items():
        assert stated.get(name) == str(value), name
    assert set(stated) - set(expected) <= {"forget record version"}


def test_codec_and_cipher_ids_match_code():
    text = section("Sealed objects")
    codecs = {int(row[0]): row[1] for row in table(text, "Codec id", "Codec")}
    ciphers = {int(row[0]): row[1] for row in table(text, "Cipher id", "Cipher")}

    assert codecs == {objects.CODEC_RAW: "raw", objects.CODEC_ZSTD: "zstd", objects.CODEC_ZSTD_PLANES: "zstd byte planes"}
    assert ciphers == {objects.CIPHER_NONE: "none", objects.CIPHER_AES256GCM: "AES-256-GCM"}


def test_header_layout_matches_code():
    rows = table(section("Sealed objects"), "Offset", "Size", "Field")
    sizes = [row[1] for row in rows]

    assert sizes[: objects.HEADER_SIZE] == ["1"] * objects.HEADER_SIZE
    assert len(rows) == objects.HEADER_SIZE + 1


def test_roles_match_code():
    roles = {row[0]: unquote(row[1]) for row in table(section("Sealed objects"), "Stored file", "Role")}

    assert roles["pack header"] == objects.ROLE_PACK_HEADER.decode()
    assert roles["index file"] == objects.ROLE_INDEX.decode()
    assert roles["config"] == objects.ROLE_CONFIG.decode()
    assert roles["chunk or tree inside a pack"] == "empty"
    assert roles["manifest"] == "empty"
    assert objects.ROLE_OBJECT == b""


def test_entry_fields_match_code():
    rows = table(section("Trees and entries"), "Order", "Field")
    fields = [unquote(row[1]) for row in rows]
    orders = [int(row[0]) for row in rows]
    type_row = next(row for row in rows if unquote(row[1]) == "type")

    assert fields == list(tree.ENTRY_FIELDS)
    assert orders == list(range(1, len(fields) + 1))
    assert re.findall(r"`([a-z]+)`", type_row[4]) == list(tree.ENTRY_TYPES)
    assert set(fields) == {f.name for f in dataclasses.fields(tree.Entry)}


def test_manifest_fields_match_code():
    stated = key_column(section("Manifests and the hash chain"))
    record = manifest.Manifest(0, "host", "user", ["/src"], b"\x00" * 32, "0")
    encoded = list(msgpack.unpackb(record.encode()))
    copied = manifest.Manifest(0, "host", "user", ["/src"], b"\x00" * 32, "0", copied_from="ab" * 32, pii={})
    encoded_copy = msgpack.unpackb(copied.encode())

    assert stated == list(encoded_copy)
    assert encoded == [key for key in stated if key not in ("copied_from", "pii")]
    assert encoded_copy["version"] == manifest.COPIED_MANIFEST_VERSION


def test_manifest_pii_fields_match_code(tmp_path):
    from casbak.audit.pii import PiiScan

    source = tmp_path / "notes.txt"
    source.write_bytes(b"write to jane.doe@mailhost.io\n")
    scan = PiiScan("warn")
    scanner = scan.scanner_for(str(source))
    scanner.feed(source.read_bytes())
    scan.record(scanner.finish())
    record = scan.record_map()
    text = section("Manifests and the hash chain")
    pii_tables = [rows for cells, rows in tables(text) if cells[:2] == ["Key", "Type"]]

    assert [unquote(row[0]) for row in pii_tables[1]] == list(record)
    assert [unquote(row[0]) for row in pii_tables[2]] == list(record["findings"][0])


def test_manifest_signature_fields_match_code():
    key = Ed25519PrivateKey.generate()
    signer = signing.SigningKey(key, signing.fingerprint_of(key.public_key()))
    record = manifest.Manifest(0, "host", "user", ["/src"], b"\x00" * 32, "0", previous="cd" * 32)
    signing.sign_manifest(record, signer)
    stored = msgpack.unpackb(record.encode())
    text = section("Manifests and the hash chain")
    signature_table = next(rows for cells, rows in tables(text) if [unquote(row[0]) for row in rows] == ["signer", "signature"])
    signed = dict(stored)
    del signed["signature"]

    assert list(stored)[-2:] == [unquote(row[0]) for row in signature_table]
    assert [k for k in key_column(text) if k not in ("pii", "copied_from")] == list(stored)[:-2]
    # The page's rule: drop `signature`, re-encode, verify.
    key.public_key().verify(stored["signature"], msgpack.packb(signed))


def test_signer_record_fields_match_code(repository):
    key = Ed25519PrivateKey.generate()
    fingerprint = signing.publish_public_key(repository, key.public_key())
    stored = repository.backend.read(f"{signing.SIGNERS_PREFIX}/{fingerprint}")
    body = msgpack.unpackb(repository.sealer.open(stored))

    assert key_column(section("Signers")) == list(body)
    assert hashlib.sha256(body["public_key"]).hexdigest() == fingerprint


def test_key_file_fields_match_code(repository):
    stated = key_column(section("Key files"))
    stored = msgpack.unpackb((Path(repository.backend.root) / keys.key_path(repository.key_id)).read_bytes())

    assert stated == list(keys.KEY_FIELDS)
    assert stated == list(stored)


def test_config_fields_match_code():
    rows = table(section("Config"), "Key", "Type")
    required = [unquote(row[0]) for row in rows if "optional" not in row[1]]
    optional = [unquote(row[0]) for row in rows if "optional" in row[1]]
    body = msgpack.unpackb(small_config().encode())

    assert required == [key for key in body if key not in optional]
    assert set(body) <= set(required) | set(optional)
    assert body["file_sha256"] is True
    assert "file_sha256" not in msgpack.unpackb(small_config(file_sha256=False).encode())
    assert body["byte_planes"] is True
    assert body["hash"] == config.HASH_KEYED
    assert msgpack.unpackb(small_config(encrypted=False).encode())["hash"] == config.HASH_PLAIN


def test_pack_and_index_fields_match_code(memory_repository):
    builder = packs.PackBuilder(packs.KIND_DATA)
    builder.add(b"\x01" * 32, memory_repository.sealer.seal(b"chunk"), 5)
    pack_id, data = builder.finish(memory_repository.sealer)
    (header_length,) = struct.unpack("<I", data[-4:])
    header = msgpack.unpackb(hand_open(data[-4 - header_length : -4]))
    info = index.PackInfo(pack_id, packs.KIND_DATA, len(data), tuple(builder.entries))
    _index_id, sealed_index = index.encode_index([info], memory_repository.sealer)
    body = msgpack.unpackb(hand_open(sealed_index))

    index_tables = [rows for cells, rows in tables(section("Index files")) if cells[:2] == ["Key", "Type"]]

    assert key_column(section("Packs")) == list(header)
    assert [unquote(row[0]) for row in index_tables[0]] == list(body)
    assert [unquote(row[0]) for row in index_tables[1]] == list(body["packs"][0])


def test_layout_names_every_prefix(repository, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_bytes(os.urandom(5000))
    create_snapshot(repository, [str(source)])
    layout = section("Store layout")
    stated = {unquote(row[0]).rstrip("/") for row in table(layout, "Prefix", "Name of each file")}
    stored = set(os.listdir(repository.backend.root))
    code_prefixes = {
        signing.SIGNERS_PREFIX,
        repository_module.CONFIG_NAME, keys.KEYS_PREFIX, repository_module.SNAPSHOTS_PREFIX, *packs.KINDS, "index"
    }
    for module, attribute in (("casbak.operations.forget", "FORGOTTEN_PREFIX"), ("casbak.store.locks", "LOCKS_PREFIX")):
        found = optional_module(module)
        if found is not None:
            code_prefixes.add(getattr(found, attribute))

    assert stored <= stated
    assert code_prefixes <= stated
    for name in stated:
        assert f"── {name}" in layout, name


# Golden vectors built from the page alone


def plain_seal(payload: bytes, compress: bool = False) -> bytes:
    if compress:
        return bytes((1, 1, 0)) + zstandard.ZstdCompressor(level=3).compress(payload)
    return bytes((1, 0, 0)) + payload


def aes_seal(key: bytes, payload: bytes, role: bytes = b"") -> bytes:
    header = bytes((1, 0, 1))
    nonce = os.urandom(12)
    return header + nonce + AESGCM(key).encrypt(nonce, payload, header + role)


def build_pack(kind: str, sealed_objects: list[tuple[bytes, bytes, int]], seal_header) -> tuple[str, bytes, list]:
    """Return (pack id, pack bytes, object arrays) for (digest, sealed, raw length) triples."""
    body = b""
    arrays = []
    for digest, sealed, raw_length in sealed_objects:
        arrays.append([digest, len(body), len(sealed), raw_length])
        body += sealed
    sealed_header = seal_header(msgpack.packb({"version": 1, "type": kind, "objects": arrays}))
    data = body + sealed_header + struct.pack("<I", len(sealed_header))
    return blake3.blake3(data).hexdigest(), data, arrays


def write(root: Path, name: str, data: bytes) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def golden_tree(digest, first: bytes, second: bytes) -> tuple[bytes, bytes, bytes]:
    """Return (file tree plaintext, root tree plaintext, whole content) in canonical form."""
    content = first + second
    file_entry = {
        "name": b"prefs.jsonl",
        "type": "file",
        "mode": 0o644,
        "uid": 1000,
        "gid": 1000,
        "mtime_ns": 1_700_000_000_123_456_789,
        "size": len(content),
        "content": digest(content),
        "chunks": [digest(first), digest(second)],
        "sha256": hashlib.sha256(content).digest(),
    }
    link_entry = {
        "name": b"z-link",
        "type": "symlink",
        "mode": 0o777,
        "uid": 0,
        "gid": 0,
        "mtime_ns": 5,
        "target": b"prefs.jsonl",
    }
    # "b-\xff" sorts before "prefs" and "z-link" by raw bytes; it is not valid UTF-8.
    empty_entry = {"name": b"b-\xff", "type": "file", "mode": 0o600, "uid": 0, "gid": 0, "mtime_ns": 0,
                   "size": 0, "content": digest(b""), "chunks": []}
    # Version 2: the file entry carries `sha256`.
    leaf = msgpack.packb({"version": 2, "entries": [empty_entry, file_entry, link_entry]})
    directory = {"name": b"golden", "type": "dir", "mode": 0o755, "uid": 0, "gid": 0, "mtime_ns": 0,
                 "subtree": digest(leaf)}
    root = msgpack.packb({"version": 1, "entries": [directory]})
    return leaf, root, content


def golden_manifest(root_digest: bytes) -> bytes:
    return msgpack.packb(
        {
            "version": 1,
            "time": "2026-01-02T03:04:05.000000006Z",
            "time_ns": 1_767_323_045_000_000_006,
            "hostname": "golden-host",
            "username": "golden-user",
            "sources": ["/golden"],
            "tree": root_digest,
            "program_version": "hand-written",
            "tags": ["golden"],
            "parent": None,
            "previous": None,
            "partial": False,
            "errors": [],
            "stats": {},
        }
    )


def golden_config(encryption: str) -> bytes:
    return msgpack.packb(
        {
            "version": 1,
            "id": "ab" * 32,
            "created": "2026-01-02T03:04:05+00:00",
            "encryption": encryption,
            "hash": "blake3" if encryption == "none" else "blake3-keyed",
            "chunker": {"algorithm": "fastcdc-2020", "min_size": 1024, "avg_size": 4096, "max_size": 16384,
                        "normalization": 1, "seed": 0 if encryption == "none" else 12345},
            "compression": {"codec": "zstd", "level": 3},
            "pack_size": 65536,
        }
    )


def build_golden(root: Path, digest, seal, seal_role) -> tuple[bytes, bytes, bytes]:
    """Write a repository with one snapshot; return (chunk 1, chunk 2, leaf tree plaintext)."""
    first = b'{"prompt": "golden", "chosen": "a", "rejected": "b"}\n' * 3
    second = bytes(range(256)) * 2
    leaf, root_tree, _content = golden_tree(digest, first, second)
    data_id, data_pack, data_arrays = build_pack(
        "data",
        [(digest(first), seal(first, True), len(first)), (digest(second), seal(second, False), len(second)),
         (digest(b""), seal(b"", False), 0)],
        lambda header: seal_role(header, b"pack-header"),
    )
    tree_id, tree_pack, tree_arrays = build_pack(
        "tree",
        [(digest(leaf), seal(leaf, True), len(leaf)), (digest(root_tree), seal(root_tree, False), len(root_tree))],
        lambda header: seal_role(header, b"pack-header"),
    )
    write(root, f"data/{data_id[:2]}/{data_id}", data_pack)
    write(root, f"tree/{tree_id[:2]}/{tree_id}", tree_pack)
    index_body = {
        "version": 1,
        "packs": [
            {"id": bytes.fromhex(data_id), "type": "data", "size": len(data_pack), "objects": data_arrays},
            {"id": bytes.fromhex(tree_id), "type": "tree", "size": len(tree_pack), "objects": tree_arrays},
        ],
    }
    sealed_index = seal_role(msgpack.packb(index_body), b"index")
    write(root, f"index/{blake3.blake3(sealed_index).hexdigest()}", sealed_index)
    plaintext = golden_manifest(digest(root_tree))
    write(root, f"snapshots/{digest(plaintext).hex()}", seal(plaintext, False))
    return first, second, leaf


def check_golden(opened: Repository, first: bytes, second: bytes, leaf: bytes, tmp_path: Path) -> None:
    snapshot = resolve_snapshot(opened, "latest")
    file_tree = load_tree(opened, opened.hasher.digest(leaf))
    target = tmp_path / "restored"

    restore_snapshot(opened, snapshot, str(target), "/golden", restore_owner=False)

    assert snapshot.hostname == "golden-host"
    assert file_tree.encode() == leaf
    assert opened.get(opened.hasher.digest(first)) == first
    assert (target / "prefs.jsonl").read_bytes() == first + second
    assert (target / os.fsdecode(b"b-\xff")).read_bytes() == b""
    assert os.readlink(target / "z-link") == "prefs.jsonl"


def test_golden_unencrypted_repository(tmp_path):
    root = tmp_path / "golden"

    def digest(data: bytes) -> bytes:
        return blake3.blake3(data).digest()

    first, second, leaf = build_golden(root, digest, plain_seal, lambda payload, _role: plain_seal(payload, True))
    write(root, "config", plain_seal(golden_config("none")))

    opened = Repository.open(str(root))

    assert not opened.encrypted
    check_golden(opened, first, second, leaf, tmp_path)


def test_golden_encrypted_repository(tmp_path):
    root = tmp_path / "golden"
    encryption_key, hash_key = os.urandom(32), os.urandom(32)
    salt = os.urandom(32)
    wrapping_key = hashlib.scrypt(PASSWORD, salt=salt, n=1024, r=8, p=1, dklen=32)
    nonce = os.urandom(12)
    master = msgpack.packb({"encryption_key": encryption_key, "hash_key": hash_key})
    key_file = {
        "version": 1, "created": "2026-01-02T03:04:05+00:00", "host": "golden-host", "user": "golden-user",
        "kdf": "scrypt", "n": 1024, "r": 8, "p": 1, "salt": salt,
        "data": nonce + AESGCM(wrapping_key).encrypt(nonce, master, b"casbak-key-v1"),
    }
    write(root, "keys/" + "c" * 32, msgpack.packb(key_file))

    def digest(data: bytes) -> bytes:
        return blake3.blake3(data, key=hash_key).digest()

    first, second, leaf = build_golden(
        root, digest, lambda payload, _compress: aes_seal(encryption_key, payload), lambda payload, role: aes_seal(encryption_key, payload, role)
    )
    write(root, "config", aes_seal(encryption_key, golden_config("aes-256-gcm"), b"config"))

    opened = Repository.open(str(root), PASSWORD)

    assert opened.encrypted
    assert opened.config.chunker.seed == 12345
    check_golden(opened, first, second, leaf, tmp_path)


def test_hand_reader_parses_casbak_packs(memory_repository, tmp_path):
    # The reverse direction: read casbak's own output with the rules of the page only.
    source = tmp_path / "source"
    source.mkdir()
    (source / "data.bin").write_bytes(os.urandom(40_000))
    create_snapshot(memory_repository, [str(source)])
    backend = memory_repository.backend
    objects_seen = 0
    for name in backend.list("data") + backend.list("tree"):
        data = backend.read(name)
        assert blake3.blake3(data).hexdigest() == name.rsplit("/", 1)[1]
        (header_length,) = struct.unpack("<I", data[-4:])
        sealed_header = data[-4 - header_length : -4]
        assert sealed_header[:3] in (b"\x01\x00\x00", b"\x01\x01\x00")
        header = msgpack.unpackb(hand_open(sealed_header))
        assert header["type"] == name.split("/")[0]
        for digest, offset, length, raw_length in header["objects"]:
            plaintext = hand_open(data[offset : offset + length])
            assert len(plaintext) == raw_length
            assert blake3.blake3(plaintext).digest() == digest
            objects_seen += 1
    assert objects_seen >= 3


def hand_open(sealed: bytes) -> bytes:
    version, codec, cipher = sealed[0], sealed[1], sealed[2]
    assert (version, cipher) == (1, 0)
    if codec == 0:
        return sealed[3:]
    if codec == 2:
        return hand_join_planes(sealed[3:])
    return zstandard.ZstdDecompressor().decompress(sealed[3:], max_output_size=1 << 30)


def hand_join_planes(payload: bytes) -> bytes:
    # Codec 2 as the page describes it: width, plane lengths, then one frame per plane.
    width = payload[0]
    lengths = struct.unpack_from(f"<{width}I", payload, 1)
    offset = 1 + 4 * width
    planes = []
    for length in lengths:
        planes.append(zstandard.ZstdDecompressor().decompress(payload[offset : offset + length]))
        offset += length
    size = sum(map(len, planes))
    out = bytearray(size)
    for k, plane in enumerate(planes):
        assert len(plane) == -(-(size - k) // width)
        out[k::width] = plane
    return bytes(out)


def test_byte_plane_payload_follows_page():
    values = [((n * 7919) % 2001 - 1000) / 50_000 for n in range(60_000)]
    weights = struct.pack(f"<{len(values)}e", *values)
    sealed = objects.Sealer(None, 3, byte_planes=True).seal(weights)

    assert sealed[1] == objects.CODEC_ZSTD_PLANES
    assert hand_open(sealed) == weights
