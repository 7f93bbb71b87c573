"""Snapshots of fsspec URL sources: S3 on a local moto server and memory://."""

from __future__ import annotations

import uuid

import fsspec
import pytest
from typer.testing import CliRunner

from casbak.catalog import load_manifests, lookup_path
from casbak.cli.main import app
from casbak.errors import EXIT_USAGE, UsageError
from casbak.operations.diff import diff_trees
from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import create_snapshot
from casbak.tree import DIRECTORY, FILE
from tests.conftest import PASSWORD, read_tree
from tests.servers import moto_server  # noqa: F401 - fixture

# Larger than one small-config chunk, so a file spans several chunks.
BIG = bytes(range(256)) * 160

OBJECTS = {
    "rlhf/run-1/rewards.jsonl": b'{"step": 1, "reward": 0.5}\n' * 50,
    "rlhf/run-1/config.yaml": b"lr: 1.0e-6\n",
    "rlhf/run-2/deep/nested/weights.bin": BIG,
    "rlhf/README": b"reward model logs\n",
    "other/not-included.txt": b"outside the prefix\n",
}

EXPECTED_TREE = {
    "README": b"reward model logs\n",
    "run-1": {"config.yaml": b"lr: 1.0e-6\n", "rewards.jsonl": OBJECTS["rlhf/run-1/rewards.jsonl"]},
    "run-2": {"deep": {"nested": {"weights.bin": BIG}}},
}


@pytest.fixture
def s3_bucket(moto_server):  # noqa: F811 - fixture
    bucket = moto_server.new_bucket()
    client = moto_server.client()
    for key, data in OBJECTS.items():
        client.put_object(Bucket=bucket, Key=key, Body=data)
    return bucket


@pytest.fixture
def memory_prefix():
    root = f"/casbak-source-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    for key, data in OBJECTS.items():
        fs.pipe_file(f"{root}/{key}", data)
    yield root
    fs.rm(root, recursive=True)


def _s3_options(moto_server) -> dict:  # noqa: F811 - fixture value
    return {"endpoint_url": moto_server.endpoint}


def _snapshot(repository, url: str, options: dict):
    return create_snapshot(repository, [url], hostname="test-host", source_options=options)


def _check_round_trip(repository, url: str, options: dict, tree_path: str, tmp_path) -> None:
    first = _snapshot(repository, url, options)
    target = tmp_path / "restored"
    restore_snapshot(repository, first.manifest, str(target), tree_path)
    assert read_tree(target) == EXPECTED_TREE
    assert first.manifest.sources == [url]
    assert first.stats.files_new == 4
    assert first.stats.bytes_read == sum(len(d) for k, d in OBJECTS.items() if k.startswith("rlhf/"))

    second = _snapshot(repository, url, options)
    assert second.manifest.parent == first.manifest.id
    assert second.stats.bytes_read == 0
    assert second.stats.files_unmodified == 4
    assert second.stats.data_added == 0
    assert second.manifest.tree == first.manifest.tree


def test_s3_prefix_round_trip(repository, moto_server, s3_bucket, tmp_path):  # noqa: F811
    url = f"s3://{s3_bucket}/rlhf/"
    _check_round_trip(repository, url, _s3_options(moto_server), f"/s3/{s3_bucket}/rlhf", tmp_path)


def test_memory_prefix_round_trip(repository, memory_prefix, tmp_path):
    url = f"memory:/{memory_prefix}/rlhf"
    _check_round_trip(repository, url, {}, f"/memory{memory_prefix}/rlhf", tmp_path)


def test_s3_changed_object_read_again(repository, moto_server, s3_bucket, tmp_path):  # noqa: F811
    url = f"s3://{s3_bucket}/rlhf"
    options = _s3_options(moto_server)
    first = _snapshot(repository, url, options)
    changed = b"lr: 3.0e-6\n"
    moto_server.client().put_object(Bucket=s3_bucket, Key="rlhf/run-1/config.yaml", Body=changed)

    result = _snapshot(repository, url, options)

    assert result.stats.files_changed == 1
    assert result.stats.files_unmodified == 3
    assert result.stats.bytes_read == len(changed)
    entry = lookup_path(repository, result.manifest.tree, f"/s3/{s3_bucket}/rlhf/run-1/config.yaml")
    assert entry.size == len(changed)
    assert entry.etag is not None
    target = tmp_path / "restored"
    restore_snapshot(repository, result.manifest, str(target), f"/s3/{s3_bucket}/rlhf/run-1/config.yaml")
    assert (target / "config.yaml").read_bytes() == changed
    changes = diff_trees(repository, first.manifest.tree, result.manifest.tree)
    changed_files = [c.path for c in changes if c.new is not None and c.new.type == FILE]
    assert changed_files == [f"s3/{s3_bucket}/rlhf/run-1/config.yaml".encode()]


