"""A newcomer's walk through README.md, and the CLI faults that walk found.

The first test runs the README's "First commands" as written, with its example paths
pointed at temporary directories, so the README cannot drift from the command line.
The other tests pin the fixes: tar dumps of files larger than one chunk, and error
messages that name the value and the next step.
"""

from __future__ import annotations

import filecmp
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from casbak.catalog import resolve_snapshot
from casbak.errors import SnapshotNotFound
from casbak.operations.snapshot import create_snapshot
from tests.conftest import CORPUS, PASSWORD, make_tree

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
README = REPOSITORY_ROOT / "README.md"


def casbak_shim(directory: Path) -> Path:
    """Write a `casbak` script that runs this checkout's code with this interpreter.

    An installed `casbak` on PATH may belong to another checkout, so the shim pins both
    the interpreter and the import path.
    """
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "casbak"
    script.write_text(
        "#!/bin/sh\n"
        f'PYTHONPATH="{REPOSITORY_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}" '
        f'exec "{sys.executable}" -c "from casbak.cli import main; main()" "$@"\n'
    )
    script.chmod(0o755)
    return script


def cli_environment(bin_directory: Path) -> dict[str, str]:
    # conftest's autouse fixture has already removed CASBAK_* and pointed XDG_* at temp dirs.
    env = dict(os.environ)
    env["PATH"] = f"{bin_directory}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_casbak(tmp_path: Path, *args: str, password: str | None = PASSWORD.decode()) -> subprocess.CompletedProcess:
    env = cli_environment(tmp_path / "bin")
    casbak = casbak_shim(tmp_path / "bin")
    if password is not None:
        env["CASBAK_PASSWORD"] = password
    return subprocess.run(
        [str(casbak), *args], capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL
    )


def readme_section_blocks(title: str) -> list[str]:
    """Return the fenced `sh` blocks of one `## ` section of README.md."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    following = text.find("\n## ", start + 1)
    section = text[start:following if following != -1 else len(text)]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)


def readme_commands(blocks: list[str]) -> list[str]:
    """Split the blocks into command lines, leaving out `pip install`.

    The suite runs against an installed checkout already, and a test must not reinstall
    the package into the interpreter that runs it.
    """
    commands = []
    for block in blocks:
        for line in block.splitlines():
            stripped = line.strip()
            if stripped and not stripped.startswith("#") and not stripped.startswith("pip install"):
                commands.append(stripped)
    return commands


def test_readme_first_commands_run(tmp_path):
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS}")
    data = tmp_path / "data" / "alignment"
    shutil.copytree(CORPUS, data)
    password_file = tmp_path / "password"
    password_file.write_bytes(PASSWORD + b"\n")
    # Longest placeholders first, so /data/alignment is replaced before any shorter prefix.
    placeholders = {
        "/srv/backup/casbak": str(tmp_path / "repo"),
        "/etc/casbak/password": str(password_file),
        "/data/alignment": str(data),
        "/tmp/restore": str(tmp_path / "restore"),
    }
    blocks = readme_section_blocks("First commands")
    script_lines = ["set -eu", "trap 'echo \"README command failed: $BASH_COMMAND\" >&2' ERR"]
    commands = readme_commands(blocks)
    for placeholder in placeholders:
        assert any(placeholder in c for c in commands), f"README no longer uses {placeholder}; update this test"
    for command in commands:
        for placeholder, replacement in placeholders.items():
            command = command.replace(placeholder, replacement)
        assert "/srv/" not in command, f"unreplaced system path in: {command}"
        assert "/etc/" not in command, f"unreplaced system path in: {command}"
        script_lines.append(command)
    casbak_shim(tmp_path / "bin")

    result = subprocess.run(
        ["bash", "-c", "\n".join(script_lines)], capture_output=True, text=True,
        env=cli_environment(tmp_path / "bin"), cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL,
    )

    assert result.returncode == 0, result.stderr
    assert "[nightly]" in result.stdout
    assert f"{data}/configs/" in result.stdout
    restored = tmp_path / "restore"
    comparison = filecmp.dircmp(data / "configs", restored)
    assert sorted(os.listdir(restored)) == sorted(os.listdir(data / "configs"))
    assert comparison.diff_files == []


@pytest.fixture
def two_chunk_snapshot(repository, repo_path, tmp_path):
    """A snapshot of a file that spans many chunks of the test repository's 4 KiB chunker."""
    source = tmp_path / "src"
    make_tree(source, {"prefs.jsonl": os.urandom(300 * 1024), "configs": {"dpo.yaml": b"beta: 0.1\n"}})
    result = create_snapshot(repository, [str(source)])
    return {"repo": repo_path, "source": source, "id": result.manifest.id}


def test_dump_tar_multichunk_file(two_chunk_snapshot, tmp_path):
    source = two_chunk_snapshot["source"]
    output = tmp_path / "out.tar"

    result = run_casbak(tmp_path, "-r", str(two_chunk_snapshot["repo"]), "dump", "--tar",
                        two_chunk_snapshot["id"], str(source), "--output", str(output))

    assert result.returncode == 0, result.stderr
    with tarfile.open(output) as archive:
        member = archive.extractfile(str(source / "prefs.jsonl").lstrip("/"))
        assert member is not None
        assert member.read() == (source / "prefs.jsonl").read_bytes()


def test_dump_tar_whole_snapshot_stream(two_chunk_snapshot, tmp_path):
    result = subprocess.run(
        [str(casbak_shim(tmp_path / "bin")), "-r", str(two_chunk_snapshot["repo"]), "dump", "--tar", two_chunk_snapshot["id"]],
        capture_output=True, env={**cli_environment(tmp_path / "bin"), "CASBAK_PASSWORD": PASSWORD.decode()},
        timeout=120, stdin=subprocess.DEVNULL,
    )

    assert result.returncode == 0, result.stderr.decode()
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as archive:
        names = archive.getnames()
    assert str(two_chunk_snapshot["source"] / "prefs.jsonl").lstrip("/") in names


