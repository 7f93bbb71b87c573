"""Start-up cost of the `casbak` command: what a run imports, checked without timing.

Each command imports only the modules it needs, because imports are most of the fixed
CPU time and memory of a short run. These tests run the command in a fresh interpreter
and list the heavy modules it loaded, so a new module-level import in casbak/cli fails
here instead of slowing every command down unnoticed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec.core
import pytest
from hypothesis import given
from hypothesis import strategies as st

from casbak.store.backend import LocalBackend, open_backend, url_protocol
from tests.conftest import PASSWORD, make_tree

# Modules that only some commands need, with the reason each one is heavy.
RECORD_DIFF_MODULES = ("casbak.records", "yaml", "pyarrow")  # `casbak diff --records` only
REMOTE_MODULES = ("fsspec",)  # non-local repositories and URL sources; pulls in asyncio
TERMINAL_MODULES = ("rich",)  # progress bars and help pages on a terminal
TYPER_CONVERSION_MODULES = ("pydantic",)  # typer's converters; casbak.cli.coercion handles plain values
OTHER_COMMAND_MODULES = (
    "casbak.operations.verify",
    "casbak.operations.prune",
    "casbak.operations.copy",
    "casbak.audit.checksums",
    "casbak.audit.ledger",
    "tarfile",  # dump --tar
    "urllib.request",  # snapshot --notify-url
    "tomllib",  # --profile
)
EXCLUDE_MODULES = ("pathspec", "asyncio")  # exclude patterns only; pathspec imports asyncio
NOT_FOR_SNAPSHOT = (
    RECORD_DIFF_MODULES
    + REMOTE_MODULES
    + TERMINAL_MODULES
    + TYPER_CONVERSION_MODULES
    + OTHER_COMMAND_MODULES
    + EXCLUDE_MODULES
)
NOT_FOR_LISTING = NOT_FOR_SNAPSHOT + ("casbak.audit.pii", "casbak.operations.snapshot")
NOT_FOR_HELP = NOT_FOR_LISTING + ("casbak.store.repository", "casbak.catalog", "cryptography", "zstandard")

# Runs the command in this interpreter, then writes the exit code and the loaded
# modules to the file named by the first argument (standard output is the command's).
PROBE = """
import json, sys
from casbak.cli.main import main
report, sys.argv = sys.argv[1], ["casbak", *sys.argv[2:]]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
with open(report, "w") as handle:
    json.dump({"exit": code, "modules": sorted(sys.modules)}, handle)
"""


def run_probe(tmp_path: Path, *args: str) -> tuple[int, set[str]]:
    report = tmp_path / "probe.json"
    env = dict(os.environ, CASBAK_PASSWORD=PASSWORD.decode())
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(report), *args],
        capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert report.exists(), f"the probe did not finish: {result.stderr}"
    outcome = json.loads(report.read_text())
    return outcome["exit"], set(outcome["modules"])


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Return which of `names` (packages included with their submodules) were imported."""
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


def test_help_imports_no_storage_layer(tmp_path):
    exit_code, modules = run_probe(tmp_path, "--help")
    assert exit_code == 0
    # Typer renders help pages with rich, so rich is allowed here.
    unexpected = [n for n in loaded(modules, NOT_FOR_HELP) if n not in TERMINAL_MODULES]
    assert unexpected == []


def test_snapshots_listing_imports_only_storage(tmp_path, repository, repo_path):
    exit_code, modules = run_probe(tmp_path, "-r", str(repo_path), "snapshots")
    assert exit_code == 0
    assert "casbak.store.repository" in modules
    assert loaded(modules, NOT_FOR_LISTING) == []


def test_snapshot_of_local_tree_avoids_other_commands(tmp_path, repository, repo_path):
    source = tmp_path / "source"
    make_tree(source, {"data": {"a.jsonl": b'{"id": 1}\n', "b.bin": bytes(range(256)) * 64}})
    exit_code, modules = run_probe(tmp_path, "-q", "-r", str(repo_path), "snapshot", str(source))
    assert exit_code == 0
    assert "casbak.operations.snapshot" in modules
    assert loaded(modules, NOT_FOR_SNAPSHOT) == []
    assert len(repository.list_snapshot_ids()) == 1


URL_EXAMPLES = [
    "/srv/backup/casbak",
    "relative/repo",
    "~/repo",
    "file:///srv/repo",
    "local:///srv/repo",
    "memory://bucket/prefix",
    "s3://bucket/prefix/",
    "gs://bucket",
    "simplecache::s3://bucket/key",
    "c://windows/path",
    "data:text/plain;base64,aGk=",
    "dir/with://inside",
    "",
]


@pytest.mark.parametrize("url", URL_EXAMPLES)
def test_url_protocol_matches_fsspec(url):
    assert url_protocol(url) == fsspec.core.split_protocol(url)[0]


@given(st.text(alphabet=st.sampled_from("abdt:/.~_-"), max_size=16))
def test_url_protocol_matches_fsspec_generated(url):
    assert url_protocol(url) == fsspec.core.split_protocol(url)[0]


@pytest.mark.parametrize("url", ["file://{root}", "local://{root}", "{root}"])
def test_open_backend_local_forms(tmp_path, url):
    backend = open_backend(url.format(root=tmp_path))
    assert isinstance(backend, LocalBackend)
    assert backend.root == str(tmp_path)


def test_open_backend_memory_url_uses_fsspec():
    backend = open_backend("memory://casbak-startup-test/repo")
    assert not isinstance(backend, LocalBackend)
    backend.write("config", b"x")
    assert backend.read("config") == b"x"
    backend.delete("config")


def test_help_constants_match_their_sources():
    from casbak.cli.gc_cmd import GROUP_BY_HELP
    from casbak.cli.repo_cmd import DEFAULT_PACK_SIZE_MIB
    from casbak.operations.retention import GROUP_BY_CHOICES
    from casbak.store.config import DEFAULT_PACK_SIZE

    assert GROUP_BY_HELP == f"Judge snapshots in groups of: {', '.join(GROUP_BY_CHOICES)}."
    assert DEFAULT_PACK_SIZE_MIB * 1024 * 1024 == DEFAULT_PACK_SIZE


def test_key_commands_default_kdf():
    from casbak.cli.key_cmd import _kdf_params
    from casbak.crypto import KdfParams

    assert _kdf_params(None) == KdfParams()
    assert _kdf_params(2**12) == KdfParams(n=2**12)
