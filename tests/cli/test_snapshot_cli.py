"""`casbak snapshot`, `dump`, `find` and `stats` through the command-line entry point, as users run them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import msgpack
import pytest

from casbak.cli.main import main
from casbak.cli.progress import BarProgress, Counters, LineProgress, make_progress
from casbak.store.locks import SHARED, RepositoryLock
from tests.conftest import PASSWORD, make_tree

CLI = [sys.executable, "-c", "from casbak.cli import main; main()"]


@dataclass
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


def run_casbak_process(*args: str, stdin: bytes = b"", env: Optional[dict] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run casbak as a separate process, with the password in CASBAK_PASSWORD as cron jobs set it."""
    environment = {**os.environ, "CASBAK_PASSWORD": PASSWORD.decode(), **(env or {})}
    return subprocess.run(CLI + list(args), input=stdin, capture_output=True, env=environment, timeout=timeout)


def run_casbak(*args: str, repo: Optional[Path] = None, stdin: bytes = b"", env: Optional[dict] = None) -> Completed:
    """Run casbak's entry point in this process (a process start costs over a second here)
    with its own standard streams, argument list and environment (a None value unsets)."""
    argv = ["casbak"] + (["--repo", str(repo)] if repo else []) + list(args)
    saved = (sys.argv, sys.stdin, sys.stdout, sys.stderr, dict(os.environ))
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    for name, value in {"CASBAK_PASSWORD": PASSWORD.decode(), **(env or {})}.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    sys.argv, sys.stdin, sys.stdout, sys.stderr = argv, io.TextIOWrapper(io.BytesIO(stdin)), out, err
    code = 0
    try:
        main()
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            code = 1
    finally:
        sys.argv, sys.stdin, sys.stdout, sys.stderr = saved[:4]
        os.environ.clear()
        os.environ.update(saved[4])
    return Completed(code, out.buffer.getvalue(), err.buffer.getvalue())


def run_json(*args: str, **kwargs) -> dict:
    result = run_casbak("--json", *args, **kwargs)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def deep_unreadable_path(root: Path) -> Path:
    """Create a directory chain whose full path exceeds PATH_MAX, so lstat() of its last
    entries fails with ENAMETOOLONG even for root (permissions would not stop root)."""
    name = "d" * 200
    fd = os.open(root, os.O_RDONLY)
    depth = 0
    while len(str(root)) + depth * (len(name) + 1) < 4200:
        os.mkdir(name, dir_fd=fd)
        next_fd = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = next_fd
        depth += 1
    os.close(fd)
    return root


@pytest.fixture
def source(tmp_path) -> Path:
    root = tmp_path / "alignment"
    make_tree(root, {
        "prefs.jsonl": b'{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 200,
        "scratch.tmp": b"temporary",
        "configs": {"dpo.yaml": b"beta: 0.1\n", "rm.json": b"{}"},
    })
    return root


def test_snapshot_json_schema(repository, repo_path, source):
    report = run_json("snapshot", str(source), "--tag", "nightly", "--exclude", "*.tmp", repo=repo_path)

    assert report["schema"] == "casbak.run/1"
    assert report["command"] == "snapshot"
    assert report["status"] == "success"
    assert report["exit_code"] == 0
    assert len(report["snapshot"]) == 64
    assert report["stats"]["files_new"] == 3
    assert report["stats"]["excluded"] == 1
    assert report["errors"] == []


def test_snapshot_quiet_prints_nothing(repository, repo_path, source):
    result = run_casbak("--quiet", "snapshot", str(source), repo=repo_path)

    assert result.returncode == 0
    assert result.stdout == b""
    assert result.stderr == b""


def test_snapshot_plain_output_without_terminal(repository, repo_path, source):
    result = run_casbak("snapshot", str(source), repo=repo_path)

    assert result.returncode == 0
    assert b"saved" in result.stdout
    assert b"\x1b[" not in result.stderr, "no terminal control sequences in cron mail"


def test_snapshot_partial_exits_3(repository, repo_path, source):
    deep_unreadable_path(source)

    result = run_casbak("--json", "snapshot", str(source), repo=repo_path)
    report = json.loads(result.stdout)

    assert result.returncode == 3
    assert report["status"] == "partial"
    assert report["snapshot"] in {p.name for p in (repo_path / "snapshots").iterdir()}
    assert "File name too long" in report["errors"][0]["error"]
    assert b"not stored:" in result.stderr


def test_snapshot_missing_source_exits_2(repository, repo_path, tmp_path):
    result = run_casbak("snapshot", str(tmp_path / "absent"), repo=repo_path)

    assert result.returncode == 2
    assert b"no such file or directory" in result.stderr


def test_snapshot_nothing_given_exits_2(repository, repo_path):
    result = run_casbak("snapshot", repo=repo_path)

    assert result.returncode == 2
    assert b"nothing to snapshot" in result.stderr


