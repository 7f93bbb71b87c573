"""Tree diffs between snapshots: statuses, subtree skipping, selectors, CLI output, and oracles."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import casbak
from casbak.catalog import resolve_snapshot, walk
from casbak.cli.diff_cmd import change_json, key_change_line
from casbak.cli.main import app
from casbak.errors import PathNotFound, SnapshotNotFound, UsageError
from casbak.manifest import Manifest
from casbak.operations.diff import diff_snapshots, diff_trees
from casbak.operations.snapshot import create_snapshot
from casbak.records.model import KeyChange
from casbak.store.packs import KIND_DATA, KIND_TREE
from casbak.tree import DIRECTORY, FILE, SYMLINK, Entry, Tree
from tests.conftest import CORPUS, PASSWORD, make_tree

FIXED_TIME = 1_700_000_000  # seconds; set on every exported file so only content differs


def snapshot(repository, source: Path) -> Manifest:
    return create_snapshot(repository, [str(source)]).manifest


def statuses(result, source: Path) -> dict[str, str]:
    """Map each changed path, relative to `source`, to its status."""
    prefix = os.fsencode(source).lstrip(b"/") + b"/"
    found = {}
    for change in result.changes:
        assert change.path.startswith(prefix), change.path
        found[os.fsdecode(change.path[len(prefix) :])] = change.status
    return found


def two_versions(repository, tmp_path: Path, before: dict, edit) -> tuple:
    source = tmp_path / "source"
    make_tree(source, before)
    first = snapshot(repository, source)
    edit(source)
    second = snapshot(repository, source)
    return source, diff_snapshots(repository, first, second, str(source))


# Statuses


def test_added_removed_modified_paths(repository, tmp_path):
    def edit(source: Path) -> None:
        (source / "keep.txt").write_bytes(b"changed")
        (source / "gone.txt").unlink()
        make_tree(source / "new", {"a.txt": b"a", "b.txt": b"bb"})

    source, result = two_versions(
        repository, tmp_path, {"keep.txt": b"original", "gone.txt": b"bye", "same.txt": b"same"}, edit
    )

    assert statuses(result, source) == {"keep.txt": "M", "gone.txt": "-", "new": "+", "new/a.txt": "+", "new/b.txt": "+"}
    assert result.summary.added == 3
    assert result.summary.removed == 1
    assert result.summary.modified == 1
    assert result.summary.bytes_added == len(b"changed") + len(b"a") + len(b"bb")
    assert result.summary.bytes_removed == len(b"original") + len(b"bye")


def test_diff_with_itself_is_empty(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {"a": {"b.txt": b"x"}, "c.txt": b"y"})
    manifest = snapshot(repository, source)

    result = diff_snapshots(repository, manifest, manifest)

    assert result.changes == []
    assert result.summary.total == 0
    assert result.summary.trees_read == 0


def test_empty_snapshots(repository, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    empty = snapshot(repository, source)
    empty_again = snapshot(repository, source)
    make_tree(source, {"first.txt": b"1"})
    filled = snapshot(repository, source)

    # Limited to the source: other processes may touch /tmp between the two snapshots,
    # and the mtimes of the source's parent directories are recorded too.
    assert diff_snapshots(repository, empty, empty_again, str(source)).changes == []
    assert statuses(diff_snapshots(repository, empty, filled, str(source)), source) == {"first.txt": "+"}
    assert statuses(diff_snapshots(repository, filled, empty, str(source)), source) == {"first.txt": "-"}


def test_type_changes(repository, tmp_path):
    def edit(source: Path) -> None:
        (source / "was_file").unlink()
        make_tree(source / "was_file", {"inner.txt": b"now a directory"})
        (source / "was_link").unlink()
        (source / "was_link").write_bytes(b"now a file")
        shutil.rmtree(source / "was_dir")
        (source / "was_dir").write_bytes(b"now a file too")

    before = {
        "was_file": b"plain",
        "was_link": ("symlink", "was_file"),
        "was_dir": {"old.txt": b"old"},
    }
    source, result = two_versions(repository, tmp_path, before, edit)

    assert statuses(result, source) == {
        "was_file": "T",
        "was_file/inner.txt": "+",
        "was_link": "T",
        "was_dir": "T",
        "was_dir/old.txt": "-",
    }
    by_path = {os.fsdecode(c.path).rsplit("/", 1)[-1]: c for c in result.changes}
    assert (by_path["was_link"].old.type, by_path["was_link"].new.type) == (SYMLINK, FILE)
    assert (by_path["was_file"].old.type, by_path["was_file"].new.type) == (FILE, DIRECTORY)
    assert result.summary.type_changed == 3


def test_rename_is_remove_and_add(repository, tmp_path):
    def edit(source: Path) -> None:
        (source / "old_name.jsonl").rename(source / "new_name.jsonl")

    source, result = two_versions(repository, tmp_path, {"old_name.jsonl": b'{"id": 1}\n' * 500}, edit)

    assert statuses(result, source) == {"old_name.jsonl": "-", "new_name.jsonl": "+"}
    # The same chunks back both names, so a rename moves no content bytes.
    assert result.summary.bytes_added == 0
    assert result.summary.bytes_removed == 0


def test_symlink_target_change_is_modified(repository, tmp_path):
    def edit(source: Path) -> None:
        (source / "current").unlink()
        os.symlink("run-2", source / "current")

    source, result = two_versions(repository, tmp_path, {"current": ("symlink", "run-1")}, edit)

    assert statuses(result, source) == {"current": "M"}
    assert result.changes[0].fields[0] == "content"


def test_metadata_only_changes(repository, tmp_path):
    def edit(source: Path) -> None:
        os.chmod(source / "script.sh", 0o755)
        os.utime(source / "touched.txt", (FIXED_TIME, FIXED_TIME))

    source, result = two_versions(repository, tmp_path, {"script.sh": b"echo hi\n", "touched.txt": b"t"}, edit)

    assert statuses(result, source) == {"script.sh": "U", "touched.txt": "U"}
    fields = {os.fsdecode(c.path).rsplit("/", 1)[-1]: c.fields for c in result.changes}
    assert fields["script.sh"] == ("mode",)
    assert fields["touched.txt"] == ("mtime",)
    assert result.summary.metadata_changed == 2
    assert result.summary.bytes_added == 0


def test_directory_mode_change_with_changed_content(repository, tmp_path):
    def edit(source: Path) -> None:
        (source / "shared" / "new.txt").write_bytes(b"n")
        os.chmod(source / "shared", 0o700)

    source, result = two_versions(repository, tmp_path, {"shared": {"a.txt": b"a"}}, edit)

    assert statuses(result, source) == {"shared": "U", "shared/new.txt": "+"}
    assert result.changes[0].fields == ("mode",)


def test_directory_mtime_hidden_by_content_change(repository, tmp_path):
    def edit(source: Path) -> None:
        (source / "d" / "b.txt").write_bytes(b"b")

    source, result = two_versions(repository, tmp_path, {"d": {"a.txt": b"a"}}, edit)

    assert statuses(result, source) == {"d/b.txt": "+"}


def test_non_utf8_names(repository, tmp_path):
    raw_name = b"caf\xe9.txt"
    source = tmp_path / "source"
    make_tree(source, {"plain.txt": b"p"})
    first = snapshot(repository, source)
    with open(os.path.join(os.fsencode(source), raw_name), "wb") as handle:
        handle.write(b"latin-1 name")
    second = snapshot(repository, source)

    result = diff_snapshots(repository, first, second, str(source))

    assert [c.path.rsplit(b"/", 1)[-1] for c in result.changes] == [raw_name]
    assert result.changes[0].status == "+"
    as_json = change_json(result.changes[0])
    assert as_json["path"].endswith("caf\\xe9.txt")
    assert bytes.fromhex(as_json["path_hex"]) == result.changes[0].path


def test_unchanged_subtrees_are_not_read(repository, tmp_path):
    source = tmp_path / "source"
    make_tree(source, {f"d{i:02d}": {f"f{j}.txt": f"{i}-{j}".encode() for j in range(5)} for i in range(30)})
    first = snapshot(repository, source)
    (source / "d17" / "f3.txt").write_bytes(b"edited")
    second = snapshot(repository, source)

    result = diff_snapshots(repository, first, second)

    assert [c.status for c in result.changes] == ["M"]
    # One tree per side for the root, each component of the source path, and d17;
    # the 29 unchanged directories are never loaded.
    levels = 1 + len(os.fsencode(source).strip(b"/").split(b"/")) + 1
    assert result.summary.trees_read == 2 * levels


def test_deep_tree_beyond_recursion_limit(repository, tmp_path):
    source = tmp_path / "source"
    bottom = source
    for _level in range(450):  # deeper than Python's recursion limit allows at 3 frames a level
        bottom = bottom / "d"
    bottom.mkdir(parents=True)
    (bottom / "leaf.txt").write_bytes(b"v1")
    first = snapshot(repository, source)
    (bottom / "leaf.txt").write_bytes(b"v2")
    (bottom / "new.txt").write_bytes(b"n")
    second = snapshot(repository, source)

    result = diff_snapshots(repository, first, second)

    assert [(c.path.rsplit(b"/", 1)[-1], c.status) for c in result.changes] == [(b"leaf.txt", "M"), (b"new.txt", "+")]
    assert result.changes[0].path.split(b"/").count(b"d") == 450


def test_path_limits_the_diff(repository, tmp_path):
    def edit(source: Path) -> None:
        (source / "configs" / "a.yaml").write_bytes(b"lr: 2\n")
        (source / "data.bin").write_bytes(b"other")

    source, result = two_versions(repository, tmp_path, {"configs": {"a.yaml": b"lr: 1\n"}, "data.bin": b"d"}, edit)
    first, second = result.old, result.new

    limited = diff_snapshots(repository, first, second, str(source / "configs"))

    assert statuses(limited, source) == {"configs/a.yaml": "M"}
    with pytest.raises(PathNotFound):
        diff_snapshots(repository, first, second, str(source / "missing"))


def test_python_api_accepts_selectors(repository, tmp_path):
    def edit(source: Path) -> None:
        (source / "x.txt").write_bytes(b"2")

    source, result = two_versions(repository, tmp_path, {"x.txt": b"1"}, edit)

    via_api = casbak.diff(repository, result.old.id[:10], "latest", str(source / "x.txt"))

    assert [c.status for c in via_api.changes] == ["M"]
    assert via_api.new.id == result.new.id
    assert via_api.changes[0].content is not None  # a file path turns on content diffs
    without_content = casbak.diff(repository, result.old, result.new, str(source / "x.txt"), records=False)
    assert without_content.changes[0].content is None


# Date selectors


def _manifest_at(repository, tree: bytes, moment: str) -> Manifest:
    when = dt.datetime.fromisoformat(moment).replace(tzinfo=dt.timezone.utc)
    manifest = Manifest(
        time_ns=int(when.timestamp()) * 1_000_000_000,
        hostname="host",
        username="user",
        sources=["/data"],
        tree=tree,
        program_version=casbak.__version__,
    )
    manifest.id = repository.write_manifest(manifest.encode())
    return manifest


def test_date_selectors(repository, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    tree = snapshot(repository, source).tree  # a real empty tree; its manifest is dated today
    monday_morning = _manifest_at(repository, tree, "2025-12-01T10:00:00")
    monday_afternoon = _manifest_at(repository, tree, "2025-12-01T15:00:00")
    tuesday = _manifest_at(repository, tree, "2025-12-02T09:00:00")

    assert resolve_snapshot(repository, "@2025-12-01").id == monday_afternoon.id
    assert resolve_snapshot(repository, "@2025-12-02").id == tuesday.id
    assert resolve_snapshot(repository, "@2025-12-01T12:00").id == monday_morning.id
    assert resolve_snapshot(repository, "@2025-12-01T15:00").id == monday_afternoon.id
    assert resolve_snapshot(repository, "@2025-12-02T08:59:59Z").id == monday_afternoon.id
    assert resolve_snapshot(repository, "@2025-12-01T16:00+01:00").id == monday_afternoon.id
    with pytest.raises(SnapshotNotFound):
        resolve_snapshot(repository, "@2025-11-30")
    with pytest.raises(SnapshotNotFound):
        resolve_snapshot(repository, "@2025-12-01T09:59")
    with pytest.raises(UsageError):
        resolve_snapshot(repository, "@2025-13-01")


def test_latest_steps_back(repository, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    tree = snapshot(repository, source).tree
    first = _manifest_at(repository, tree, "2025-12-01T10:00:00")
    second = _manifest_at(repository, tree, "2025-12-02T10:00:00")
    newest = resolve_snapshot(repository, "latest")

    assert resolve_snapshot(repository, "latest~0").id == newest.id
    assert resolve_snapshot(repository, "latest~1").id == second.id
    assert resolve_snapshot(repository, "latest~2").id == first.id
    with pytest.raises(SnapshotNotFound, match="only 3"):
        resolve_snapshot(repository, "latest~3")
    for bad in ("latest~", "latest~-1", "latest~one", "latest~\u00b2"):
        with pytest.raises(UsageError):
            resolve_snapshot(repository, bad)


# Command line


def _run(repo_path, *args: str):
    runner = CliRunner()
    env = {"CASBAK_PASSWORD": PASSWORD.decode()}
    return runner.invoke(app, ["--repo", str(repo_path), *args], env=env, catch_exceptions=False)


def test_cli_text_json_and_stat(repository, repo_path, tmp_path):
    def edit(source: Path) -> None:
        (source / "cfg.yaml").write_bytes(b"optimizer:\n  lr: 1.0e-6\n")
        (source / "added.txt").write_bytes(b"new")

    source, result = two_versions(repository, tmp_path, {"cfg.yaml": b"optimizer:\n  lr: 5.0e-7\n"}, edit)
    old_id, new_id = result.old.id[:12], result.new.id[:12]

    text = _run(repo_path, "diff", old_id, new_id, "--records")
    as_json = _run(repo_path, "--json", "diff", old_id, new_id, "--records")
    stat = _run(repo_path, "diff", old_id, new_id, "--stat")

    assert text.exit_code == 0, text.output
    assert "optimizer.lr: 5e-07 -> 1e-06" in text.output
    assert f"+  {os.fsdecode(source).lstrip('/')}/added.txt" in text.output
    body = json.loads(as_json.output)
    assert body["schema"] == "casbak-diff/1"
    assert body["summary"]["added"] == 1
    assert body["summary"]["modified"] == 1
    modified = [c for c in body["changes"] if c["status"] == "M"][0]
    assert modified["content"]["keys"] == [{"path": "optimizer.lr", "status": "changed", "old": 5e-07, "new": 1e-06}]
    assert modified["path_hex"] is None
    assert stat.output.startswith("1 added, 0 removed, 1 modified, 0 type changed, 0 metadata changed;")
    assert "cfg.yaml" not in stat.output


def test_cli_long_values_show_their_difference():
    prefix = "Human: " + "x" * 200
    change = KeyChange("chosen", "changed", old=prefix + " yes", new=prefix + " no")

    line = key_change_line(change)

    old_text, new_text = line.split(" -> ")
    assert old_text == "chosen: ..." + "x" * 14 + ' yes"'
    assert new_text == "..." + "x" * 14 + ' no"'


# Oracle: git's own diff of the same commits


def _git(work: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=work, capture_output=True, text=True, check=True)
    return result.stdout


def _export(work: Path, commit: str, target: Path) -> None:
    """Extract a commit into `target` (same path every time) with fixed mtimes."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=work, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    for root, dirs, files in os.walk(target):
        for name in dirs + files:
            os.utime(os.path.join(root, name), (FIXED_TIME, FIXED_TIME), follow_symlinks=False)
    os.utime(target, (FIXED_TIME, FIXED_TIME))


