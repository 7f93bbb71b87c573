"""The PII scan of one snapshot run: per-file scanners, the totals, the manifest record.

A snapshot run creates one PiiScan; reader threads ask it for a FileScanner per file and
hand back the findings. The manifest's `pii` map (see docs/format.md) is built from
them. It contains detector names, counts, paths and line numbers, never matched values.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Optional

from casbak.audit.pii.allowlist import Allowlist
from casbak.audit.pii.scanner import FileFindings, FileScanner, is_text_like
from casbak.errors import PiiFound, UsageError

log = logging.getLogger(__name__)

MODE_OFF = "off"
MODE_WARN = "warn"
MODE_FAIL = "fail"
PII_MODES = (MODE_OFF, MODE_WARN, MODE_FAIL)
# Files named in a PiiFound message; the full list is in the log at warning level.
MAX_FILES_IN_ERROR = 20


class PiiScan:
    """Collect the findings of every scanned file of one snapshot run (thread-safe)."""

    def __init__(self, mode: str, allowlist: Optional[Allowlist] = None, allowlist_sha256: Optional[str] = None) -> None:
        if mode not in (MODE_WARN, MODE_FAIL):
            raise UsageError(f"--pii-scan {mode!r}: must be one of {', '.join(PII_MODES)}")
        self.mode = mode
        self.allowlist = allowlist or Allowlist()
        self.allowlist_sha256 = allowlist_sha256
        self._lock = threading.Lock()
        # Only files with something to report are kept, so memory does not grow with
        # the number of clean files.
        self._files: dict[str, FileFindings] = {}
        self._files_scanned = 0
        self._bytes_scanned = 0
        self._carried: dict[str, list[dict]] = {}
        self._parent_findings: dict[str, list[dict]] = {}

    @classmethod
    def from_options(cls, mode: str, allowlist_path: Optional[str]) -> Optional["PiiScan"]:
        """Return a scan for `--pii-scan MODE --pii-allowlist FILE`, or None for mode off."""
        if mode == MODE_OFF:
            if allowlist_path:
                raise UsageError("--pii-allowlist: only valid with --pii-scan warn or fail")
            return None
        if not allowlist_path:
            return cls(mode)
        digest = hashlib.sha256(Path(allowlist_path).read_bytes()).hexdigest() if Path(allowlist_path).is_file() else None
        return cls(mode, Allowlist.load(allowlist_path), digest)

    def use_parent(self, parent_record: Optional[dict]) -> bool:
        """Take the findings of unchanged files from the parent's record.

        Returns False when the parent has no record, so every file must be read again.
        """
        if not parent_record:
            return False
        for finding in parent_record.get("findings", []):
            self._parent_findings.setdefault(finding["path"], []).append(finding)
        return True

    # Called from reader threads

    def scanner_for(self, path: str) -> Optional[FileScanner]:
        if not is_text_like(path):
            return None
        return FileScanner(path, self.allowlist)

    def record(self, findings: FileFindings) -> None:
        # A file read again because it changed during the read replaces its earlier result.
        # NOTE: such a file counts twice in files_scanned and bytes_scanned.
        with self._lock:
            self._files_scanned += 1
            self._bytes_scanned += findings.scanned_bytes
            if findings.hits or findings.suppressed or findings.incomplete:
                self._files[findings.path] = findings
            else:
                self._files.pop(findings.path, None)

    def carry_unchanged(self, path: str) -> None:
        """Keep the parent's findings of a file that was not read because it is unchanged."""
        found = self._parent_findings.get(path)
        if not found:
            return
        kept = [dict(f) for f in found if not self.allowlist.path_allowed(f["detector"], path)]
        with self._lock:
            self._carried[path] = kept

    # After the walk

    def findings(self) -> list[dict]:
        """Return one {path, detector, count, lines} map per file and detector, sorted."""
        with self._lock:
            rows = [dict(f) for found in self._carried.values() for f in found]
            for path, result in self._files.items():
                for detector, hits in result.hits.items():
                    rows.append({"path": path, "detector": detector, "count": hits.count, "lines": list(hits.lines)})
        return sorted(rows, key=lambda row: (row["path"], row["detector"]))

    def record_map(self) -> dict:
        """Return the manifest's `pii` map."""
        rows = self.findings()
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["detector"]] = counts.get(row["detector"], 0) + row["count"]
        suppressed: dict[str, int] = {}
        with self._lock:
            results = list(self._files.values())
            carried = len(self._carried)
            files_scanned, bytes_scanned = self._files_scanned, self._bytes_scanned
        for result in results:
            for detector, number in result.suppressed.items():
                suppressed[detector] = suppressed.get(detector, 0) + number
        incomplete = [{"path": r.path, "reason": r.incomplete} for r in results if r.incomplete]
        return {
            "mode": self.mode,
            "files_scanned": files_scanned,
            "files_carried": carried,
            "bytes_scanned": bytes_scanned,
            "counts": dict(sorted(counts.items())),
            "suppressed": dict(sorted(suppressed.items())),
            "findings": rows,
            "incomplete": sorted(incomplete, key=lambda item: item["path"]),
            "allowlist_sha256": self.allowlist_sha256,
        }

    def check(self) -> None:
        """Raise PiiFound in fail mode when any finding remains; log a summary in warn mode."""
        with self._lock:
            incomplete = [result for result in self._files.values() if result.incomplete]
        for result in incomplete:
            # NOTE: fail mode does not fail on these; the unscanned rest may hold findings.
            log.warning("PII scan of %s is incomplete: %s", result.path, result.incomplete)
        rows = self.findings()
        if not rows:
            return
        per_file = summarize_by_file(rows)
        for path, summary in per_file.items():
            log.warning("PII scan: %s: %s", path, summary)
        if self.mode != MODE_FAIL:
            return
        listed = [f"  {path}: {summary}" for path, summary in list(per_file.items())[:MAX_FILES_IN_ERROR]]
        if len(per_file) > MAX_FILES_IN_ERROR:
            listed.append(f"  ... and {len(per_file) - MAX_FILES_IN_ERROR} more files (listed in the log)")
        total = sum(row["count"] for row in rows)
        raise PiiFound(
            f"PII scan found {total} matches in {len(per_file)} files, so no snapshot was written:\n"
            + "\n".join(listed)
            + "\nRemove the data from these files, leave them out with --exclude PATTERN, or, for false"
            " positives, add DETECTOR:PATH-GLOB or DETECTOR:sha256:HEX lines to a --pii-allowlist file"
            " (docs/audit.md)."
        )


def summarize_by_file(rows: list[dict]) -> dict[str, str]:
    """Return {path: "email x3 (lines 1, 7, 9); phone x1 (line 4)"} for finding rows."""
    summary: dict[str, list[str]] = {}
    for row in rows:
        lines = ", ".join(str(n) for n in row["lines"])
        more = ", ..." if row["count"] > len(row["lines"]) else ""
        label = "line" if len(row["lines"]) == 1 and not more else "lines"
        summary.setdefault(row["path"], []).append(f"{row['detector']} x{row['count']} ({label} {lines}{more})")
    return {path: "; ".join(parts) for path, parts in summary.items()}
