"""`casbak gc` and `casbak forget` with `--profile`: retention keys from the config file, flags on top."""

from __future__ import annotations

from pathlib import Path

import pytest

from casbak.catalog import load_manifests
from casbak.operations.snapshot import create_snapshot
from casbak.store.repository import Repository
from tests.cli.test_snapshot_cli import run_casbak, run_json
from tests.conftest import FAST_KDF, PASSWORD, make_tree, small_config

SNAPSHOT_TAGS = [["golden"], [], [], []]


@pytest.fixture
def profile_setup(tmp_path):
    """A repository with four snapshots of one source (oldest tagged `golden`) and a config file."""
    repo = tmp_path / "repo"
    Repository.init(str(repo), PASSWORD, config=small_config(), kdf=FAST_KDF)
    repository = Repository.open(str(repo), PASSWORD)
    source = tmp_path / "source"
    ids = []
    for number, tags in enumerate(SNAPSHOT_TAGS):
        make_tree(source, {"prefs.jsonl": f"pair {number}\n".encode() * 200})
        ids.append(create_snapshot(repository, [str(source)], tags=tags).manifest.id)
    password_file = tmp_path / "password"
    password_file.write_bytes(PASSWORD)
    config = tmp_path / "config.toml"
    return {"repo": repo, "ids": ids, "config": config, "password_file": password_file}


def write_profile(setup: dict, retention: str) -> None:
    setup["config"].write_text(
        "[profiles.p]\n"
        f'repository = "{setup["repo"]}"\n'
        f'password-file = "{setup["password_file"]}"\n'
        f"{retention}\n"
    )


def kept_ids(decisions: list[dict]) -> list[str]:
    return [d["id"] for d in decisions if d["keep"]]


def reasons_by_id(decisions: list[dict]) -> dict[str, list[str]]:
    return {d["id"]: d["reasons"] for d in decisions}


def run_profile(setup: dict, *args: str) -> dict:
    # No CASBAK_PASSWORD: the password must come from the profile's password-file.
    return run_json("--config", str(setup["config"]), "--profile", "p", *args, env={"CASBAK_PASSWORD": None})


def test_gc_profile_keep_last(profile_setup):
    write_profile(profile_setup, "keep-last = 2")
    ids = profile_setup["ids"]

    report = run_profile(profile_setup, "gc", "--dry-run")

    decisions = report["forget"]["decisions"]
    assert sorted(kept_ids(decisions)) == sorted(ids[2:])
    assert reasons_by_id(decisions)[ids[3]] == ["last"]
    assert reasons_by_id(decisions)[ids[0]] == []
    assert report["forget"]["dry_run"] is True


def test_gc_profile_after_command_name(profile_setup):
    write_profile(profile_setup, "keep-last = 1")

    result = run_json("gc", "--profile", "p", "--config", str(profile_setup["config"]), "--dry-run",
                      env={"CASBAK_PASSWORD": None})

    assert kept_ids(result["forget"]["decisions"]) == [profile_setup["ids"][3]]


def test_gc_flag_overrides_profile_value(profile_setup):
    write_profile(profile_setup, "keep-last = 1\nkeep-tag = [\"golden\"]")
    ids = profile_setup["ids"]

    report = run_profile(profile_setup, "gc", "--dry-run", "--keep-last", "3")

    decisions = report["forget"]["decisions"]
    assert sorted(kept_ids(decisions)) == sorted(ids)
    assert reasons_by_id(decisions)[ids[0]] == ["tag golden"]
    assert reasons_by_id(decisions)[ids[1]] == ["last"]


def test_gc_explicit_zero_overrides_profile(profile_setup):
    write_profile(profile_setup, "keep-last = 1\nkeep-tag = [\"golden\"]")
    ids = profile_setup["ids"]

    report = run_profile(profile_setup, "gc", "--dry-run", "--keep-last", "0")

    assert kept_ids(report["forget"]["decisions"]) == [ids[0]]