def test_memory_changed_object_read_again(repository, memory_prefix):
    url = f"memory:/{memory_prefix}/rlhf"
    _snapshot(repository, url, {})
    fsspec.filesystem("memory").pipe_file(f"{memory_prefix}/rlhf/README", b"new notes\n")

    result = _snapshot(repository, url, {})

    assert result.stats.files_changed == 1
    assert result.stats.files_unmodified == 3
    assert result.stats.bytes_read == len(b"new notes\n")


def test_remote_entry_metadata(repository, moto_server, s3_bucket):  # noqa: F811
    result = _snapshot(repository, f"s3://{s3_bucket}/rlhf", _s3_options(moto_server))

    directory = lookup_path(repository, result.manifest.tree, f"/s3/{s3_bucket}/rlhf/run-1")
    file = lookup_path(repository, result.manifest.tree, f"/s3/{s3_bucket}/rlhf/README")
    assert directory.type == DIRECTORY
    assert directory.mode == 0o755
    assert directory.mtime_ns == 0
    assert file.type == FILE
    assert file.mode == 0o644
    assert file.mtime_ns > 0
    assert file.etag.strip('"')


def test_s3_missing_bucket_rejected(repository, moto_server):  # noqa: F811
    with pytest.raises(UsageError, match="no such bucket"):
        _snapshot(repository, f"s3://casbak-missing-{uuid.uuid4().hex[:12]}/logs", _s3_options(moto_server))
    assert load_manifests(repository) == []


def test_missing_prefix_rejected(repository, moto_server, s3_bucket, memory_prefix):  # noqa: F811
    with pytest.raises(UsageError, match="no such bucket"):
        _snapshot(repository, f"s3://{s3_bucket}/no-such-prefix/", _s3_options(moto_server))
    with pytest.raises(UsageError, match="no such bucket"):
        _snapshot(repository, f"memory:/{memory_prefix}/no-such-prefix", {})
    assert load_manifests(repository) == []


def test_remote_and_local_sources_together(repository, memory_prefix, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "notes.txt").write_bytes(b"local file\n")
    url = f"memory:/{memory_prefix}/rlhf"

    result = create_snapshot(repository, [str(local), url], hostname="test-host")

    assert result.manifest.sources == [str(local), url]
    assert lookup_path(repository, result.manifest.tree, f"{local}/notes.txt").size == len(b"local file\n")
    assert lookup_path(repository, result.manifest.tree, f"/memory{memory_prefix}/rlhf/README").type == FILE


def test_cli_source_option(repo_path, repository, moto_server, s3_bucket, tmp_path):  # noqa: F811
    runner = CliRunner()
    env = {"CASBAK_PASSWORD": PASSWORD.decode()}
    url = f"s3://{s3_bucket}/rlhf/"
    option = f"s3.endpoint_url={moto_server.endpoint}"

    made = runner.invoke(app, ["--repo", str(repo_path), "snapshot", url, "--source-option", option], env=env)
    assert made.exit_code == 0, made.output
    listed = runner.invoke(app, ["--repo", str(repo_path), "ls", "latest", f"/s3/{s3_bucket}/rlhf/run-1"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "rewards.jsonl" in listed.output
    target = tmp_path / "restored"
    restored = runner.invoke(app, ["--repo", str(repo_path), "restore", "latest", "--path", f"/s3/{s3_bucket}/rlhf", "--target", str(target)], env=env)
    assert restored.exit_code == 0, restored.output
    assert read_tree(target) == EXPECTED_TREE


def test_cli_missing_bucket_fails(repo_path, repository, moto_server):  # noqa: F811
    runner = CliRunner()
    env = {"CASBAK_PASSWORD": PASSWORD.decode()}
    url = f"s3://casbak-missing-{uuid.uuid4().hex[:12]}/"
    option = f"s3.endpoint_url={moto_server.endpoint}"

    result = runner.invoke(app, ["--repo", str(repo_path), "snapshot", url, "--source-option", option], env=env)

    assert isinstance(result.exception, UsageError)
    assert result.exception.exit_code == EXIT_USAGE
    assert load_manifests(repository) == []


def test_single_object_source(repository, moto_server, s3_bucket, tmp_path):  # noqa: F811
    url = f"s3://{s3_bucket}/rlhf/run-1/config.yaml"
    options = _s3_options(moto_server)

    first = _snapshot(repository, url, options)
    second = _snapshot(repository, url, options)

    entry = lookup_path(repository, first.manifest.tree, f"/s3/{s3_bucket}/rlhf/run-1/config.yaml")
    assert entry.type == FILE
    assert entry.size == len(b"lr: 1.0e-6\n")
    assert second.stats.bytes_read == 0
    assert second.stats.files_unmodified == 1


def test_nested_remote_sources_rejected(repository, memory_prefix):
    outer = f"memory:/{memory_prefix}/rlhf"
    inner = f"memory:/{memory_prefix}/rlhf/run-1"

    with pytest.raises(UsageError, match="inside source"):
        create_snapshot(repository, [outer, inner], hostname="test-host")
    assert load_manifests(repository) == []