def test_snapshot_wrong_password_exits_1(repository, repo_path, source):
    result = run_casbak("--json", "snapshot", str(source), repo=repo_path, env={"CASBAK_PASSWORD": "wrong"})

    assert result.returncode == 1
    assert json.loads(result.stdout)["status"] == "failed"


def test_stdin_snapshot_and_dump(repository, repo_path):
    payload = os.urandom(300_000)

    report = run_json("snapshot", "--stdin", "--stdin-filename", "exports/blob.bin", repo=repo_path, stdin=payload)
    dumped = run_casbak("dump", report["snapshot"][:10], "/exports/blob.bin", repo=repo_path)

    assert dumped.returncode == 0
    assert dumped.stdout == payload


def test_failing_command_exits_1_without_manifest(repository, repo_path):
    result = run_casbak("snapshot", "--stdin-from-command", "echo half; exit 2", "--stdin-filename", "x.dump", repo=repo_path)

    assert result.returncode == 1
    assert b"exited with status 2" in result.stderr
    assert not (repo_path / "snapshots").exists() or not list((repo_path / "snapshots").iterdir())


def test_dump_tar_of_directory(repository, repo_path, source):
    run_json("snapshot", str(source), repo=repo_path)

    result = run_casbak("dump", "--tar", "latest", str(source / "configs"), repo=repo_path)
    archive = tarfile.open(fileobj=io.BytesIO(result.stdout), mode="r:")
    names = sorted(archive.getnames())
    prefix = str(source / "configs").lstrip("/")

    assert result.returncode == 0
    assert names == [prefix, f"{prefix}/dpo.yaml", f"{prefix}/rm.json"]
    assert archive.extractfile(f"{prefix}/dpo.yaml").read() == b"beta: 0.1\n"


def test_dump_json_goes_to_stderr(repository, repo_path, source):
    run_json("snapshot", str(source), repo=repo_path)

    result = run_casbak("--json", "dump", "latest", str(source / "configs/dpo.yaml"), repo=repo_path)
    summary = json.loads(result.stderr)

    assert result.stdout == b"beta: 0.1\n"
    assert summary["schema"] == "casbak.dump/1"
    assert summary["bytes"] == 10


def test_dump_directory_without_tar_exits_2(repository, repo_path, source):
    run_json("snapshot", str(source), repo=repo_path)

    result = run_casbak("dump", "latest", str(source), repo=repo_path)

    assert result.returncode == 2
    assert b"--tar" in result.stderr


def test_find_pattern_and_content(repository, repo_path, source):
    first = run_json("snapshot", str(source), repo=repo_path)
    (source / "configs" / "dpo.yaml").write_bytes(b"beta: 0.2\n")
    second = run_json("snapshot", str(source), repo=repo_path)

    by_name = run_json("find", "dpo.yaml", repo=repo_path)
    by_path = run_json("find", f"{source}/configs/*.json", repo=repo_path)
    old_hash = next(m["content_hash"] for m in by_name["matches"] if m["snapshot"] == first["snapshot"])
    by_hash = run_json("find", "--content-hash", old_hash[:16], repo=repo_path)

    assert by_name["schema"] == "casbak.find/1"
    assert sorted(by_name["snapshots"]) == sorted([first["snapshot"], second["snapshot"]])
    assert [m["path"] for m in by_path["matches"]] == [f"{source}/configs/rm.json"] * 2
    assert by_hash["snapshots"] == [first["snapshot"]]


def test_find_same_as_local_file(repository, repo_path, source):
    report = run_json("snapshot", str(source), repo=repo_path)

    found = run_json("find", "--same-as", str(source / "prefs.jsonl"), repo=repo_path)

    assert found["snapshots"] == [report["snapshot"]]
    assert found["matches"][0]["path"] == f"{source}/prefs.jsonl"


def test_stats_ratios(repository, repo_path, source):
    run_json("snapshot", str(source), repo=repo_path)
    run_json("snapshot", str(source), "--force", repo=repo_path)

    stats = run_json("stats", repo=repo_path)

    assert stats["schema"] == "casbak.stats/1"
    assert stats["snapshots"] == 2
    assert stats["logical_bytes"] == 2 * (200 * 48 + 9 + 10 + 2)
    assert stats["dedup_ratio"] == round(stats["logical_bytes"] / stats["pack_bytes"], 3)
    assert stats["compression_ratio"] > 1, "repetitive JSON lines compress"
    assert stats["growth_bytes_per_day"] is None, "both snapshots are minutes apart"
    assert stats["repository_bytes"] > stats["pack_bytes"]


def read_forget_records(repository) -> list[dict]:
    records = []
    for name in repository.backend.list("forgotten"):
        records.append(msgpack.unpackb(repository.sealer.open(repository.backend.read(name), what=name)))
    return records