def _replace_line(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path} no longer contains {old!r}"
    path.write_text(text.replace(old, new, 1))


def _edit_commit_two(configs: Path) -> None:
    _replace_line(configs / "train_configs/dpo/default.yaml", "learning_rate: 5.0e-7", "learning_rate: 1.0e-6")
    with open(configs / "ds_configs/deepspeed_zero3.yaml", "a") as handle:
        handle.write("# appended by the test\n")
    (configs / "beaker_configs/alpaca_7B_lora.yaml").unlink()
    (configs / "beaker_configs/alpaca_7B.yaml").rename(configs / "beaker_configs/alpaca_7B_renamed.yaml")
    make_tree(configs / "new_suite", {"a.yaml": b"seed: 1\n", "nested": {"b.toml": b"x = 2\n"}})
    os.symlink("default.yaml", configs / "train_configs/dpo/current.yaml")


def _edit_commit_three(configs: Path) -> None:
    shutil.rmtree(configs / "judge_configs")
    (configs / "compression").rename(configs / "compression_moved")
    (configs / "new_suite/a.yaml").write_text("seed: 2\n")
    _replace_line(configs / "train_configs/dpo/default.yaml", "num_epochs: 3", "num_epochs: 1")
    (configs / "train_configs/dpo/current.yaml").unlink()
    (configs / "train_configs/dpo/current.yaml").write_text("pinned: true\n")


