"""Record- and key-level diffs of files stored in a repository, read without restoring.

`diff_content` picks a comparison by file name. JSON Lines, CSV, Parquet and
list-rooted JSON or YAML are compared as records. Mapping-rooted JSON, YAML and TOML
are compared as dotted keys. Every other file, and any file that fails to parse, gets
a chunk-level byte summary.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from typing import Optional

from casbak.errors import UsageError
from casbak.records.binary import diff_bytes
from casbak.records.documents import DOCUMENT_ERRORS, MAX_DOCUMENT_BYTES, diff_documents
from casbak.records.jsonl import diff_jsonl
from casbak.records.model import ContentDiff, RecordLimits
from casbak.records.reader import open_entry
from casbak.records.streams import Opener
from casbak.records.tabular import diff_csv, diff_parquet, tabular_errors
from casbak.store.repository import Repository
from casbak.tree import FILE, Entry

log = logging.getLogger(__name__)

FORMAT_BYTES = "bytes"

# Longest suffix first, so `.jsonl.gz` wins over `.gz`.
_SUFFIXES = (
    (".jsonl.gz", "jsonl.gz"),
    (".ndjson.gz", "jsonl.gz"),
    (".csv.gz", "csv.gz"),
    (".jsonl", "jsonl"),
    (".ndjson", "jsonl"),
    (".json", "json"),
    (".yaml", "yaml"),
    (".yml", "yaml"),
    (".toml", "toml"),
    (".csv", "csv"),
    (".parquet", "parquet"),
)

_COMPRESSED_ERRORS = (gzip.BadGzipFile, zlib.error, EOFError)


def detect_format(name: bytes) -> str:
    """Return the record format that a file name's suffix names, or "bytes"."""
    lowered = name.lower()
    for suffix, format_name in _SUFFIXES:
        if lowered.endswith(suffix.encode()):
            return format_name
    return FORMAT_BYTES


def diff_content(
    repository: Repository,
    old: Entry,
    new: Entry,
    name: bytes,
    key: Optional[str] = None,
    limits: RecordLimits = RecordLimits(),
) -> ContentDiff:
    """Compare two versions of a stored file by records, keys or bytes, as its name suggests."""
    if old.type != FILE or new.type != FILE:
        raise UsageError(f"{name.decode(errors='replace')}: content diffs compare two files, not a {old.type} and a {new.type}")
    format_name = detect_format(name)
    if format_name == FORMAT_BYTES:
        return ContentDiff(format=FORMAT_BYTES, bytes=diff_bytes(repository, old, new, limits))
    if format_name in ("json", "yaml", "toml") and max(old.size or 0, new.size or 0) > MAX_DOCUMENT_BYTES:
        note = f"larger than {MAX_DOCUMENT_BYTES} bytes, too large to parse as {format_name}; compared chunks instead"
        return _bytes_fallback(repository, old, new, limits, note)
    try:
        return _diff_format(format_name, _opener(repository, old), _opener(repository, new), key, limits)
    except DOCUMENT_ERRORS + _COMPRESSED_ERRORS + tabular_errors() as exc:
        log.info("%s: not readable as %s (%s); comparing chunks", name.decode(errors="replace"), format_name, exc)
        return _bytes_fallback(repository, old, new, limits, f"could not be parsed as {format_name} ({exc}); compared chunks instead")


def _diff_format(format_name: str, open_old: Opener, open_new: Opener, key: Optional[str], limits: RecordLimits) -> ContentDiff:
    if format_name in ("jsonl", "jsonl.gz"):
        return diff_jsonl(open_old, open_new, format_name == "jsonl.gz", key, limits)
    if format_name in ("csv", "csv.gz"):
        return diff_csv(open_old, open_new, format_name == "csv.gz", key, limits)
    if format_name == "parquet":
        return diff_parquet(open_old, open_new, key, limits)
    return diff_documents(open_old, open_new, format_name, key, limits)


def _bytes_fallback(repository: Repository, old: Entry, new: Entry, limits: RecordLimits, note: str) -> ContentDiff:
    return ContentDiff(format=FORMAT_BYTES, bytes=diff_bytes(repository, old, new, limits), notes=[note])


def _opener(repository: Repository, entry: Entry) -> Opener:
    return lambda: open_entry(repository, entry)
