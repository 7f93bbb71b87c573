"""Exclude rules, size limits and streamed sources of a snapshot (Python API)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest
from hypothesis import given, strategies as st

from casbak.catalog import load_manifests, lookup_path, walk
from casbak.errors import UsageError
from casbak.operations.snapshot import create_snapshot
from casbak.operations.sources import (
    CommandSource,
    PathFilter,
    SourceCommandFailed,
    StreamSource,
    normalize_stream_name,
    parse_size,
    read_exclude_files,
)
from tests.conftest import make_tree


def stored_paths(repository, manifest, root) -> set[str]:
    prefix = str(root).lstrip("/")
    entry = lookup_path(repository, manifest.tree, str(root))
    return {path.decode()[len(prefix) + 1 :] for path, _entry in walk(repository, entry.subtree, prefix.encode())}


def read_stored(repository, manifest, path) -> bytes:
    entry = lookup_path(repository, manifest.tree, path)
    return b"".join(repository.iter_objects(entry.chunks))


GITIGNORE_TREE = {
    "a.tmp": b"scratch",
    "keep.tmp": b"kept on purpose",
    "notes.txt": b"notes",
    "build": {"out.bin": b"artifact"},
    "src": {"build": {"gen.py": b"print(1)"}, "main.py": b"main", "x.tmp": b"x"},
    "models": {"cache": {"blob": b"cached"}, "deep": {"cache": {"more": b"m"}}, "weights.bin": b"w"},
}


def test_exclude_follows_gitignore_semantics(repository, tmp_path):
    source = tmp_path / "data"
    make_tree(source, GITIGNORE_TREE)
    rules = PathFilter(patterns=["*.tmp", "/build/", "!keep.tmp", "**/cache/**"])

    result = create_snapshot(repository, [str(source)], exclude=rules)
    paths = stored_paths(repository, result.manifest, source)

    assert "a.tmp" not in paths
    assert "src/x.tmp" not in paths
    assert "keep.tmp" in paths
    assert "build" not in paths
    assert "src/build/gen.py" in paths, "/build/ is anchored to the source root"
    assert "models/cache/blob" not in paths
    assert "models/deep/cache/more" not in paths
    assert "models/weights.bin" in paths
    assert "notes.txt" in paths
    assert result.stats.excluded >= 5


def test_exclude_larger_than_keeps_small_files(repository, tmp_path):
    source = tmp_path / "data"
    make_tree(source, {"big.bin": os.urandom(5000), "small.bin": b"s" * 100, "dir": {"edge.bin": b"e" * 1024}})

    result = create_snapshot(repository, [str(source)], exclude=PathFilter(max_file_size=parse_size("1K")))
    paths = stored_paths(repository, result.manifest, source)

    assert paths == {"small.bin", "dir", "dir/edge.bin"}
    assert result.stats.excluded == 1


def test_one_file_system_keeps_same_device(repository, tmp_path):
    source = tmp_path / "data"
    make_tree(source, {"a": {"b.txt": b"b"}})

    result = create_snapshot(repository, [str(source)], one_file_system=True)

    assert stored_paths(repository, result.manifest, source) == {"a", "a/b.txt"}


def test_one_file_system_skips_other_device(tmp_path):
    # /proc is a different file system from any temporary directory on a normal system.
    proc = os.stat("/proc")
    if proc.st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/proc is on the same device as the temporary directory")
    rules = PathFilter(one_file_system=True, roots=[os.fsencode(tmp_path)])

    assert rules.reason(b"/proc", proc) is None, "paths outside every source are not judged"
    rules.set_roots([b"/"])
    assert rules.reason(b"/proc", proc) == "on another file system (--one-file-system)"


def test_exclude_file_skips_comments(tmp_path):
    rules = tmp_path / "excludes"
    rules.write_text("# scratch files\n*.tmp\n\n  # indented comment\n/build/\n")

    assert read_exclude_files([str(rules)]) == ["*.tmp", "/build/"]


def test_exclude_file_missing_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot be read"):
        read_exclude_files([str(tmp_path / "absent")])


@pytest.mark.parametrize(
    "text, expected",
    [("4096", 4096), ("2G", 2 * 1024**3), ("512m", 512 * 1024**2), ("1.5KiB", 1536), ("3 MB", 3 * 1024**2), ("1T", 1024**4)],
)
def test_parse_size_suffixes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1G", "2X", "1.2.3M", "ten"])
def test_parse_size_rejects_invalid(text):
    with pytest.raises(UsageError):
        parse_size(text)


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(["", "K", "M", "G"]))
def test_parse_size_scales_integers(number, unit):
    factor = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit]
    assert parse_size(f"{number}{unit}") == number * factor


@pytest.mark.parametrize("name", ["", "/", "..", "a/../b", "a\x00b"])
def test_stream_name_rejects_unsafe(name):
    with pytest.raises(UsageError):
        normalize_stream_name(name)


def test_stream_name_is_absolute():
    assert normalize_stream_name("db//./prefs.dump") == "/db/prefs.dump"


def test_stream_source_stored_as_file(repository):
    payload = os.urandom(200_000)
    stream = StreamSource("exports/prefs.bin", io.BytesIO(payload), "stdin")

    result = create_snapshot(repository, [], streams=[stream])

    assert read_stored(repository, result.manifest, "/exports/prefs.bin") == payload
    assert result.manifest.sources == ["stdin:/exports/prefs.bin"]
    assert lookup_path(repository, result.manifest.tree, "/exports/prefs.bin").mode == 0o600


def test_command_source_streams_large_output(repository):
    # 8 MiB is far more than Linux's default 64 KiB pipe buffer, so it is consumed while produced.
    command = "head -c 8388608 /dev/zero | tr '\\0' 'a'"
    with CommandSource("zeros.txt", command) as source:
        result = create_snapshot(repository, [], streams=[source])

    entry = lookup_path(repository, result.manifest.tree, "/zeros.txt")
    assert entry.size == 8 * 1024 * 1024
    assert len(set(entry.chunks)) < len(entry.chunks), "identical chunks are deduplicated"


def test_failing_command_writes_no_manifest(repository):
    before = repository.list_snapshot_ids()
    with pytest.raises(SourceCommandFailed, match="exited with status 7"):
        with CommandSource("dump.bin", "echo partial output; echo broken >&2; exit 7") as source:
            create_snapshot(repository, [], streams=[source])

    assert repository.list_snapshot_ids() == before


def test_failing_command_message_has_stderr(repository):
    with pytest.raises(SourceCommandFailed, match="database missing"):
        with CommandSource("dump.bin", "echo 'database missing' >&2; exit 1") as source:
            create_snapshot(repository, [], streams=[source])


def test_stream_beside_paths(repository, tmp_path):
    source = tmp_path / "data"
    make_tree(source, {"a.txt": b"a"})
    stream = StreamSource("extra.bin", io.BytesIO(b"extra"), "stdin")

    result = create_snapshot(repository, [str(source)], streams=[stream])

    assert read_stored(repository, result.manifest, "/extra.bin") == b"extra"
    assert read_stored(repository, result.manifest, f"{source}/a.txt") == b"a"


def test_stream_name_inside_source_rejected(repository, tmp_path):
    source = tmp_path / "data"
    make_tree(source, {"a.txt": b"a"})
    stream = StreamSource(f"{source}/b.bin", io.BytesIO(b"b"), "stdin")

    with pytest.raises(UsageError, match="overlaps the source"):
        create_snapshot(repository, [str(source)], streams=[stream])
    assert load_manifests(repository) == []


GIT_TREE = {
    "a.tmp": b"1", "keep.tmp": b"2", "notes.md": b"3", "app.log": b"4", "important.log": b"5",
    "build": {"out.o": b"6", "keep.tmp": b"7"},
    "docs": {"guide.md": b"8", "api": {"ref.md": b"9"}, "build": {"html": b"10"}},
    "src": {"cache": {"x": b"11"}, "main.py": b"12", "tmp": {"t": b"13"}, "deep": {"tmp": {"u": b"14"}}},
    "keep": {"w.bin": b"15"}, "w.bin": b"16",
}

GIT_PATTERN_SETS = [
    ["*.tmp", "/build/", "!keep.tmp", "**/cache/**"],
    ["*.log", "!important.log"],
    ["docs/*.md"],
    ["build"],
    ["**/tmp"],
    ["*.bin", "!/keep/*.bin"],
    ["src/", "!src/main.py"],
    ["*", "!*.md", "!*/"],
    ["docs/**/*.md", "/*.log"],
    ["**/build/", "!docs/build/"],
    ["*.md", "!docs/**"],
    ["[ab]*.log", "src/*/tmp"],
]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@pytest.mark.parametrize("patterns", GIT_PATTERN_SETS, ids=lambda p: " ".join(p))
def test_exclude_matches_git(repository, tmp_path, patterns):
    # git's own list of untracked, not ignored files is the reference for .gitignore rules.
    source = tmp_path / "data"
    make_tree(source, GIT_TREE)
    rules_file = tmp_path / "rules"
    rules_file.write_text("\n".join(patterns) + "\n")
    git_dir = tmp_path / "git"
    subprocess.run(["git", "init", "-q", str(git_dir)], check=True)
    listed = subprocess.run(
        ["git", f"--git-dir={git_dir}/.git", f"--work-tree={source}", "ls-files", "--others", "-z", f"--exclude-from={rules_file}"],
        check=True, capture_output=True, cwd=source,
    ).stdout
    expected = {name for name in listed.decode().split("\0") if name}

    result = create_snapshot(repository, [str(source)], exclude=PathFilter(patterns=patterns))
    root = lookup_path(repository, result.manifest.tree, str(source))
    prefix = str(source).lstrip("/").encode()
    stored = {path.decode()[len(prefix) + 1 :] for path, entry in walk(repository, root.subtree, prefix) if entry.type != "dir"}

    assert stored == expected
