"""PII and secret scan of text-like files while a snapshot chunks them (docs/audit.md)."""

from casbak.audit.pii.allowlist import Allowlist
from casbak.audit.pii.detectors import DETECTOR_NAMES, DETECTORS, find_matches
from casbak.audit.pii.scanner import TEXT_SUFFIXES, FileFindings, FileScanner, is_text_like
from casbak.audit.pii.session import MODE_FAIL, MODE_OFF, MODE_WARN, PII_MODES, PiiScan, summarize_by_file

__all__ = [
    "Allowlist",
    "DETECTORS",
    "DETECTOR_NAMES",
    "FileFindings",
    "FileScanner",
    "MODE_FAIL",
    "MODE_OFF",
    "MODE_WARN",
    "PII_MODES",
    "PiiScan",
    "TEXT_SUFFIXES",
    "find_matches",
    "is_text_like",
    "summarize_by_file",
]