def test_tag_writes_new_manifest(repository, repo_path, source):
    first = run_json("snapshot", str(source), "--tag", "nightly", repo=repo_path)
    second = run_json("snapshot", str(source), repo=repo_path)

    result = run_json("tag", first["snapshot"][:12], "--add", "release", "--remove", "nightly", repo=repo_path)
    changed = result["results"][0]
    listed = {s["id"]: s for s in run_json("snapshots", repo=repo_path)}
    records = read_forget_records(repository)

    assert result["schema"] == "casbak.tag/1"
    assert changed["changed"] is True
    assert changed["tags"] == ["release"]
    assert set(listed) == {changed["new_snapshot"], second["snapshot"]}
    assert listed[changed["new_snapshot"]]["tags"] == ["release"]
    assert [s["id"] for s in records[0]["snapshots"]] == [first["snapshot"]]
    assert records[0]["version"] == 1


def test_tag_keeps_tree_and_time(repository, repo_path, source):
    first = run_json("snapshot", str(source), repo=repo_path)
    before = run_json("snapshots", repo=repo_path)[0]

    run_json("tag", "latest", "--set", "keep", repo=repo_path)
    after = run_json("snapshots", repo=repo_path)[0]

    assert after["id"] != first["snapshot"]
    assert after["tree"] == before["tree"]
    assert after["time"] == before["time"]
    assert after["stats"] == before["stats"]
    assert after["tags"] == ["keep"]


def test_tag_unchanged_keeps_id(repository, repo_path, source):
    first = run_json("snapshot", str(source), "--tag", "a", repo=repo_path)

    result = run_json("tag", "latest", "--add", "a", repo=repo_path)

    assert result["results"][0]["changed"] is False
    assert result["results"][0]["new_snapshot"] == first["snapshot"]
    assert read_forget_records(repository) == []


def test_tag_without_change_option_exits_2(repository, repo_path, source):
    run_json("snapshot", str(source), repo=repo_path)

    assert run_casbak("tag", "latest", repo=repo_path).returncode == 2


def test_dump_damaged_pack_exits_5(repository, repo_path, tmp_path):
    source = tmp_path / "one"
    make_tree(source, {"weights.bin": os.urandom(40_000)})
    run_json("snapshot", str(source), repo=repo_path)
    # Flip one byte in the middle of every data pack, as bit rot on the backup disk would.
    for pack in (repo_path / "data").rglob("*"):
        if pack.is_file():
            data = bytearray(pack.read_bytes())
            data[len(data) // 2] ^= 0xFF
            pack.write_bytes(bytes(data))

    result = run_casbak("dump", "latest", str(source / "weights.bin"), repo=repo_path)

    assert result.returncode == 5
    assert len(result.stdout) < 40_000


def test_dump_to_closed_pipe_exits_1(repository, repo_path, tmp_path):
    source = tmp_path / "one"
    make_tree(source, {"weights.bin": os.urandom(3_000_000)})
    run_json("snapshot", str(source), repo=repo_path)
    environment = {**os.environ, "CASBAK_PASSWORD": PASSWORD.decode()}

    dump = subprocess.Popen(CLI + ["--repo", str(repo_path), "dump", "latest", str(source / "weights.bin")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment)
    dump.stdout.read(10)
    dump.stdout.close()
    errors = dump.stderr.read()
    dump.wait(timeout=60)

    assert dump.returncode == 1
    assert b"closed the pipe before the dump finished" in errors
    assert b"Traceback" not in errors


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_progress_lines():
    stream = io.StringIO()
    progress = LineProgress("snapshot", stream, interval=0, total_bytes=4096)

    progress.bytes_done(1024)
    progress.file_done(b"/a", 1024, read=True)
    progress.file_done(b"/b", 1024, read=False)
    lines = stream.getvalue().splitlines()

    assert lines[-1].startswith("casbak: snapshot: 2 files, 2.0 KiB, ")
    assert lines[-1].endswith("about 50% of the previous snapshot's size")
    assert "\x1b" not in stream.getvalue()


def test_progress_choice_by_output():
    assert type(make_progress("snapshot", quiet=True, json_output=False, stream=FakeTerminal())) is Counters
    assert type(make_progress("snapshot", quiet=False, json_output=True, stream=FakeTerminal())) is Counters
    assert isinstance(make_progress("snapshot", quiet=False, json_output=False, stream=io.StringIO()), LineProgress)
    assert isinstance(make_progress("snapshot", quiet=False, json_output=False, stream=FakeTerminal()), BarProgress)


def test_bar_progress_drops_wrong_estimate():
    terminal = FakeTerminal()
    progress = BarProgress("snapshot", terminal, total_bytes=100)
    progress.start()
    try:
        progress.bytes_done(50)
        assert progress._display.tasks[0].total == 100
        progress.bytes_done(500)
        assert progress._display.tasks[0].total is None
    finally:
        progress.stop()


def test_tag_during_snapshot_exits_4(repository, repo_path, source):
    run_json("snapshot", str(source), repo=repo_path)

    # A running snapshot holds a shared lock, and tag needs an exclusive one.
    with RepositoryLock(repository, SHARED, "snapshot"):
        result = run_casbak("tag", "latest", "--add", "x", repo=repo_path)

    assert result.returncode == 4
    assert run_json("snapshots", repo=repo_path)[0]["tags"] == []