def _git_statuses(work: Path, old: str, new: str) -> dict[str, str]:
    output = _git(work, "diff", "--no-renames", "--name-status", old, new)
    mapping = {"A": "+", "D": "-", "M": "M", "T": "T"}
    found = {}
    for line in output.splitlines():
        status, path = line.split("\t", 1)
        found[path] = mapping[status]
    return found


@pytest.mark.skipif(not (CORPUS / "configs").is_dir(), reason="corpus configs not available")
@pytest.mark.skipif(shutil.which("git") is None or shutil.which("tar") is None, reason="git and tar are required")
def test_matches_git_name_status(repository, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    _git(work, "init", "-q")
    _git(work, "config", "user.email", "test@example.invalid")
    _git(work, "config", "user.name", "casbak test")
    shutil.copytree(CORPUS / "configs", work / "configs")
    commits = []
    for edit in (None, _edit_commit_two, _edit_commit_three):
        if edit is not None:
            edit(work / "configs")
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "-m", f"step {len(commits)}")
        commits.append(_git(work, "rev-parse", "HEAD").strip())

    export = tmp_path / "export"
    manifests = []
    for commit in commits:
        _export(work, commit, export)
        manifests.append(snapshot(repository, export))

    pairs = [(0, 1), (1, 2), (0, 2), (2, 0)]
    for old, new in pairs:
        result = diff_snapshots(repository, manifests[old], manifests[new], str(export))
        found = statuses(result, export)
        # git lists files and symlinks only, never directories.
        files = {path: status for path, status in found.items() if _is_file(result, path)}
        expected = _git_statuses(work, commits[old], commits[new])
        assert files == expected, f"commits {old}->{new}"
        assert "U" not in found.values()
    forward = statuses(diff_snapshots(repository, manifests[0], manifests[1], str(export)), export)
    assert forward["configs/new_suite"] == "+"
    assert forward["configs/new_suite/nested"] == "+"
    later = statuses(diff_snapshots(repository, manifests[1], manifests[2], str(export)), export)
    assert later["configs/train_configs/dpo/current.yaml"] == "T"