def test_missing_path_names_snapshot(two_chunk_snapshot, tmp_path):
    missing = str(two_chunk_snapshot["source"] / "nope.yaml")

    result = run_casbak(tmp_path, "-r", str(two_chunk_snapshot["repo"]), "restore", "latest",
                        "--target", str(tmp_path / "out"), "--path", missing)

    assert result.returncode == 1
    assert f"snapshot {two_chunk_snapshot['id'][:12]}" in result.stderr
    assert str(two_chunk_snapshot["source"]) in result.stderr
    assert "not found in the snapshot" in result.stderr
    assert "`casbak snapshots`" in result.stderr


def test_dump_missing_path_names_snapshot(two_chunk_snapshot, tmp_path):
    missing = str(two_chunk_snapshot["source"] / "nope.yaml")

    result = run_casbak(tmp_path, "-r", str(two_chunk_snapshot["repo"]), "dump", "latest", missing)

    assert result.returncode == 1
    assert f"snapshot {two_chunk_snapshot['id'][:12]}" in result.stderr
    assert str(two_chunk_snapshot["source"]) in result.stderr


def test_missing_repository_suggests_check(tmp_path):
    result = run_casbak(tmp_path, "-r", str(tmp_path / "repo-typo"), "snapshots")

    assert result.returncode == 1
    assert "repo-typo: not found" in result.stderr
    assert "check --repo or CASBAK_REPOSITORY" in result.stderr


def test_missing_password_file_names_option(repository, repo_path, tmp_path):
    result = run_casbak(tmp_path, "-r", str(repo_path), "--password-file", str(tmp_path / "nofile"),
                        "snapshots", password=None)

    assert result.returncode == 1
    assert "nofile: cannot be read" in result.stderr
    assert "check --password-file or CASBAK_PASSWORD_FILE" in result.stderr


def test_missing_source_says_nothing_written(repository, repo_path, tmp_path):
    result = run_casbak(tmp_path, "-r", str(repo_path), "snapshot", str(tmp_path / "missing"))

    assert result.returncode == 2
    assert "missing: no such file or directory" in result.stderr
    assert "no snapshot was written" in result.stderr
    assert list(repo_path.glob("snapshots/*")) == []


def test_restore_accepts_date_selector(two_chunk_snapshot, tmp_path):
    help_text = run_casbak(tmp_path, "restore", "--help").stdout
    source = two_chunk_snapshot["source"]
    target = tmp_path / "out"
    today = run_casbak(tmp_path, "-r", str(two_chunk_snapshot["repo"]), "--json", "snapshots")

    assert "@2026-12-01" in help_text
    day = re.search(r'"time": "(\d{4}-\d\d-\d\d)', today.stdout)
    assert day is not None, today.stdout
    result = run_casbak(tmp_path, "-r", str(two_chunk_snapshot["repo"]), "restore", f"@{day.group(1)}",
                        "--target", str(target), "--path", str(source / "configs"))
    assert result.returncode == 0, result.stderr
    assert (target / "dpo.yaml").read_bytes() == b"beta: 0.1\n"


def test_retagged_id_names_new_id(two_chunk_snapshot, tmp_path):
    repo = str(two_chunk_snapshot["repo"])
    old_id = two_chunk_snapshot["id"]
    tagged = run_casbak(tmp_path, "-r", repo, "--json", "tag", old_id[:8], "--set", "keep-forever")
    assert tagged.returncode == 0, tagged.stderr
    new_id = re.search(r'"new_snapshot": "([0-9a-f]{64})"', tagged.stdout)
    assert new_id is not None, tagged.stdout

    result = run_casbak(tmp_path, "-r", repo, "ls", old_id[:8])

    assert result.returncode == 1
    assert f"snapshot {old_id[:8]}: forgotten (re-tagged as snapshot {new_id.group(1)})" in result.stderr


def test_unknown_id_without_forget_records(memory_repository):
    with pytest.raises(SnapshotNotFound, match="snapshot abc123: not found"):
        resolve_snapshot(memory_repository, "abc123")


def test_restore_target_is_file(two_chunk_snapshot, tmp_path):
    target = tmp_path / "afile"
    target.write_bytes(b"not a directory\n")

    result = run_casbak(tmp_path, "-r", str(two_chunk_snapshot["repo"]), "restore", "latest", "--target", str(target))

    assert result.returncode == 1
    assert f"target {target}: exists and is not a directory" in result.stderr
    assert "choose another --target" in result.stderr
    assert target.read_bytes() == b"not a directory\n"


def test_dump_closed_pipe_explains(repository, repo_path, tmp_path):
    source = tmp_path / "src"
    make_tree(source, {"big.jsonl": os.urandom(4 * 1024 * 1024)})
    snapshot_id = create_snapshot(repository, [str(source)]).manifest.id
    casbak = casbak_shim(tmp_path / "bin")
    env = {**cli_environment(tmp_path / "bin"), "CASBAK_PASSWORD": PASSWORD.decode()}
    # head exits after one byte, long before 4 MiB fit into the pipe buffer.
    pipeline = f'"{casbak}" -r "{repo_path}" dump {snapshot_id} "{source}/big.jsonl" | head -c 1 > /dev/null; exit ${{PIPESTATUS[0]}}'

    result = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True, env=env, timeout=120)

    assert result.returncode == 1
    assert "closed the pipe before the dump finished" in result.stderr
    assert "expected after `head`" in result.stderr
