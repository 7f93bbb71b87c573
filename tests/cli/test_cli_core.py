"""The installed `casbak` command: init, snapshot, snapshots, ls, restore, and their errors."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from casbak.catalog import load_manifest
from casbak.operations.snapshot import create_snapshot
from casbak.store.repository import Repository
from tests.conftest import FAST_KDF, PASSWORD, make_tree, small_config

NOBODY = 65534


def casbak_command() -> list[str]:
    script = shutil.which("casbak")
    if script:
        return [script]
    return [sys.executable, "-c", "from casbak.cli import main; main()"]


class Cli:
    """A runner for the installed command, with an isolated cache and config directory."""

    def __init__(self, home: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CASBAK_")}
        self.env["XDG_CACHE_HOME"] = str(home / "cache")
        self.env["XDG_CONFIG_HOME"] = str(home / "config")

    def run(self, *args: str, password: str | None = PASSWORD.decode()) -> subprocess.CompletedProcess:
        env = dict(self.env)
        if password is not None:
            env["CASBAK_PASSWORD"] = password
        return subprocess.run(
            [*casbak_command(), *args], capture_output=True, text=True, env=env, timeout=120,
            stdin=subprocess.DEVNULL,
        )

    def json(self, *args: str, **kwargs):
        result = self.run("--json", *args, **kwargs)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def manifests_of(repo: Path, password: bytes | None = PASSWORD) -> list:
    repository = Repository.open(str(repo), password)
    return sorted((load_manifest(repository, i) for i in repository.list_snapshot_ids()), key=lambda m: m.time_ns)


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> Cli:
    return Cli(tmp_path_factory.mktemp("cli-home"))


@pytest.fixture(scope="module")
def populated(cli, tmp_path_factory):
    """A repository with two CLI snapshots of one tree. The second changes dpo.yaml."""
    base = tmp_path_factory.mktemp("populated")
    repo = base / "repo"
    source = base / "data"
    make_tree(source, {
        "prefs.jsonl": b'{"prompt": "hi", "chosen": "hello", "rejected": "go away"}\n' * 2000,
        "configs": {"dpo.yaml": b"beta: 0.1\n", "empty": {}},
        "latest": ("symlink", "configs/dpo.yaml"),
    })
    init = cli.json("-r", str(repo), "init", "--kdf-n", "1024")
    first = cli.json("-r", str(repo), "snapshot", str(source), "--tag", "nightly")
    (source / "configs" / "dpo.yaml").write_bytes(b"beta: 0.2\n")
    second = cli.run("-r", str(repo), "snapshot", str(source))
    assert second.returncode == 0, second.stderr
    listed = cli.json("-r", str(repo), "snapshots")
    return {"repo": repo, "source": source, "init": init, "first": first, "listed": listed}


def test_init_json_reports_encryption(populated):
    init = populated["init"]
    repo = populated["repo"]

    assert init["encryption"] == "aes-256-gcm"
    assert len(init["id"]) == 64
    assert (repo / "config").is_file()
    assert os.listdir(repo / "keys")


def test_init_twice_fails(cli, populated):
    result = cli.run("-r", str(populated["repo"]), "init", "--kdf-n", "1024")

    assert result.returncode == 1
    assert "already initialized" in result.stderr


def test_snapshots_json_lists_both(populated):
    listed = populated["listed"]
    first = populated["first"]

    assert len(listed) == 2
    # The id is under "snapshot" in the run-report form and "id" in the summary form.
    assert first.get("snapshot", first.get("id")) == listed[0]["id"]
    assert first["stats"]["files_new"] == 2
    assert first["errors"] == []
    assert listed[0]["tags"] == ["nightly"]
    assert listed[0]["sources"] == [str(populated["source"])]
    assert listed[1]["parent"] == listed[0]["id"]
    assert [s["partial"] for s in listed] == [False, False]


def test_ls_and_restore_round_trip(cli, populated, tmp_path):
    repo, source = str(populated["repo"]), populated["source"]
    newest = populated["listed"][1]["id"]

    listing = cli.json("-r", repo, "ls", newest, str(source))
    target = tmp_path / "target"
    restored = cli.json("-r", repo, "restore", newest, "--target", str(target), "--path", str(source))

    paths = {row["path"]: row for row in listing}
    assert paths[f"{source}/prefs.jsonl"]["size"] == (source / "prefs.jsonl").stat().st_size
    assert paths[f"{source}/latest"]["target"] == "configs/dpo.yaml"
    assert paths[f"{source}/configs/empty"]["type"] == "dir"
    assert restored["snapshot"] == newest
    assert restored["files"] == 2
    assert all_files(target) == all_files(source)
    assert filecmp.cmp(source / "prefs.jsonl", target / "prefs.jsonl", shallow=False)
    assert (target / "configs" / "dpo.yaml").read_bytes() == b"beta: 0.2\n"
    assert os.readlink(target / "latest") == "configs/dpo.yaml"


def test_prefix_and_latest_selectors(cli, populated, tmp_path):
    repo, source = str(populated["repo"]), populated["source"]
    oldest = populated["listed"][0]["id"]

    by_latest = tmp_path / "latest"
    by_prefix = tmp_path / "prefix"
    cli.json("-r", repo, "restore", "latest", "--target", str(by_latest), "--path", f"{source}/configs/dpo.yaml")
    cli.json("-r", repo, "restore", oldest[:8].upper(), "--target", str(by_prefix), "--path", str(source))

    assert os.listdir(by_latest) == ["dpo.yaml"]
    assert (by_latest / "dpo.yaml").read_bytes() == b"beta: 0.2\n"
    assert (by_prefix / "configs" / "dpo.yaml").read_bytes() == b"beta: 0.1\n"


def test_unknown_snapshot_id(cli, populated):
    ids = [s["id"] for s in populated["listed"]]
    unknown = next(c for c in "0123456789abcdef" if not any(i.startswith(c) for i in ids)) * 64

    result = cli.run("-r", str(populated["repo"]), "ls", unknown)

    assert result.returncode == 1
    assert f"snapshot {unknown}: not found" in result.stderr


def test_ambiguous_selector(cli, tmp_path):
    repo = tmp_path / "repo"
    Repository.init(str(repo), PASSWORD, config=small_config(), kdf=FAST_KDF)
    repository = Repository.open(str(repo), PASSWORD)
    make_tree(tmp_path / "data", {"a.jsonl": b"{}\n"})
    # Snapshot until two ids share their first hex digit: at most 17 runs by pigeonhole.
    seen: set[str] = set()
    shared = None
    while shared is None:
        first_digit = create_snapshot(repository, [str(tmp_path / "data")], tags=[str(len(seen))]).manifest.id[0]
        if first_digit in seen:
            shared = first_digit
        seen.add(first_digit)

    result = cli.run("-r", str(repo), "ls", shared)

    assert result.returncode == 1
    assert "matches 2 snapshots" in result.stderr
    assert "give more digits" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_password_writes_nothing(cli, populated):
    repo = populated["repo"]
    before = all_files(repo)

    result = cli.run("-r", str(repo), "snapshot", str(populated["source"]), password="not the password")

    assert result.returncode == 1
    assert "password" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    assert all_files(repo) == before


def test_missing_password_fails(cli, populated):
    result = cli.run("-r", str(populated["repo"]), "snapshots", password=None)

    assert result.returncode == 1
    assert "CASBAK_PASSWORD" in result.stderr


def test_missing_repository_fails(cli, populated, tmp_path):
    missing = tmp_path / "no-such-repo"

    result = cli.run("-r", str(missing), "snapshot", str(populated["source"]))

    assert result.returncode == 1
    assert "not found" in result.stderr
    assert "casbak init" in result.stderr
    assert not missing.exists()


def test_insecure_no_encryption(cli, populated, tmp_path):
    repo = tmp_path / "plain"
    source = populated["source"]

    init = cli.json("-r", str(repo), "init", "--insecure-no-encryption", password=None)
    cli.json("-r", str(repo), "snapshot", str(source), password=None)
    target = tmp_path / "target"
    cli.json("-r", str(repo), "restore", "latest", "--target", str(target), "--path", str(source), password=None)

    assert init["encryption"] == "none"
    assert not (repo / "keys").exists() or not os.listdir(repo / "keys")
    assert filecmp.cmp(source / "prefs.jsonl", target / "prefs.jsonl", shallow=False)
    assert len(manifests_of(repo, None)) == 1


def test_restore_unknown_path(cli, populated, tmp_path):
    target = tmp_path / "t"

    result = cli.run("-r", str(populated["repo"]), "restore", "latest", "--target", str(target), "--path", "/not/in/snapshot")

    assert result.returncode == 1
    assert "not found in the snapshot" in result.stderr


def test_snapshot_of_missing_source(cli, populated, tmp_path):
    result = cli.run("-r", str(populated["repo"]), "snapshot", str(tmp_path / "absent"))

    assert result.returncode == 2
    assert "no such file or directory" in result.stderr
    assert len(manifests_of(populated["repo"])) == 2


PARTIAL_SCRIPT = textwrap.dedent(
    """
    import contextlib, io, os, sys
    from casbak.cli.main import app, main
    # The snapshot command imports its operation modules when it runs, so import them while still root.
    import casbak.operations.snapshot, casbak.store.cache
    # typer imports parts of itself on first use, so parse a command once while still root.
    with contextlib.redirect_stdout(io.StringIO()):
        for args in (["--help"], ["snapshot", "--help"]):
            try:
                app(args=args, prog_name="casbak")
            except SystemExit:
                pass
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    sys.argv = ["casbak", *sys.argv[1:]]
    main()
    """
)


def test_partial_snapshot_exits_3(cli):
    if os.geteuid() != 0:
        pytest.skip("dropping to the nobody user needs root")
    # The interpreter lives under /root, which the `nobody` user cannot enter, so the
    # child imports casbak as root and drops privileges before it runs the command.
    workspace = Path(tempfile.mkdtemp(prefix="casbak-cli-nobody-"))
    try:
        workspace.chmod(0o755)
        source = workspace / "source"
        make_tree(source, {"public.jsonl": b"{}\n", "private": {"secret.jsonl": b"{}\n"}})
        (source / "private").chmod(0o700)
        repo = workspace / "repo"
        Repository.init(str(repo), PASSWORD, config=small_config(), kdf=FAST_KDF)
        for directory, subdirs, files in os.walk(workspace / "repo"):
            os.chown(directory, NOBODY, NOBODY)
            for name in files:
                os.chown(os.path.join(directory, name), NOBODY, NOBODY)
        env = {**cli.env, "CASBAK_PASSWORD": PASSWORD.decode(), "XDG_CACHE_HOME": str(workspace / "cache")}

        result = subprocess.run(
            [sys.executable, "-c", PARTIAL_SCRIPT, "-r", str(repo), "snapshot", str(source)],
            capture_output=True, text=True, env=env, timeout=120, cwd="/",
        )

        assert result.returncode == 3, result.stderr
        assert f"{source}/private" in result.stderr
        assert "partial" in result.stderr
        [manifest] = manifests_of(repo)
        assert manifest.partial is True
        assert [e["path"] for e in manifest.errors] == [f"{source}/private"]
    finally:
        shutil.rmtree(workspace)
