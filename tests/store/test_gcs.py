"""Repositories on Google Cloud Storage through real gcsfs against a local emulator."""

from __future__ import annotations

import os

import pytest

from casbak.catalog import resolve_snapshot
from casbak.operations.restore import restore_snapshot
from casbak.operations.snapshot import create_snapshot
from casbak.store.backend import open_backend
from casbak.store.cache import CachedBackend
from casbak.store.repository import Repository
from tests.conftest import FAST_KDF, PASSWORD, make_tree, read_tree, small_config
from tests.servers import gcs_server, run_cli  # noqa: F401 - fixtures

CLI_PASSWORD = "gcs test password"


def _source_spec() -> dict:
    return {
        "rewards.parquet": os.urandom(90_000),
        "empty": b"",
        "runs": {"a.jsonl": b'{"chosen": 1}\n' * 500, "b": {}},
        "latest": ("symlink", "runs/a.jsonl"),
    }


def test_gcs_snapshot_restore_cycle_api(gcs_server, tmp_path):
    url = f"gs://{gcs_server.new_bucket()}/backups"
    options = gcs_server.options()
    source = tmp_path / "source"
    spec = _source_spec()
    make_tree(source, spec)
    Repository.init(url, PASSWORD, config=small_config(), kdf=FAST_KDF, options=options)
    repository = Repository.open(url, PASSWORD, options)

    create_snapshot(repository, [str(source)])
    target = tmp_path / "target"
    restore_snapshot(repository, resolve_snapshot(repository, "latest"), str(target), str(source))
    packs_before = repository.backend.list("data")
    second = create_snapshot(Repository.open(url, PASSWORD, options), [str(source)])

    assert isinstance(repository.backend, CachedBackend)
    assert read_tree(target) == spec
    assert second.stats.bytes_read == 0
    assert second.stats.chunks_new == 0
    assert repository.backend.list("data") == packs_before
    assert len(repository.list_snapshot_ids()) == 2


@pytest.mark.slow
def test_gcs_snapshot_restore_cycle_cli(gcs_server, tmp_path):
    url = f"gs://{gcs_server.new_bucket()}/cli"
    source = tmp_path / "source"
    spec = _source_spec()
    make_tree(source, spec)
    environment = {"CASBAK_PASSWORD": CLI_PASSWORD, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    common = ["-r", url, "-o", f"gs.endpoint_url={gcs_server.endpoint}", "-o", "gs.token=anon",
              "-o", "gs.project=casbak-test"]

    created = run_cli([*common, "init", "--kdf-n", "1024"], environment)
    first = run_cli([*common, "snapshot", str(source)], environment)
    restored = run_cli([*common, "restore", "latest", "--target", str(tmp_path / "target")], environment)
    second = run_cli([*common, "--json", "snapshot", str(source)], environment)

    assert created.returncode == 0, created.stderr
    assert first.returncode == 0, first.stderr
    assert restored.returncode == 0, restored.stderr
    assert second.returncode == 0, second.stderr
    assert read_tree(tmp_path / "target" / source.relative_to("/")) == spec
    assert '"bytes_read": 0' in second.stdout
    assert '"chunks_new": 0' in second.stdout


def test_gcs_object_lock_is_rejected(gcs_server, tmp_path):
    url = f"gs://{gcs_server.new_bucket()}/locked"
    environment = {"CASBAK_PASSWORD": CLI_PASSWORD}
    common = ["-r", url, "-o", f"gs.endpoint_url={gcs_server.endpoint}", "-o", "gs.token=anon"]

    result = run_cli([*common, "init", "--kdf-n", "1024", "--object-lock-days", "2"], environment)

    assert result.returncode == 2
    assert "Object Lock needs an s3:// repository" in result.stderr


@pytest.mark.parametrize("payload", [b"ends with cr\r", b"ends with lf\n", b"\r\n", b"\r", b"plain"])
def test_gcs_stores_trailing_line_ends_exactly(gcs_server, payload):
    url = f"gs://{gcs_server.new_bucket()}/bytes"
    backend = open_backend(url, gcs_server.options())

    backend.write("data/aa/object", payload)

    assert backend.read("data/aa/object") == payload
    assert backend.size("data/aa/object") == len(payload)
