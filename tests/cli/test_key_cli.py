"""`casbak key` commands and the password sources, run through the real entry point."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from casbak.cli.main import main
from casbak.store.keys import list_key_ids
from casbak.store.repository import Repository
from tests.conftest import FAST_KDF, PASSWORD, small_config

NEW_PASSWORD = "a fresh password for the key commands"
FAST_NEW_KEY = ["--kdf-n", str(FAST_KDF.n)]


@pytest.fixture
def run(monkeypatch, capsys):
    """Run `casbak ARGS...` in this process; return (exit code, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["casbak", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        code = exit_info.value.code
        return (0 if code is None else int(code)), captured.out, captured.err

    return invoke


@pytest.fixture
def encrypted(repo_path, monkeypatch) -> Path:
    Repository.init(str(repo_path), PASSWORD, config=small_config(), kdf=FAST_KDF)
    monkeypatch.setenv("CASBAK_REPOSITORY", str(repo_path))
    return repo_path


def store_state(root: Path) -> dict[str, tuple[int, int]]:
    state = {}
    for directory, subdirs, files in os.walk(root):
        for name in subdirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            state[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return state


def test_key_list_json_marks_current(encrypted, run, monkeypatch):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())

    code, out, _err = run("key", "list", "--json")

    keys = json.loads(out)
    assert code == 0
    assert len(keys) == 1
    assert keys[0]["current"] is True
    assert set(keys[0]) == {"id", "current", "created", "host", "user"}
    assert keys[0]["id"] == list_key_ids(Repository.open(str(encrypted), PASSWORD).backend)[0]


def test_key_list_text_marks_current(encrypted, run, monkeypatch):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())

    code, out, _err = run("key", "list")

    rows = out.splitlines()[1:]
    assert code == 0
    assert len(rows) == 1
    assert rows[0].startswith("* ")


def test_key_add_from_env_then_remove(encrypted, run, monkeypatch):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())
    monkeypatch.setenv("CASBAK_NEW_PASSWORD", NEW_PASSWORD)

    code, out, _err = run("--json", "key", "add", *FAST_NEW_KEY)
    added = json.loads(out)["added"]

    assert code == 0
    assert Repository.open(str(encrypted), NEW_PASSWORD.encode()).key_id == added

    monkeypatch.setenv("CASBAK_PASSWORD", NEW_PASSWORD)
    old = Repository.open(str(encrypted), PASSWORD).key_id
    code, out, _err = run("key", "remove", old[:8], "--json")

    assert code == 0
    assert json.loads(out) == {"removed": old}
    assert list_key_ids(Repository.open(str(encrypted), NEW_PASSWORD.encode()).backend) == [added]


def test_key_add_from_file(encrypted, run, monkeypatch, tmp_path):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())
    secret = tmp_path / "new-password"
    secret.write_text(NEW_PASSWORD + "\n")

    code, out, _err = run("key", "add", "--new-password-file", str(secret), *FAST_NEW_KEY)

    assert code == 0
    assert out.startswith("added key ")
    assert Repository.open(str(encrypted), NEW_PASSWORD.encode()).master_keys is not None


def test_key_add_without_new_password(encrypted, run, monkeypatch):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())

    code, _out, err = run("key", "add", *FAST_NEW_KEY)

    assert code == 1
    assert "no new password given" in err
    assert len(list_key_ids(Repository.open(str(encrypted), PASSWORD).backend)) == 1


def test_key_remove_in_use_rejected(encrypted, run, monkeypatch):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())
    current = Repository.open(str(encrypted), PASSWORD).key_id

    code, _out, err = run("key", "remove", current)

    assert code == 2
    assert "in use" in err
    assert list_key_ids(Repository.open(str(encrypted), PASSWORD).backend) == [current]


def test_key_passwd_swaps_password(encrypted, run, monkeypatch):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())
    monkeypatch.setenv("CASBAK_NEW_PASSWORD", NEW_PASSWORD)
    old = Repository.open(str(encrypted), PASSWORD).key_id

    code, out, _err = run("key", "passwd", "--json", *FAST_NEW_KEY)
    result = json.loads(out)

    assert code == 0
    assert result["removed"] == old
    assert Repository.open(str(encrypted), NEW_PASSWORD.encode()).key_id == result["added"]
    monkeypatch.setenv("CASBAK_PASSWORD", "correct horse battery staple")
    code, _out, err = run("key", "list")
    assert code == 1
    assert "wrong password" in err


def test_key_commands_reject_unencrypted(repo_path, run):
    Repository.init(str(repo_path), None, config=small_config(encrypted=False))

    code, _out, err = run("-r", str(repo_path), "key", "list")

    assert code == 2
    assert "not encrypted" in err


