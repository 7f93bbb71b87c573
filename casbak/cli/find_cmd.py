"""`casbak find`: which snapshots hold a path pattern or a given file content."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import typer

from casbak.cli.output import display_path, format_size
from casbak.errors import UsageError
from casbak.tree import DIRECTORY, FILE, Entry

if TYPE_CHECKING:
    from casbak.manifest import Manifest
    from casbak.store.repository import Repository

log = logging.getLogger(__name__)

Predicate = Callable[[bytes, Entry], bool]
# Shortest content-hash prefix accepted, so a typo cannot match half the repository.
MIN_HASH_PREFIX = 8


@dataclass
class Match:
    snapshot: Manifest
    path: bytes
    entry: Entry

    def to_json(self) -> dict:
        return {
            "snapshot": self.snapshot.id,
            "time": self.snapshot.time_iso,
            "hostname": self.snapshot.hostname,
            "path": "/" + display_path(self.path),
            "type": self.entry.type,
            "size": self.entry.size,
            "content_hash": self.entry.content.hex() if self.entry.content else None,
        }


def glob_to_regex(pattern: str) -> str:
    """Translate a path glob: `**` matches across `/`, while `*`, `?` and `[...]` stay within one name."""
    parts = []
    position = 0
    while position < len(pattern):
        if pattern.startswith("**/", position):
            parts.append("(?:.*/)?")
            position += 3
        elif pattern.startswith("**", position):
            parts.append(".*")
            position += 2
        elif pattern[position] == "*":
            parts.append("[^/]*")
            position += 1
        elif pattern[position] == "?":
            parts.append("[^/]")
            position += 1
        elif pattern[position] == "[" and "]" in pattern[position + 2 :]:
            end = pattern.index("]", position + 2)
            body = pattern[position + 1 : end]
            parts.append("[^" + body[1:].replace("\\", "\\\\") + "]" if body.startswith("!") else "[" + body.replace("\\", "\\\\") + "]")
            position = end + 1
        else:
            parts.append(re.escape(pattern[position]))
            position += 1
    return "".join(parts) + r"\Z"


def pattern_predicate(pattern: str, ignore_case: bool) -> Predicate:
    """Match a glob against the full path when it contains `/`, else against the name."""
    flags = re.IGNORECASE if ignore_case else 0
    regex = re.compile(glob_to_regex(pattern.lstrip("/")), flags | re.DOTALL)
    use_full_path = "/" in pattern

    def matches(path: bytes, entry: Entry) -> bool:
        subject = path if use_full_path else entry.name
        return regex.match(subject.decode("utf-8", "surrogateescape")) is not None

    return matches


def content_predicate(hex_digest: str) -> Predicate:
    """Match files whose content hash starts with `hex_digest`."""
    prefix_hex = hex_digest.strip().lower()
    if len(prefix_hex) < MIN_HASH_PREFIX or not re.fullmatch(r"[0-9a-f]+", prefix_hex):
        raise UsageError(f"--content-hash {hex_digest!r}: give at least {MIN_HASH_PREFIX} hexadecimal digits")

    def matches(path: bytes, entry: Entry) -> bool:
        return entry.type == FILE and entry.content is not None and entry.content.hex().startswith(prefix_hex)

    return matches


def local_file_hash(repository: Repository, path: str) -> str:
    """Return the repository's content hash of a local file (keyed in encrypted repositories)."""
    content = repository.hasher.stream()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1024 * 1024), b""):
                content.update(block)
    except OSError as exc:
        raise UsageError(f"--same-as {path}: cannot be read ({exc.strerror or exc})") from exc
    return content.digest().hex()


class Finder:
    """Searches snapshot trees; results per (tree, path) are cached, so the directories
    that many snapshots share are read once."""

    def __init__(self, repository: Repository, predicate: Predicate) -> None:
        self.repository = repository
        self.predicate = predicate
        self._cache: dict[tuple[bytes, bytes], list[tuple[bytes, Entry]]] = {}

    def search(self, digest: bytes, prefix: bytes = b"") -> list[tuple[bytes, Entry]]:
        from casbak.catalog import load_tree

        key = (digest, prefix)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        found: list[tuple[bytes, Entry]] = []
        for entry in load_tree(self.repository, digest).entries:
            path = prefix + b"/" + entry.name if prefix else entry.name
            if self.predicate(path, entry):
                found.append((path, entry))
            if entry.type == DIRECTORY:
                found.extend(self.search(entry.subtree, path))
        self._cache[key] = found
        return found


def find_matches(repository: Repository, predicate: Predicate, host: Optional[str] = None) -> list[Match]:
    from casbak.catalog import load_manifests

    finder = Finder(repository, predicate)
    matches = []
    for manifest in load_manifests(repository):
        if host is not None and manifest.hostname != host:
            continue
        for path, entry in finder.search(manifest.tree):
            matches.append(Match(manifest, path, entry))
    return matches


def find(
    ctx: typer.Context,
    pattern: Optional[str] = typer.Argument(None, help="Glob such as '*.jsonl' (matches names) or 'data/**/prefs*' (matches full paths)."),
    content_hash: Optional[str] = typer.Option(None, "--content-hash", help="Find files whose content hash starts with these hex digits (see `find --json`)."),
    same_as: Optional[str] = typer.Option(None, "--same-as", help="Find stored copies of this local file's content."),
    ignore_case: bool = typer.Option(False, "--ignore-case", "-i", help="Match the pattern without regard to case."),
    host: Optional[str] = typer.Option(None, help="Only search snapshots of this host."),
) -> None:
    """List the snapshots and paths that hold a path pattern or a file content."""
    state = ctx.obj
    chosen = [value for value in (pattern, content_hash, same_as) if value]
    if len(chosen) != 1:
        raise UsageError("find: give exactly one of PATTERN, --content-hash or --same-as")
    repository = state.open_repository()
    if pattern:
        predicate = pattern_predicate(pattern, ignore_case)
    else:
        predicate = content_predicate(content_hash or local_file_hash(repository, same_as))
    matches = find_matches(repository, predicate, host)
    if state.json:
        snapshots = sorted({m.snapshot.id for m in matches})
        state.emit_json({"schema": "casbak.find/1", "command": "find", "query": chosen[0],
                         "snapshots": snapshots, "matches": [m.to_json() for m in matches]})
        return
    if not matches:
        if not state.quiet:
            typer.echo("no matches")
        return
    for match in matches:
        size = format_size(match.entry.size) if match.entry.size is not None else "-"
        typer.echo(f"{match.snapshot.id[:12]}  {match.snapshot.time_iso[:19].replace('T', ' ')}  {size:>10}  /{display_path(match.path)}")


def register(app: typer.Typer) -> None:
    app.command("find")(find)
