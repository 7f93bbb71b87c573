"""Tree walk: load every reachable tree once, check references, attribute damage to paths.

Each tree is visited once however many snapshots share it. A visit returns the damaged
or missing digests at or below that tree with their paths relative to it. A clean tree
costs one entry in a set of digests, and only trees with damage below them keep a list
of paths.
"""

from __future__ import annotations

import logging
from typing import Optional

from casbak.manifest import Manifest
from casbak.operations.verify.findings import OBJECT_MISSING, TREE_DAMAGED, Affected, Finding, VerifyResult
from casbak.operations.verify.objects import DAMAGE_ERRORS, read_object
from casbak.operations.verify.structure import RepositoryState
from casbak.store.repository import Repository
from casbak.tree import DIRECTORY, FILE, Tree

log = logging.getLogger(__name__)

# (path relative to the visited tree, damaged digest); b"" is the tree itself.
Hit = tuple[bytes, bytes]


class TreeChecker:
    """Walks the trees of valid snapshots and fills the `affected` lists of findings.

    NOTE: the walk recurses once per directory level, so trees nested deeper than about
    300 levels would exceed Python's default recursion limit.
    """

    def __init__(self, repository: Repository, state: RepositoryState, result: VerifyResult) -> None:
        self.repository = repository
        self.state = state
        self.result = result
        self._clean: set[bytes] = set()
        self._hits: dict[bytes, list[Hit]] = {}

    def check_snapshot(self, manifest: Manifest) -> None:
        seen: set[tuple[int, bytes]] = set()
        for relative, digest in self._visit(manifest.tree):
            path = _display(relative)
            for finding in self.state.damaged[digest]:
                # A file with several chunks in one lost pack is listed once per finding.
                key = (id(finding), relative)
                if key not in seen:
                    seen.add(key)
                    finding.add_affected(Affected(manifest.id, path))

    def _visit(self, digest: bytes) -> list[Hit]:
        if digest in self._clean:
            return []
        known = self._hits.get(digest)
        if known is not None:
            return known
        hits = self._check_tree(digest)
        if hits:
            self._hits[digest] = hits
        else:
            self._clean.add(digest)
        return hits

    def _check_tree(self, digest: bytes) -> list[Hit]:
        if self._unusable(digest, "tree"):
            return [(b"", digest)]
        try:
            tree = Tree.decode(read_object(self.repository, self.state.index, digest), what=f"tree {digest.hex()[:12]}")
        except DAMAGE_ERRORS as exc:
            finding = Finding(TREE_DAMAGED, f"{exc}", object=digest.hex(), pack=self._pack_of(digest))
            self.result.errors.append(finding)
            self.state.mark_damaged(digest, finding)
            return [(b"", digest)]
        self.result.stats.trees_checked += 1

        hits: list[Hit] = []
        for entry in tree.entries:
            self.result.stats.entries_checked += 1
            if entry.type == FILE:
                damaged_chunks = []
                for chunk in entry.chunks or ():
                    self.result.stats.chunk_references += 1
                    if self._unusable(chunk, "chunk") and chunk not in damaged_chunks:
                        damaged_chunks.append(chunk)
                hits.extend((entry.name, chunk) for chunk in damaged_chunks)
            elif entry.type == DIRECTORY:
                for relative, below in self._visit(entry.subtree):
                    hits.append((entry.name + b"/" + relative if relative else entry.name, below))
        return hits

    def _unusable(self, digest: bytes, what: str) -> bool:
        """Return True when `digest` is already known damaged, or is missing from the index."""
        if digest in self.state.damaged:
            return True
        if digest in self.state.index:
            return False
        finding = Finding(
            OBJECT_MISSING,
            f"{what} {digest.hex()[:12]}: referenced by a snapshot but not in any index "
            "(its pack or index file is lost)",
            object=digest.hex(),
        )
        self.result.errors.append(finding)
        self.state.mark_damaged(digest, finding)
        return True

    def _pack_of(self, digest: bytes) -> Optional[str]:
        location = self.state.index.lookup(digest)
        return location.pack_id if location else None


def _display(relative: bytes) -> str:
    """Show a snapshot path as `casbak ls` does; bytes that are not UTF-8 become escapes."""
    return "/" + relative.decode("utf-8", "backslashreplace")