def test_gc_profile_tag_and_within(profile_setup):
    write_profile(profile_setup, "keep-last = 1\nkeep-tag = \"golden\"\nkeep-within = \"1d\"")

    report = run_profile(profile_setup, "gc", "--dry-run")

    reasons = reasons_by_id(report["forget"]["decisions"])
    newest, oldest = profile_setup["ids"][3], profile_setup["ids"][0]
    assert "last" in reasons[newest]
    assert "tag golden" in reasons[oldest]
    # All four snapshots were taken within seconds, so one day before the newest keeps them all.
    assert all(any(r.startswith("within") for r in rule_list) for rule_list in reasons.values())


def test_gc_profile_without_retention(profile_setup):
    write_profile(profile_setup, "tags = [\"nightly\"]")

    report = run_profile(profile_setup, "gc", "--dry-run")

    assert report["forget"] is None
    assert report["prune"]["dry_run"] is True


def test_forget_profile_dry_run(profile_setup):
    write_profile(profile_setup, "keep-last = 2")
    ids = profile_setup["ids"]

    result = run_profile(profile_setup, "forget", "--dry-run")

    assert sorted(kept_ids(result["decisions"])) == sorted(ids[2:])
    assert result["removed"] == []


def test_forget_profile_removes_snapshots(profile_setup):
    write_profile(profile_setup, "keep-last = 3")
    ids = profile_setup["ids"]

    result = run_profile(profile_setup, "forget")

    remaining = [m.id for m in load_manifests(Repository.open(str(profile_setup["repo"]), PASSWORD))]
    assert result["removed"] == [ids[0]]
    assert sorted(remaining) == sorted(ids[1:])


def test_forget_ids_ignore_profile_retention(profile_setup):
    write_profile(profile_setup, "keep-last = 3")
    ids = profile_setup["ids"]

    result = run_profile(profile_setup, "forget", "--dry-run", ids[3][:12])

    assert [d["id"] for d in result["decisions"]] == [ids[3]]


def test_gc_profile_invalid_retention_value(profile_setup):
    write_profile(profile_setup, "keep-last = \"two\"")

    result = run_casbak("--config", str(profile_setup["config"]), "--profile", "p", "gc", "--dry-run",
                        env={"CASBAK_PASSWORD": None})

    assert result.returncode == 2
    assert b"keep-last" in result.stderr


def test_gc_unknown_profile(profile_setup):
    write_profile(profile_setup, "keep-last = 1")

    result = run_casbak("--config", str(profile_setup["config"]), "--profile", "missing", "gc", "--dry-run")

    assert result.returncode == 2
    assert b"profile 'missing'" in result.stderr
    assert Path(profile_setup["repo"]).exists()


def test_profile_retention_scoped_to_its_sources(profile_setup, tmp_path):
    # One profile's retention judged every group, so it could thin another profile's snapshots.
    repository = Repository.open(str(profile_setup["repo"]), PASSWORD)
    other = tmp_path / "other"
    make_tree(other, {"config.yaml": b"lr: 1e-6\n"})
    other_ids = [create_snapshot(repository, [str(other)]).manifest.id for _ in range(3)]
    profile_setup["config"].write_text(
        "[profiles.p]\n"
        f'repository = "{profile_setup["repo"]}"\n'
        f'password-file = "{profile_setup["password_file"]}"\n'
        f'sources = ["{tmp_path / "source"}"]\n'
        "keep-last = 1\n"
    )

    report = run_profile(profile_setup, "forget", "--dry-run")

    judged = [d["id"] for d in report["decisions"]]
    assert sorted(judged) == sorted(profile_setup["ids"])
    assert kept_ids(report["decisions"]) == [profile_setup["ids"][3]]
    assert not set(other_ids) & set(judged)


def test_forget_path_option_limits_policy(profile_setup, tmp_path):
    repository = Repository.open(str(profile_setup["repo"]), PASSWORD)
    other = tmp_path / "other"
    make_tree(other, {"config.yaml": b"lr: 1e-6\n"})
    other_ids = [create_snapshot(repository, [str(other)]).manifest.id for _ in range(2)]

    report = run_json("-r", str(profile_setup["repo"]), "forget", "--keep-last", "1", "--path", str(other))

    assert sorted(d["id"] for d in report["decisions"]) == sorted(other_ids)
    remaining = {m.id for m in load_manifests(repository)}
    assert set(profile_setup["ids"]) <= remaining
    assert other_ids[0] not in remaining
