"""`casbak verify`: clean repositories, each kind of damage, subsets, the restore drill, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import blake3
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from casbak.catalog import load_manifest, lookup_path
from casbak.cli.main import app, hoist_global_options
from casbak.errors import EXIT_INTEGRITY, RepositoryLocked, SnapshotNotFound, UsageError
from casbak.manifest import Manifest
from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import create_snapshot
from casbak.operations.verify import VerifyOptions, VerifyResult, parse_subset, verify_repository
from casbak.operations.verify.findings import (
    CHAIN_BROKEN,
    FILE_MISMATCH,
    FINDING_KEYS,
    FORGET_RECORD_DAMAGED,
    INDEX_DAMAGED,
    MANIFEST_ID_MISMATCH,
    OBJECT_DAMAGED,
    OBJECT_MISSING,
    PACK_HASH_MISMATCH,
    PACK_MISSING,
    PACK_SIZE_MISMATCH,
    PACK_UNREFERENCED,
    RESTORE_FAILED,
    TREE_DAMAGED,
)
from casbak.store.index import decode_index
from casbak.store.locks import EXCLUSIVE, RepositoryLock
from casbak.store.packs import pack_path
from casbak.store.repository import Repository
from tests.conftest import FAST_KDF, PASSWORD, make_tree, read_tree, small_config

READ_DATA = VerifyOptions(read_data=True)


@pytest.fixture
def two_sources(repository, tmp_path):
    """Two snapshots of two different source trees, so their data lies in different packs."""
    first = tmp_path / "first"
    second = tmp_path / "second"
    first_spec = {"a.bin": os.urandom(90_000), "sub": {"b.bin": os.urandom(30_000), "c.txt": b"config\n"}}
    second_spec = {"d.bin": os.urandom(50_000), "e.txt": b"notes\n"}
    make_tree(first, first_spec)
    make_tree(second, second_spec)
    snapshot_a = create_snapshot(repository, [str(first)]).manifest
    snapshot_b = create_snapshot(repository, [str(second)]).manifest
    return {
        "repository": repository,
        "a": snapshot_a,
        "b": snapshot_b,
        "first": first,
        "second": second,
        "first_spec": first_spec,
        "second_spec": second_spec,
    }


def reopen(repository: Repository) -> Repository:
    """Open the repository again, so no index state survives from before the damage."""
    return Repository.open(repository.backend.url, PASSWORD)


def chunk_location(repository: Repository, manifest: Manifest, path: Path):
    entry = lookup_path(repository, manifest.tree, str(path))
    location = repository.index.lookup(entry.chunks[0])
    assert location is not None
    return entry.chunks[0], location


def pack_file(repository: Repository, kind: str, pack_id: str) -> Path:
    return Path(repository.backend.root) / pack_path(kind, pack_id)


def only(result: VerifyResult, kind: str):
    found = [finding for finding in result.errors if finding.kind == kind]
    assert len(found) == 1, [f.to_dict() for f in result.errors]
    return found[0]


def affected_pairs(finding) -> set[tuple[str, str]]:
    return {(item.snapshot, item.path) for item in finding.affected}


def assert_restores(repository: Repository, manifest: Manifest, source: Path, spec: dict, target: Path) -> None:
    restore_snapshot(reopen(repository), manifest, str(target), str(source))
    assert read_tree(target) == spec


# Clean repositories


def test_clean_repository_verifies_clean(two_sources):
    repository = reopen(two_sources["repository"])

    result = verify_repository(repository)

    assert result.ok, [f.to_dict() for f in result.errors]
    assert result.warnings == []
    assert result.stats.snapshots == 2
    assert result.stats.packs_indexed == result.stats.packs_in_backend
    assert result.stats.trees_checked > 0
    assert result.stats.packs_read == 0


def test_clean_repository_read_data_clean(two_sources):
    repository = reopen(two_sources["repository"])

    result = verify_repository(repository, READ_DATA)

    assert result.ok, [f.to_dict() for f in result.errors]
    assert result.stats.packs_read == result.stats.packs_indexed
    assert result.stats.objects_read == result.stats.objects_indexed


def test_subsets_cover_every_pack_once(two_sources):
    repository = reopen(two_sources["repository"])
    pack_ids = [pack_id for pack_id, _kind, _size in repository.index.packs()]
    assert len(pack_ids) >= 3

    groups = [parse_subset(f"{n}/3").select(pack_ids) for n in (1, 2, 3)]
    results = [verify_repository(repository, VerifyOptions(subset=parse_subset(f"{n}/3"))) for n in (1, 2, 3)]

    chosen = [pack_id for group in groups for pack_id in group]
    assert sorted(chosen) == sorted(pack_ids)
    assert all(result.ok for result in results)
    assert [result.stats.packs_read for result in results] == [len(group) for group in groups]


def test_percent_subset_reads_rounded_up_share(two_sources):
    repository = reopen(two_sources["repository"])
    total = len(repository.index.packs())

    result = verify_repository(repository, VerifyOptions(subset=parse_subset("10%")))

    assert result.ok
    assert result.stats.packs_read == -(-total // 10)


@pytest.mark.parametrize("text", ["0/3", "4/3", "3", "0%", "101%", "a/b", ""])
def test_invalid_subset_rejected(text):
    with pytest.raises(UsageError):
        parse_subset(text)


# Damage to packs


def test_flipped_bit_in_data_pack(two_sources):
    repository = two_sources["repository"]
    path = two_sources["first"] / "a.bin"
    digest, location = chunk_location(repository, two_sources["a"], path)
    target = pack_file(repository, "data", location.pack_id)
    content = bytearray(target.read_bytes())
    content[location.offset + location.length // 2] ^= 0x01
    target.write_bytes(bytes(content))

    structure_only = verify_repository(reopen(repository))
    result = verify_repository(reopen(repository), READ_DATA)

    assert structure_only.ok
    assert only(result, PACK_HASH_MISMATCH).pack == location.pack_id
    damaged = only(result, OBJECT_DAMAGED)
    assert damaged.object == digest.hex()
    assert damaged.pack == location.pack_id
    assert (two_sources["a"].id, str(path)) in affected_pairs(damaged)
    assert all(item.snapshot == two_sources["a"].id for item in damaged.affected)
    assert_restores(repository, two_sources["b"], two_sources["second"], two_sources["second_spec"], two_sources["first"].parent / "out")


def test_damaged_object_version_byte(two_sources, tmp_path):
    """A damaged format byte raises UnsupportedFormat, which verify must report, not raise."""
    repository = two_sources["repository"]
    digest, location = chunk_location(repository, two_sources["a"], two_sources["first"] / "a.bin")
    target = pack_file(repository, "data", location.pack_id)
    content = bytearray(target.read_bytes())
    content[location.offset] ^= 0x01
    target.write_bytes(bytes(content))

    options = VerifyOptions(read_data=True, restore_drill=two_sources["a"].id, drill_dir=str(tmp_path))
    result = verify_repository(reopen(repository), options)

    assert only(result, OBJECT_DAMAGED).object == digest.hex()
    assert only(result, RESTORE_FAILED).snapshot == two_sources["a"].id


def test_flipped_bit_in_tree_pack(two_sources):
    repository = two_sources["repository"]
    directory = two_sources["first"] / "sub"
    subtree = lookup_path(repository, two_sources["a"].tree, str(directory)).subtree
    location = repository.index.lookup(subtree)
    target = pack_file(repository, "tree", location.pack_id)
    content = bytearray(target.read_bytes())
    content[location.offset + location.length // 2] ^= 0x04
    target.write_bytes(bytes(content))

    result = verify_repository(reopen(repository))

    finding = only(result, TREE_DAMAGED)
    assert finding.object == subtree.hex()
    assert finding.pack == location.pack_id
    assert affected_pairs(finding) == {(two_sources["a"].id, str(directory))}
    assert_restores(repository, two_sources["b"], two_sources["second"], two_sources["second_spec"], two_sources["first"].parent / "out")


def test_truncated_pack(two_sources):
    repository = two_sources["repository"]
    path = two_sources["first"] / "sub" / "b.bin"
    _digest, location = chunk_location(repository, two_sources["a"], path)
    target = pack_file(repository, "data", location.pack_id)
    original_size = target.stat().st_size
    with open(target, "r+b") as handle:
        handle.truncate(location.offset + 10)

    result = verify_repository(reopen(repository))

    finding = only(result, PACK_SIZE_MISMATCH)
    assert finding.pack == location.pack_id
    assert str(original_size) in finding.message
    assert (two_sources["a"].id, str(path)) in affected_pairs(finding)
    assert_restores(repository, two_sources["b"], two_sources["second"], two_sources["second_spec"], two_sources["first"].parent / "out")


def test_deleted_pack(two_sources):
    repository = two_sources["repository"]
    path = two_sources["first"] / "a.bin"
    _digest, location = chunk_location(repository, two_sources["a"], path)
    pack_file(repository, "data", location.pack_id).unlink()

    result = verify_repository(reopen(repository), READ_DATA)

    finding = only(result, PACK_MISSING)
    assert finding.pack == location.pack_id
    assert (two_sources["a"].id, str(path)) in affected_pairs(finding)
    assert all(item.snapshot == two_sources["a"].id for item in finding.affected)
    assert_restores(repository, two_sources["b"], two_sources["second"], two_sources["second_spec"], two_sources["first"].parent / "out")


def test_deleted_index_file(two_sources):
    repository = two_sources["repository"]
    _digest, location = chunk_location(repository, two_sources["a"], two_sources["first"] / "a.bin")
    index_names = repository.backend.list("index")

    # The index file that names the pack of a.bin: find it by decoding each one.
    def names_pack(name: str) -> bool:
        packs = decode_index(name.split("/")[1], repository.backend.read(name), repository.sealer)
        return any(pack.pack_id == location.pack_id for pack in packs)

    doomed = [name for name in index_names if names_pack(name)]
    assert len(doomed) == 1
    repository.backend.delete(doomed[0])

    result = verify_repository(reopen(repository))

    assert not result.ok
    missing = [finding for finding in result.errors if finding.kind == OBJECT_MISSING]
    assert missing
    assert {item.snapshot for finding in missing for item in finding.affected} == {two_sources["a"].id}
    unreferenced = {finding.pack for finding in result.warnings if finding.kind == PACK_UNREFERENCED}
    assert location.pack_id in unreferenced
    assert_restores(repository, two_sources["b"], two_sources["second"], two_sources["second_spec"], two_sources["first"].parent / "out")


def test_damaged_index_file_named(two_sources):
    repository = two_sources["repository"]
    name = repository.backend.list("index")[0]
    target = Path(repository.backend.root) / name
    content = bytearray(target.read_bytes())
    content[-1] ^= 0xFF
    target.write_bytes(bytes(content))

    result = verify_repository(reopen(repository))

    assert only(result, INDEX_DAMAGED).index == name.split("/")[1]
    assert result.stats.index_files_damaged == 1


# Damage to manifests and the hash chain


@pytest.fixture
def three_snapshots(repository, tmp_path):
    manifests = []
    sources = []
    for number in range(3):
        source = tmp_path / f"day{number}"
        make_tree(source, {"data.bin": os.urandom(5_000), "note.txt": f"day {number}\n".encode()})
        manifests.append(create_snapshot(repository, [str(source)]).manifest)
        sources.append(source)
    assert manifests[1].previous == manifests[0].id
    assert manifests[2].previous == manifests[1].id
    return repository, manifests, sources


def test_edited_manifest_reported_by_name(three_snapshots):
    repository, manifests, _sources = three_snapshots
    middle = load_manifest(repository, manifests[1].id)
    middle.hostname = "somewhere-else"
    repository.backend.write(f"snapshots/{manifests[1].id}", repository.sealer.seal(middle.encode()))

    result = verify_repository(reopen(repository))

    assert only(result, MANIFEST_ID_MISMATCH).snapshot == manifests[1].id
    link = only(result, CHAIN_BROKEN)
    assert link.snapshot == manifests[2].id
    assert link.previous == manifests[1].id
    assert "damaged or edited" in link.message


def test_deleted_middle_manifest_breaks_chain(three_snapshots, tmp_path):
    repository, manifests, sources = three_snapshots
    repository.backend.delete(f"snapshots/{manifests[1].id}")

    result = verify_repository(reopen(repository))

    link = only(result, CHAIN_BROKEN)
    assert link.snapshot == manifests[2].id
    assert link.previous == manifests[1].id
    assert "missing" in link.message
    assert len(result.errors) == 1
    target = tmp_path / "out"
    restore_snapshot(reopen(repository), manifests[0], str(target), str(sources[0]))
    assert (target / "note.txt").read_bytes() == b"day 0\n"


def test_forget_record_excuses_missing_link(three_snapshots):
    repository, manifests, _sources = three_snapshots
    record = {
        "version": 1,
        "time_ns": manifests[2].time_ns + 1,
        "snapshots": [{"id": manifests[1].id, "previous": manifests[0].id, "time_ns": manifests[1].time_ns}],
        "reason": "test",
    }
    sealed = repository.sealer.seal(msgpack.packb(record))
    repository.backend.write(f"forgotten/{blake3.blake3(sealed).hexdigest()}", sealed)
    repository.backend.delete(f"snapshots/{manifests[1].id}")

    result = verify_repository(reopen(repository))

    assert result.ok, [f.to_dict() for f in result.errors]
    assert result.stats.forgotten_snapshots == 1


def test_damaged_forget_record_excuses_nothing(three_snapshots):
    repository, manifests, _sources = three_snapshots
    garbage = repository.sealer.seal(msgpack.packb({"version": 1, "snapshots": "not a list"}))
    record_id = blake3.blake3(garbage).hexdigest()
    repository.backend.write(f"forgotten/{record_id}", garbage)
    repository.backend.delete(f"snapshots/{manifests[1].id}")

    result = verify_repository(reopen(repository))

    assert only(result, FORGET_RECORD_DAMAGED).object == record_id
    assert only(result, CHAIN_BROKEN).previous == manifests[1].id


def test_json_findings_share_one_schema(three_snapshots):
    repository, manifests, _sources = three_snapshots
    repository.backend.delete(f"snapshots/{manifests[1].id}")

    report = verify_repository(reopen(repository)).to_dict()

    assert report["ok"] is False
    assert set(report) == {"ok", "errors", "warnings", "stats", "drill", "first_broken_link"}
    assert report["first_broken_link"] is None
    for error in report["errors"]:
        assert set(error) == set(FINDING_KEYS) | {"affected_total"}


# Restore drill


def test_restore_drill_passes_on_clean_repository(two_sources, tmp_path):
    drills = tmp_path / "drills"
    drills.mkdir()
    repository = reopen(two_sources["repository"])

    result = verify_repository(repository, VerifyOptions(restore_drill="latest", drill_dir=str(drills)))

    assert result.ok, [f.to_dict() for f in result.errors]
    assert result.drill is not None
    assert result.drill.snapshot == two_sources["b"].id
    assert result.drill.files_checked == 2
    assert result.drill.bytes_checked == sum(len(value) for value in two_sources["second_spec"].values())
    assert list(drills.iterdir()) == []


def test_restore_drill_fails_after_chunk_damage(two_sources, tmp_path):
    drills = tmp_path / "drills"
    drills.mkdir()
    repository = two_sources["repository"]
    _digest, location = chunk_location(repository, two_sources["a"], two_sources["first"] / "a.bin")
    target = pack_file(repository, "data", location.pack_id)
    content = bytearray(target.read_bytes())
    content[location.offset + 20] ^= 0x80
    target.write_bytes(bytes(content))

    result = verify_repository(
        reopen(repository), VerifyOptions(restore_drill=two_sources["a"].id, drill_dir=str(drills))
    )

    assert not result.ok
    assert only(result, RESTORE_FAILED).snapshot == two_sources["a"].id
    assert list(drills.iterdir()) == []


def test_restore_drill_unknown_snapshot_rejected(two_sources):
    repository = reopen(two_sources["repository"])

    with pytest.raises(SnapshotNotFound):
        verify_repository(repository, VerifyOptions(restore_drill="ffffffff"))


def test_restore_drill_reports_altered_file(two_sources, tmp_path, monkeypatch):
    """A restore that writes wrong bytes undetected must still fail the read-back comparison."""
    from casbak.operations.verify import drill

    def restore_then_alter(repository, manifest, target, path=""):
        stats = restore_snapshot(repository, manifest, target, path)
        victim = Path(target) / str(two_sources["second"] / "e.txt").lstrip("/")
        victim.write_bytes(b"NOTES\n")
        return stats

    monkeypatch.setattr(drill, "restore_snapshot", restore_then_alter)
    repository = reopen(two_sources["repository"])

    result = verify_repository(repository, VerifyOptions(restore_drill="latest", drill_dir=str(tmp_path)))

    finding = only(result, FILE_MISMATCH)
    assert finding.path == str(two_sources["second"] / "e.txt")
    assert "content hash" in finding.message


# Random damage anywhere in the store


@pytest.fixture(scope="module")
def pristine_repository(tmp_path_factory):
    """A small repository that examples copy before damaging, so each starts clean."""
    root = tmp_path_factory.mktemp("pristine")
    source = root / "source"
    make_tree(source, {"a.bin": os.urandom(70_000), "sub": {"b.txt": b"reward model card\n" * 50}})
    repository = Repository.init(str(root / "repo"), PASSWORD, config=small_config(), kdf=FAST_KDF)
    create_snapshot(repository, [str(source)])
    create_snapshot(repository, [str(source)], full_read=True)
    return root / "repo"


DAMAGEABLE = ("data/", "tree/", "index/", "snapshots/")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_always_reported(pristine_repository, data):
    names = sorted(
        path.relative_to(pristine_repository).as_posix()
        for path in pristine_repository.rglob("*")
        if path.is_file() and path.relative_to(pristine_repository).as_posix().startswith(DAMAGEABLE)
    )
    victim = data.draw(st.sampled_from(names))
    original = (pristine_repository / victim).read_bytes()
    cut = data.draw(st.integers(min_value=0, max_value=len(original) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    truncate = data.draw(st.booleans())
    damaged = original[:cut] if truncate else original[:cut] + bytes([original[cut] ^ flip]) + original[cut + 1 :]

    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "repo"
        shutil.copytree(pristine_repository, copy)
        (copy / victim).write_bytes(damaged)
        result = verify_repository(Repository.open(str(copy), PASSWORD), READ_DATA)

    assert not result.ok, victim


# Locking


def test_verify_releases_shared_lock(two_sources):
    repository = reopen(two_sources["repository"])

    verify_repository(repository)

    assert repository.backend.list("locks") == []


def test_verify_blocked_by_exclusive_lock(two_sources):
    repository = reopen(two_sources["repository"])

    with RepositoryLock(repository, EXCLUSIVE, "gc"):
        with pytest.raises(RepositoryLocked):
            verify_repository(repository)
        unlocked = verify_repository(repository, VerifyOptions(lock=False))

    assert unlocked.ok


# Command line


def run_cli(repository: Repository, *args: str):
    runner = CliRunner()
    env = {"CASBAK_PASSWORD": PASSWORD.decode(), "CASBAK_REPOSITORY": repository.backend.url}
    # main() moves global options such as --json in front of the command name; do the same.
    return runner.invoke(app, hoist_global_options(list(args)), env=env)


def test_cli_json_clean_exit_zero(two_sources):
    outcome = run_cli(two_sources["repository"], "verify", "--read-data", "--json")

    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout)
    assert report["ok"] is True
    assert report["errors"] == []
    assert report["stats"]["packs_read"] == report["stats"]["packs_indexed"]
    assert report["drill"] is None


def test_cli_json_damage_exit_five(two_sources):
    repository = two_sources["repository"]
    path = two_sources["first"] / "a.bin"
    _digest, location = chunk_location(repository, two_sources["a"], path)
    pack_file(repository, "data", location.pack_id).unlink()

    outcome = run_cli(repository, "--json", "check")

    assert outcome.exit_code == EXIT_INTEGRITY
    report = json.loads(outcome.stdout)
    assert report["ok"] is False
    error = report["errors"][0]
    assert set(error) >= {"kind", "snapshot", "pack", "object", "message", "affected"}
    assert error["kind"] == PACK_MISSING
    assert error["pack"] == location.pack_id
    assert {"snapshot": two_sources["a"].id, "path": str(path)} in error["affected"]


def test_cli_restore_drill_exit_codes(two_sources):
    repository = two_sources["repository"]

    clean = run_cli(repository, "verify", "--restore-drill", two_sources["a"].id[:10])
    _digest, location = chunk_location(repository, two_sources["a"], two_sources["first"] / "a.bin")
    pack_file(repository, "data", location.pack_id).unlink()
    damaged = run_cli(repository, "verify", "--restore-drill", two_sources["a"].id[:10])

    assert clean.exit_code == 0, clean.output
    assert "restore drill" in clean.stdout
    assert damaged.exit_code == EXIT_INTEGRITY
    assert "restore_failed" in damaged.stderr
