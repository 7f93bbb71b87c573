"""`casbak copy`: S3 and local repositories, other keys and chunkers, repeats, damaged sources, the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from casbak.audit.signing import SigningKey, fingerprint_of, publish_public_key
from casbak.catalog import load_manifests, lookup_path
from casbak.errors import CorruptObject, IntegrityError, UsageError
from casbak.manifest import COPIED_MANIFEST_VERSION, Manifest
from casbak.operations.copy import copy_snapshots
from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import create_snapshot
from casbak.operations.verify import VerifyOptions, verify_repository
from casbak.store.packs import pack_path
from casbak.store.repository import Repository
from tests.cli.test_snapshot_cli import run_casbak, run_json
from tests.conftest import FAST_KDF, PASSWORD, make_tree, read_tree, small_config
from tests.servers import counting_proxy, moto_server  # noqa: F401 - fixtures

OTHER_PASSWORD = b"a different password for the target"
READ_DATA = VerifyOptions(read_data=True)


def source_spec() -> dict:
    shared = os.urandom(40_000)
    return {
        "prefs.jsonl": os.urandom(60_000),
        "copy-of-prefs.jsonl": shared,
        "same-again.jsonl": shared,
        "empty.txt": b"",
        "configs": {"dpo.yaml": b"beta: 0.1\n", "nested": {"notes.md": b"# run 7\n" * 500}},
        "link": ("symlink", "configs/dpo.yaml"),
    }


def new_signing_key() -> SigningKey:
    private_key = Ed25519PrivateKey.generate()
    return SigningKey(private_key, fingerprint_of(private_key.public_key()))


def init_local(path: Path, password: bytes | None = PASSWORD, encrypted: bool = True) -> Repository:
    Repository.init(str(path), password, config=small_config(encrypted=encrypted), kdf=FAST_KDF)
    return Repository.open(str(path), password)


def reopen(repository: Repository, password: bytes | None, options: dict | None = None) -> Repository:
    """Open the repository again, so no index or cache state survives from the copy."""
    return Repository.open(repository.backend.url, password, options)


def assert_verified_and_restorable(repository: Repository, source: Path, spec: dict, target: Path) -> None:
    result = verify_repository(repository, READ_DATA)
    assert result.ok, [finding.to_dict() for finding in result.errors]
    newest = load_manifests(repository)[-1]
    restore_snapshot(repository, newest, str(target), str(source))
    assert read_tree(target) == spec


def stored_files(repository: Repository) -> set[str]:
    return {name for prefix in ("data", "tree", "index", "snapshots") for name in repository.backend.list(prefix)}


@pytest.fixture
def filled_source(tmp_path):
    """An encrypted local repository with two snapshots of one changing directory."""
    source = tmp_path / "source"
    spec = source_spec()
    make_tree(source, spec)
    repository = init_local(tmp_path / "a")
    first = create_snapshot(repository, [str(source)], tags=["nightly"]).manifest
    (source / "added.bin").write_bytes(os.urandom(30_000))
    spec["added.bin"] = (source / "added.bin").read_bytes()
    second = create_snapshot(repository, [str(source)], tags=["nightly", "weekly"]).manifest
    return {"repository": repository, "source": source, "spec": spec, "first": first, "second": second}


# Between local repositories


def test_copy_other_password_and_chunker_seed(filled_source, tmp_path):
    source_repository = filled_source["repository"]
    target = init_local(tmp_path / "b", OTHER_PASSWORD)
    assert target.config.chunker.seed != source_repository.config.chunker.seed

    result = copy_snapshots(source_repository, target)

    reopened = reopen(target, OTHER_PASSWORD)
    copies = load_manifests(reopened)
    originals = [filled_source["first"], filled_source["second"]]
    assert [c.copied_from for c in copies] == [o.id for o in originals]
    assert [s.target_id for s in result.snapshots] == [c.id for c in copies]
    for original, copy in zip(originals, copies):
        assert copy.time_ns == original.time_ns
        assert copy.hostname == original.hostname
        assert copy.sources == original.sources
        assert copy.tags == original.tags
        assert copy.tree != original.tree
    assert copies[0].previous is None
    assert copies[1].previous == copies[0].id
    assert copies[1].parent == copies[0].id
    # The second snapshot shares all but one file with the first, so few chunks are new.
    assert result.snapshots[1].stats.chunks_new < result.snapshots[0].stats.chunks_new
    assert_verified_and_restorable(reopened, filled_source["source"], filled_source["spec"], tmp_path / "restored")
    restore_snapshot(reopened, copies[0], str(tmp_path / "first"), str(filled_source["source"]))
    first_spec = {k: v for k, v in filled_source["spec"].items() if k != "added.bin"}
    assert read_tree(tmp_path / "first") == first_spec


def test_copy_rehashes_file_content(filled_source, tmp_path):
    target = init_local(tmp_path / "b", OTHER_PASSWORD)
    copy_snapshots(filled_source["repository"], target)
    reopened = reopen(target, OTHER_PASSWORD)
    copy = load_manifests(reopened)[-1]
    path = str(filled_source["source"] / "prefs.jsonl")
    entry = lookup_path(reopened, copy.tree, path)
    original = lookup_path(filled_source["repository"], filled_source["second"].tree, path)

    content = b"".join(reopened.iter_objects(entry.chunks))

    assert entry.content == reopened.hasher.digest(content)
    assert entry.content != original.content
    assert entry.size == original.size == len(content)


def test_copy_twice_transfers_nothing(filled_source, tmp_path):
    target = init_local(tmp_path / "b", OTHER_PASSWORD)
    copy_snapshots(filled_source["repository"], target)
    before = stored_files(target)

    second = copy_snapshots(filled_source["repository"], reopen(target, OTHER_PASSWORD))

    assert [s.skipped for s in second.snapshots] == [True, True]
    assert second.copied == []
    assert stored_files(target) == before
    assert target.backend.list("locks") == []


def test_copy_back_after_round_trip(filled_source, tmp_path):
    source_repository = filled_source["repository"]
    target = init_local(tmp_path / "b", OTHER_PASSWORD)
    copy_snapshots(source_repository, target)
    before = stored_files(source_repository)

    back = copy_snapshots(reopen(target, OTHER_PASSWORD), reopen(source_repository, PASSWORD))

    originals = [filled_source["first"].id, filled_source["second"].id]
    assert [s.skipped for s in back.snapshots] == [True, True]
    assert [s.target_id for s in back.snapshots] == originals
    assert stored_files(source_repository) == before


def test_copy_selected_snapshot_then_rest(filled_source, tmp_path):
    target = init_local(tmp_path / "b", OTHER_PASSWORD)
    newest = filled_source["second"]

    first_run = copy_snapshots(filled_source["repository"], target, [newest.id[:10]])
    second_run = copy_snapshots(filled_source["repository"], reopen(target, OTHER_PASSWORD))

    assert [s.source_id for s in first_run.snapshots] == [newest.id]
    assert [(s.source_id, s.skipped) for s in second_run.snapshots] == [
        (filled_source["first"].id, False),
        (newest.id, True),
    ]
    copies = {m.copied_from: m for m in load_manifests(reopen(target, OTHER_PASSWORD))}
    # The newest copy was written first, so the older copy's chain link points at it.
    assert copies[filled_source["first"].id].previous == copies[newest.id].id
    assert copies[newest.id].parent is None


def test_copy_keeps_target_chain(filled_source, tmp_path):
    target = init_local(tmp_path / "b", OTHER_PASSWORD)
    other = tmp_path / "other"
    make_tree(other, {"own.txt": b"the target's own snapshot\n"})
    own = create_snapshot(target, [str(other)]).manifest

    copy_snapshots(filled_source["repository"], target, [filled_source["first"].id])

    copies = [m for m in load_manifests(reopen(target, OTHER_PASSWORD)) if m.copied_from]
    assert len(copies) == 1
    assert copies[0].previous == own.id
    assert verify_repository(reopen(target, OTHER_PASSWORD)).ok


def test_copy_unencrypted_to_encrypted(tmp_path):
    source = tmp_path / "source"
    spec = source_spec()
    make_tree(source, spec)
    plain = init_local(tmp_path / "plain", None, encrypted=False)
    original = create_snapshot(plain, [str(source)]).manifest
    target = init_local(tmp_path / "encrypted", OTHER_PASSWORD)

    copy_snapshots(plain, target)

    reopened = reopen(target, OTHER_PASSWORD)
    copy = load_manifests(reopened)[0]
    assert copy.copied_from == original.id
    assert copy.tree != original.tree
    assert_verified_and_restorable(reopened, source, spec, tmp_path / "restored")


def test_copy_between_unencrypted_reuses_digests(tmp_path):
    source = tmp_path / "source"
    spec = source_spec()
    make_tree(source, spec)
    first = init_local(tmp_path / "one", None, encrypted=False)
    second = init_local(tmp_path / "two", None, encrypted=False)
    original = create_snapshot(first, [str(source)]).manifest

    copy_snapshots(first, second)

    copy = load_manifests(reopen(second, None))[0]
    assert copy.tree == original.tree
    assert_verified_and_restorable(reopen(second, None), source, spec, tmp_path / "restored")


def test_copy_deeply_nested_tree(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    # 600 levels: deeper than a recursive walk of two frames per level can go under the
    # default limit of 1000. Path.mkdir(parents=True) and shutil.rmtree recurse too, so
    # the levels are made and removed one at a time.
    levels = [source]
    for _level in range(600):
        levels.append(levels[-1] / "d")
        levels[-1].mkdir()
    leaf = levels[-1] / "leaf.txt"
    leaf.write_bytes(b"at the bottom\n")
    try:
        plain = init_local(tmp_path / "plain", None, encrypted=False)
        create_snapshot(plain, [str(source)])
        target = init_local(tmp_path / "b", OTHER_PASSWORD)

        result = copy_snapshots(plain, target)

        reopened = reopen(target, OTHER_PASSWORD)
        entry = lookup_path(reopened, load_manifests(reopened)[0].tree, str(leaf))
        assert result.snapshots[0].stats.directories >= 600
        assert b"".join(reopened.iter_objects(entry.chunks)) == b"at the bottom\n"
    finally:
        leaf.unlink()
        for level in reversed(levels):
            level.rmdir()


def test_copy_into_same_repository_rejected(filled_source):
    repository = filled_source["repository"]
    with pytest.raises(UsageError, match="same repository"):
        copy_snapshots(repository, reopen(repository, PASSWORD))


def test_damaged_source_writes_no_manifest(filled_source, tmp_path):
    repository = filled_source["repository"]
    entry = lookup_path(repository, filled_source["first"].tree, str(filled_source["source"] / "prefs.jsonl"))
    location = repository.index.lookup(entry.chunks[0])
    pack = Path(repository.backend.root) / pack_path(location.kind, location.pack_id)
    content = bytearray(pack.read_bytes())
    content[location.offset + location.length // 2] ^= 0x01
    pack.write_bytes(bytes(content))
    target = init_local(tmp_path / "b", OTHER_PASSWORD)

    with pytest.raises(IntegrityError, match=location.pack_id[:12]):
        copy_snapshots(reopen(repository, PASSWORD), target)

    assert target.list_snapshot_ids() == []
    assert target.backend.list("locks") == []
    assert repository.backend.list("locks") == []
    assert verify_repository(reopen(target, OTHER_PASSWORD)).ok


def test_copy_signs_with_target_key(tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"prefs.jsonl": b'{"chosen": "a"}\n' * 300})
    source_key, target_key = new_signing_key(), new_signing_key()
    source_repository = init_local(tmp_path / "a")
    publish_public_key(source_repository, source_key.public_key)
    original = create_snapshot(source_repository, [str(source)], signing_key=source_key).manifest
    target = init_local(tmp_path / "b", OTHER_PASSWORD)
    publish_public_key(target, target_key.public_key)

    copy_snapshots(source_repository, target, signing_key=target_key)

    copy = load_manifests(reopen(target, OTHER_PASSWORD))[0]
    result = verify_repository(reopen(target, OTHER_PASSWORD), VerifyOptions(ledger=True))
    assert original.signer == source_key.fingerprint
    assert copy.signer == target_key.fingerprint
    assert copy.signature != original.signature
    assert result.ok, [finding.to_dict() for finding in result.errors]


# Manifests of copies


def test_copied_manifest_version_checked():
    copy = Manifest(1, "host", "user", ["/src"], b"\x01" * 32, "0", copied_from="cd" * 32)
    body = msgpack.unpackb(copy.encode())
    without_source = {k: v for k, v in body.items() if k != "copied_from"}
    downgraded = {**body, "version": 1}

    assert Manifest.decode(copy.encode(), "ab" * 32).copied_from == "cd" * 32
    with pytest.raises(CorruptObject, match="copied_from"):
        Manifest.decode(msgpack.packb(without_source), "ab" * 32)
    with pytest.raises(CorruptObject, match="copied_from"):
        Manifest.decode(msgpack.packb(downgraded), "ab" * 32)
    assert body["version"] == COPIED_MANIFEST_VERSION


# S3


def init_s3(moto_server, password: bytes) -> tuple[Repository, dict]:
    url = f"s3://{moto_server.new_bucket()}/casbak/copy"
    options = {"endpoint_url": moto_server.endpoint, "skip_instance_cache": True}
    Repository.init(url, password, config=small_config(), kdf=FAST_KDF, options=options)
    return Repository.open(url, password, options), options


def test_copy_s3_to_local(moto_server, tmp_path):
    source = tmp_path / "source"
    spec = source_spec()
    make_tree(source, spec)
    s3_repository, options = init_s3(moto_server, PASSWORD)
    create_snapshot(s3_repository, [str(source)])
    local = init_local(tmp_path / "local", OTHER_PASSWORD)

    result = copy_snapshots(reopen(s3_repository, PASSWORD, options), local)

    assert len(result.copied) == 1
    assert_verified_and_restorable(reopen(local, OTHER_PASSWORD), source, spec, tmp_path / "restored")


def test_copy_local_to_s3(moto_server, tmp_path):
    source = tmp_path / "source"
    spec = source_spec()
    make_tree(source, spec)
    local = init_local(tmp_path / "local")
    create_snapshot(local, [str(source)])
    s3_repository, options = init_s3(moto_server, OTHER_PASSWORD)

    first = copy_snapshots(local, s3_repository)
    uploaded = stored_files(s3_repository)
    second = copy_snapshots(local, reopen(s3_repository, OTHER_PASSWORD, options))

    assert len(first.copied) == 1
    assert second.copied == []
    assert stored_files(s3_repository) == uploaded
    reopened = reopen(s3_repository, OTHER_PASSWORD, options)
    assert_verified_and_restorable(reopened, source, spec, tmp_path / "restored")


def test_copy_reads_back_from_s3(moto_server, counting_proxy, tmp_path):
    source = tmp_path / "source"
    make_tree(source, source_spec())
    local = init_local(tmp_path / "local")
    create_snapshot(local, [str(source)])
    url = f"s3://{moto_server.new_bucket()}/casbak/proxied"
    options = {"endpoint_url": counting_proxy.endpoint, "skip_instance_cache": True}
    Repository.init(url, OTHER_PASSWORD, config=small_config(), kdf=FAST_KDF, options=options)
    target = Repository.open(url, OTHER_PASSWORD, options)
    counting_proxy.log.clear()

    result = copy_snapshots(local, target)

    # Uploads fill the local cache, so these reads show the check went to the store itself.
    assert counting_proxy.log.count("GET", "/index/") >= 1
    assert counting_proxy.log.count("GET", "/tree/") >= 1
    assert counting_proxy.log.count("GET", "/data/") >= 1
    assert result.snapshots[0].stats.objects_verified == (
        result.snapshots[0].stats.chunks_new + result.snapshots[0].stats.trees_new
    )


# Command line


def test_cli_copy_with_source_password(filled_source, tmp_path):
    target_path = tmp_path / "b"
    init_local(target_path, OTHER_PASSWORD)
    password_file = tmp_path / "source-password"
    password_file.write_bytes(PASSWORD + b"\n")
    common = [
        "copy", "--from-repo", str(filled_source["repository"].backend.root),
        "--from-password-file", str(password_file), "--to-repo", str(target_path),
    ]
    environment = {"CASBAK_PASSWORD": OTHER_PASSWORD.decode()}

    first = run_json(*common, env=environment)
    second = run_casbak(*common, env=environment)

    assert [s["skipped"] for s in first["snapshots"]] == [False, False]
    assert all(s["stats"]["objects_verified"] > 0 for s in first["snapshots"])
    assert second.returncode == 0, second.stderr.decode()
    assert b"copied 0 of 2 snapshots" in second.stdout


def test_cli_copy_without_source_password(filled_source, tmp_path):
    target_path = tmp_path / "b"
    init_local(target_path, OTHER_PASSWORD)

    result = run_casbak(
        "copy", "--from-repo", str(filled_source["repository"].backend.root), "--to-repo", str(target_path),
        env={"CASBAK_PASSWORD": OTHER_PASSWORD.decode()},
    )

    assert result.returncode == 1
    assert b"CASBAK_FROM_PASSWORD" in result.stderr
    assert Repository.open(str(target_path), OTHER_PASSWORD).list_snapshot_ids() == []
