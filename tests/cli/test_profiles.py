"""Config file profiles, command-line overrides and the one-run-per-profile lock."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from casbak.cli.profiles import ProfileLocked, load_profile, profile_lock
from casbak.errors import EXIT_LOCKED, UsageError
from tests.cli.test_snapshot_cli import CLI, run_casbak, run_json
from tests.conftest import PASSWORD, make_tree


def write_config(directory: Path, text: str) -> Path:
    path = directory / "casbak" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def config_dir() -> Path:
    # The autouse fixture of tests/conftest.py points XDG_CONFIG_HOME at a fresh directory.
    return Path(os.environ["XDG_CONFIG_HOME"])


def test_load_profile_reads_all_keys(config_dir):
    write_config(config_dir, """
[profiles.nightly]
repository = "/srv/backup"
password-file = "/etc/casbak/password"
sources = ["/data/alignment", "/data/configs"]
exclude = "*.tmp"
exclude-larger-than = "2G"
one-file-system = true
tags = ["nightly"]
keep-last = 3
keep-daily = 14
keep-within = "30d"
keep-tag = ["release"]
notify-url = "http://127.0.0.1:9/hook"
notify-on = "always"
metrics-file = "/tmp/casbak.prom"
""")

    profile = load_profile("nightly")

    assert profile.repository == "/srv/backup"
    assert profile.sources == ["/data/alignment", "/data/configs"]
    assert profile.exclude == ["*.tmp"], "a single string becomes a one-item list"
    assert profile.one_file_system is True
    assert profile.retention == {"keep-last": 3, "keep-daily": 14, "keep-within": "30d", "keep-tag": ["release"]}
    assert profile.notify_on == "always"


def test_load_profile_unknown_key(config_dir):
    write_config(config_dir, '[profiles.nightly]\nrepositry = "/srv/backup"\n')

    with pytest.raises(UsageError, match="unknown key 'repositry'"):
        load_profile("nightly")


def test_load_profile_wrong_type(config_dir):
    write_config(config_dir, '[profiles.nightly]\nkeep-daily = "seven"\n')

    with pytest.raises(UsageError, match="keep-daily must be an integer of -1 or more"):
        load_profile("nightly")


def test_load_profile_missing_names_known(config_dir):
    write_config(config_dir, '[profiles.nightly]\nrepository = "/r"\n[profiles.hourly]\nrepository = "/r"\n')

    with pytest.raises(UsageError, match="profiles defined: hourly, nightly"):
        load_profile("weekly")


def test_load_profile_invalid_toml(config_dir):
    write_config(config_dir, "[profiles.nightly\n")

    with pytest.raises(UsageError, match="invalid TOML"):
        load_profile("nightly")


def test_explicit_config_file_missing(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_profile("nightly", str(tmp_path / "absent.toml"))


def test_profile_run_uses_profile_values(repository, repo_path, tmp_path, config_dir):
    source = tmp_path / "prefs"
    make_tree(source, {"a.jsonl": b"{}\n", "b.tmp": b"scratch"})
    password_file = tmp_path / "password"
    password_file.write_bytes(PASSWORD + b"\n")
    write_config(config_dir, f"""
[profiles.nightly]
repository = "{repo_path}"
password-file = "{password_file}"
sources = ["{source}"]
exclude = ["*.tmp"]
tags = ["nightly", "prefs"]
""")

    report = run_json("snapshot", "--profile", "nightly", env={"CASBAK_PASSWORD": None})
    listed = run_json("snapshots", "--profile", "nightly")

    assert report["profile"] == "nightly"
    assert report["stats"]["excluded"] == 1
    assert listed[0]["tags"] == ["nightly", "prefs"]


def test_command_line_overrides_profile(repository, repo_path, tmp_path, config_dir):
    source = tmp_path / "prefs"
    make_tree(source, {"a.jsonl": b"{}\n", "b.tmp": b"scratch"})
    write_config(config_dir, f"""
[profiles.nightly]
repository = "/nonexistent/repository"
sources = ["{source}"]
exclude = ["*.jsonl"]
tags = ["nightly"]
""")

    report = run_json("snapshot", "--profile", "nightly", "--repo", str(repo_path), "--exclude", "*.tmp", "--tag", "manual")
    listed = run_json("snapshots", repo=repo_path)

    assert report["repository"] == str(repo_path)
    assert report["stats"]["files_new"] == 1
    assert listed[0]["tags"] == ["manual"]


def test_config_option_selects_file(repository, repo_path, tmp_path):
    source = tmp_path / "prefs"
    make_tree(source, {"a.jsonl": b"{}\n"})
    config = tmp_path / "other.toml"
    config.write_text(f'[profiles.adhoc]\nrepository = "{repo_path}"\nsources = ["{source}"]\n')

    report = run_json("--config", str(config), "--profile", "adhoc", "snapshot")

    assert report["status"] == "success"


def test_profile_lock_in_process():
    with profile_lock("nightly"):
        with pytest.raises(ProfileLocked, match="another run is still in progress"):
            with profile_lock("nightly"):
                pytest.fail("a second holder must not get the lock")
        with profile_lock("hourly"):
            assert True, "other profiles are independent"
    with profile_lock("nightly"):
        assert True, "the lock is free again after release"


def test_second_profile_run_exits_4(repository, repo_path, tmp_path, config_dir):
    started = tmp_path / "started"
    release = tmp_path / "release"
    # The source command signals that it runs, then waits, which keeps the first run busy.
    command = f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done; echo dump"
    write_config(config_dir, f"""
[profiles.db]
repository = "{repo_path}"
stdin-from-command = "{command}"
stdin-filename = "db.dump"
""")
    environment = {**os.environ, "CASBAK_PASSWORD": PASSWORD.decode()}
    first = subprocess.Popen(CLI + ["--json", "snapshot", "--profile", "db"], env=environment,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "the first run never started its command"
            time.sleep(0.05)

        second = subprocess.run(CLI + ["--json", "snapshot", "--profile", "db"], env=environment,
                                capture_output=True, timeout=60)
    finally:
        release.touch()
        first_out, first_err = first.communicate(timeout=60)

    assert second.returncode == EXIT_LOCKED
    assert b"another run is still in progress" in second.stderr
    assert json.loads(second.stdout)["exit_code"] == EXIT_LOCKED
    assert first.returncode == 0, first_err.decode()
    assert json.loads(first_out)["status"] == "success"


def test_locked_profile_message_names_lock_file(repository, repo_path, tmp_path, config_dir):
    write_config(config_dir, f'[profiles.db]\nrepository = "{repo_path}"\nsources = ["{tmp_path}"]\n')

    with profile_lock("db") as lock_path:
        result = run_casbak("snapshot", "--profile", "db")

    assert result.returncode == EXIT_LOCKED
    assert str(lock_path).encode() in result.stderr
