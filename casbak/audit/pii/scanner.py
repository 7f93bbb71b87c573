"""Streaming PII scan of one file, fed chunk by chunk in bounded memory.

The scanner keeps the unfinished last line of the data it was given and scans only
complete lines, so a match that spans a chunk cut is seen whole. A line longer than
MAX_CARRY is scanned in pieces that overlap by MAX_MATCH bytes. Files ending in `.gz`
are decompressed on the fly; their line numbers count lines of the decompressed text.
Matched values never leave this module: findings are detector names and line numbers.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Optional

from casbak.audit.pii.allowlist import Allowlist
from casbak.audit.pii.detectors import DETECTORS, MAX_MATCH, find_matches

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".yaml", ".yml", ".txt", ".log", ".md")
# Longest unfinished line kept between chunks before it is scanned in pieces.
MAX_CARRY = 1 << 20
# Decompressed bytes scanned per .gz file. A larger file is stored in full but scanned
# only this far and listed as incomplete; this also bounds the work a gzip bomb causes.
# NOTE: sized by judgment (about 30 s of scanning per file at 100 MB/s), not measured need.
MAX_DECOMPRESSED = 4 << 30
# Line numbers kept per (file, detector); counts stay exact beyond this.
MAX_LINES = 20
# Decompressed bytes produced per zlib call, which bounds memory on highly compressed input.
_INFLATE_STEP = 1 << 20


def is_text_like(path: str) -> bool:
    """Return whether the scan covers `path`, by its suffix (case-insensitive)."""
    lower = path.lower()
    if lower.endswith(".gz"):
        lower = lower[:-3]
    return lower.endswith(TEXT_SUFFIXES)


@dataclass
class DetectorHits:
    """Findings of one detector in one file: exact count and the first line numbers."""

    count: int = 0
    lines: list[int] = field(default_factory=list)

    def add(self, line: int) -> None:
        self.count += 1
        if len(self.lines) < MAX_LINES and (not self.lines or self.lines[-1] != line):
            self.lines.append(line)


@dataclass
class FileFindings:
    """The scan result of one file; `incomplete` is set when the scan stopped early."""

    path: str
    hits: dict[str, DetectorHits] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)
    scanned_bytes: int = 0
    incomplete: Optional[str] = None


class FileScanner:
    """Scan the bytes of one file as they are read; call feed() per chunk, then finish()."""

    def __init__(self, path: str, allowlist: Optional[Allowlist] = None) -> None:
        self.findings = FileFindings(path)
        self._allowlist = allowlist or Allowlist()
        self._detectors = tuple(d for d in DETECTORS if not self._allowlist.path_allowed(d.name, path))
        self._carry = b""
        self._line = 1  # line number of the first byte of self._carry
        self._inflater = zlib.decompressobj(wbits=47) if path.lower().endswith(".gz") else None
        self._stopped = False

    def feed(self, data: bytes) -> None:
        if self._stopped or not data:
            return
        if self._inflater is None:
            self._scan_text(data)
            return
        self._inflate(data)

    def finish(self) -> FileFindings:
        if not self._stopped:
            if self._inflater is not None:
                self._flush_inflater()
            if self._carry:
                self._scan_block(self._carry, final=True)
                self._carry = b""
        self._stopped = True
        return self.findings

    # Decompression

    def _inflate(self, data: bytes) -> None:
        pending = data
        while pending and not self._stopped:
            try:
                out = self._inflater.decompress(pending, _INFLATE_STEP)
            except zlib.error as exc:
                self._stop(f"not valid gzip or zlib data: {exc}")
                return
            self._scan_decompressed(out)
            if self._inflater.eof:
                # A gzip file may hold several members; each needs a fresh decompressor.
                pending = self._inflater.unused_data
                self._inflater = zlib.decompressobj(wbits=47)
            else:
                pending = self._inflater.unconsumed_tail
            if not out and not pending:
                break

    def _flush_inflater(self) -> None:
        try:
            self._scan_decompressed(self._inflater.flush())
        except zlib.error as exc:
            self._stop(f"not valid gzip or zlib data: {exc}")

    def _scan_decompressed(self, data: bytes) -> None:
        room = MAX_DECOMPRESSED - self.findings.scanned_bytes
        if len(data) > room:
            self._scan_text(data[:room])
            self._stop(f"scanned only the first {MAX_DECOMPRESSED} decompressed bytes")
            return
        self._scan_text(data)

    def _stop(self, reason: str) -> None:
        log.info("PII scan of %s stopped: %s", self.findings.path, reason)
        if self._carry:
            self._scan_block(self._carry, final=True)
            self._carry = b""
        self.findings.incomplete = reason
        self._stopped = True

    # Scanning

    def _scan_text(self, data: bytes) -> None:
        self.findings.scanned_bytes += len(data)
        last_newline = data.rfind(b"\n")
        if last_newline == -1:
            self._carry += data
            if len(self._carry) > MAX_CARRY:
                self._scan_long_line()
            return
        block = self._carry + data[: last_newline + 1]
        self._carry = data[last_newline + 1 :]
        self._scan_block(block, final=True)

    def _scan_long_line(self) -> None:
        """Scan most of an over-long unfinished line and keep an overlapping tail.

        NOTE: the kept tail may start inside a token, so its suffix can match on its own
        (for example the last digits of a long number read as a phone number).
        """
        block = self._carry
        cut = len(block) - MAX_MATCH
        scanned_up_to = self._scan_block(block, final=False, limit=cut)
        self._carry = block[scanned_up_to:]

    def _scan_block(self, block: bytes, final: bool, limit: Optional[int] = None) -> int:
        """Record the matches that start before the returned offset, and return it.

        With final=False the offset is at most `limit`, and it stops short of any match
        that runs past `limit`. The caller scans block[offset:] again with the next data.
        """
        matches = sorted(find_matches(block, self._detectors), key=lambda m: m[1])
        done = len(block)
        if not final:
            # A match running past `limit` may continue in data not yet read: leave it,
            # and everything after its start, for the next pass.
            unfinished = [start for _name, start, end in matches if end > limit]
            done = max(min(unfinished, default=limit), limit - MAX_MATCH)
        counted_up_to = 0
        line = self._line
        for name, start, end in matches:
            if start >= done:
                continue
            line += block.count(b"\n", counted_up_to, start)
            counted_up_to = start
            self._record(name, block[start:end], line)
        self._line += block.count(b"\n", 0, done)
        return done

    def _record(self, detector: str, value: bytes, line: int) -> None:
        if self._allowlist.value_allowed(detector, value):
            suppressed = self.findings.suppressed
            suppressed[detector] = suppressed.get(detector, 0) + 1
            return
        self.findings.hits.setdefault(detector, DetectorHits()).add(line)