def _is_file(result, relative: str) -> bool:
    for change in result.changes:
        if os.fsdecode(change.path).endswith("/" + relative):
            entry = change.new or change.old
            return entry.type != DIRECTORY
    raise AssertionError(f"{relative} is not among the changes")


# Property: the pruned walk equals a brute-force comparison of two full listings

NAMES = st.sampled_from([b"a", b"b", b"c"])
LEAVES = st.one_of(
    st.tuples(st.just(FILE), st.sampled_from([b"", b"x", b"y"]), st.sampled_from([0o644, 0o755])),
    st.tuples(st.just(SYMLINK), st.sampled_from([b"a", b"../b"]), st.just(0o777)),
)
TREES = st.recursive(
    st.dictionaries(NAMES, LEAVES, max_size=3),
    lambda children: st.dictionaries(NAMES, st.one_of(LEAVES, children), max_size=3),
    max_leaves=12,
)


def _store_tree(repository, writer, spec: dict) -> bytes:
    entries = []
    for name, value in spec.items():
        if isinstance(value, dict):
            entries.append(Entry(name=name, type=DIRECTORY, mode=0o755, subtree=_store_tree(repository, writer, value)))
        elif value[0] == FILE:
            digest, _new = writer.put(KIND_DATA, value[1]) if value[1] else (None, False)
            chunks = [digest] if digest else []
            content = repository.hasher.digest(value[1])
            entries.append(Entry(name=name, type=FILE, mode=value[2], size=len(value[1]), content=content, chunks=chunks))
        else:
            entries.append(Entry(name=name, type=SYMLINK, mode=value[2], target=value[1]))
    digest, _new = writer.put(KIND_TREE, Tree(entries).encode())
    return digest