def test_wrong_password_exit_one_writes_nothing(encrypted, run, monkeypatch, tmp_path):
    monkeypatch.setenv("CASBAK_PASSWORD", "not the password")
    monkeypatch.setenv("CASBAK_NEW_PASSWORD", NEW_PASSWORD)
    source = tmp_path / "source"
    source.mkdir()
    (source / "a.txt").write_bytes(b"data that must not be stored")
    before = store_state(encrypted)
    commands = (
        ["key", "list"],
        ["key", "add", *FAST_NEW_KEY],
        ["key", "passwd", *FAST_NEW_KEY],
        ["snapshots"],
        ["snapshot", str(source)],
    )

    for command in commands:
        code, out, err = run(*command)
        assert code == 1, command
        assert "wrong password" in err, command
        assert out == "", command

    assert store_state(encrypted) == before


def test_password_file_source(encrypted, run, tmp_path):
    secret = tmp_path / "password"
    secret.write_bytes(PASSWORD + b"\n")

    code, out, _err = run("--password-file", str(secret), "key", "list", "--json")

    assert code == 0
    assert len(json.loads(out)) == 1


def test_password_file_missing(encrypted, run, tmp_path):
    missing = tmp_path / "no-such-file"

    code, _out, err = run("--password-file", str(missing), "key", "list")

    assert code == 1
    assert f"password file {missing}" in err
    assert "No such file" in err


def test_password_command_source(encrypted, run, tmp_path):
    command = f"printf '%s\\n' {shlex.quote(PASSWORD.decode())}"

    code, out, _err = run("--password-command", command, "key", "list", "--json")

    assert code == 0
    assert json.loads(out)[0]["current"] is True


def test_password_command_failure(encrypted, run):
    code, _out, err = run("--password-command", "echo vault sealed >&2; exit 3", "key", "list")

    assert code == 1
    assert "exited with status 3" in err
    assert "vault sealed" in err


def test_env_password_takes_precedence(encrypted, run, monkeypatch, tmp_path):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())
    wrong = tmp_path / "wrong"
    wrong.write_text("something else")

    code, _out, _err = run("--password-file", str(wrong), "key", "list")

    assert code == 0


def test_no_password_source(encrypted, run):
    code, _out, err = run("key", "list")

    assert code == 1
    assert "is encrypted" in err
    assert "CASBAK_PASSWORD" in err


def test_key_add_prompts_twice_on_terminal(encrypted, run, monkeypatch):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    answers = iter([NEW_PASSWORD, NEW_PASSWORD])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))

    code, _out, _err = run("key", "add", *FAST_NEW_KEY)

    assert code == 0
    assert Repository.open(str(encrypted), NEW_PASSWORD.encode()).master_keys is not None


def test_key_add_prompt_mismatch(encrypted, run, monkeypatch):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    answers = iter([NEW_PASSWORD, NEW_PASSWORD + "x"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))

    code, _out, err = run("key", "add", *FAST_NEW_KEY)

    assert code == 2
    assert "differ" in err
    assert len(list_key_ids(Repository.open(str(encrypted), PASSWORD).backend)) == 1


def test_key_add_empty_new_password(encrypted, run, monkeypatch):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())
    monkeypatch.setenv("CASBAK_NEW_PASSWORD", "")

    code, _out, err = run("key", "add", *FAST_NEW_KEY)

    assert code == 2
    assert "empty" in err


def test_key_add_rejects_weak_kdf(encrypted, run, monkeypatch):
    monkeypatch.setenv("CASBAK_PASSWORD", PASSWORD.decode())
    monkeypatch.setenv("CASBAK_NEW_PASSWORD", NEW_PASSWORD)

    code, _out, err = run("key", "add", "--kdf-n", "1000")

    assert code == 2
    assert "power of two" in err


def test_insecure_repository_needs_no_password(repo_path, run, tmp_path):
    code, _out, _err = run("-r", str(repo_path), "init", "--insecure-no-encryption", "--chunk-avg", "4")
    source = tmp_path / "source"
    source.mkdir()
    (source / "readme.txt").write_bytes(b"stored in the clear")
    snapshot_code, _out, _err = run("-r", str(repo_path), "snapshot", str(source))
    list_code, out, _err = run("-r", str(repo_path), "--json", "snapshots")

    assert code == 0
    assert snapshot_code == 0
    assert list_code == 0
    assert len(json.loads(out)) == 1
    assert (repo_path / "config").read_bytes()[2] == 0
    assert not (repo_path / "keys").exists()