def _listing(repository, root: bytes) -> dict[bytes, tuple]:
    return {path: (e.type, e.content or e.target, e.mode) for path, e in walk(repository, root)}


def _brute_force(old: dict[bytes, tuple], new: dict[bytes, tuple]) -> dict[bytes, str]:
    expected = {}
    for path in set(old) | set(new):
        if path not in new:
            expected[path] = "-"
        elif path not in old:
            expected[path] = "+"
        elif old[path][0] != new[path][0]:
            expected[path] = "T"
        elif old[path][1] != new[path][1]:
            expected[path] = "M"
        elif old[path][2] != new[path][2]:
            expected[path] = "U"
    return expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(old_spec=TREES, new_spec=TREES)
def test_tree_diff_equals_brute_force(memory_repository, old_spec, new_spec):
    with memory_repository.writer() as writer:
        old_root = _store_tree(memory_repository, writer, old_spec)
        new_root = _store_tree(memory_repository, writer, new_spec)
        writer.flush()

    changes = diff_trees(memory_repository, old_root, new_root)

    found = {change.path: change.status for change in changes}
    assert len(found) == len(changes), "a path was reported twice"
    paths = [change.path for change in changes]
    assert paths == sorted(paths, key=lambda path: path.split(b"/")), "not in depth-first name order"
    expected = _brute_force(_listing(memory_repository, old_root), _listing(memory_repository, new_root))
    assert found == expected
