"""JSON Lines (.jsonl, .ndjson, optionally gzip-compressed): one record per line."""

from __future__ import annotations

import json
from typing import Any, Iterator

from casbak.records.model import ContentDiff, RecordLimits
from casbak.records.matching import match_records
from casbak.records.streams import Opener, decompressed


def iter_jsonl(open_stream: Opener, compressed: bool) -> Iterator[Any]:
    """Yield each non-blank line parsed as JSON; a line that is not JSON yields its text."""
    with open_stream() as raw, decompressed(raw, compressed) as stream:
        for line in stream:
            text = line.strip()
            if not text:
                continue
            try:
                yield json.loads(text.decode("utf-8"))
            except ValueError:
                # Keeping the text makes a broken line diff like any other record
                # instead of aborting the comparison of a multi-gigabyte file.
                yield text.decode("utf-8", "replace")


def diff_jsonl(
    open_old: Opener, open_new: Opener, compressed: bool, key: str | None, limits: RecordLimits
) -> ContentDiff:
    records = match_records(
        lambda: iter_jsonl(open_old, compressed), lambda: iter_jsonl(open_new, compressed), key, limits
    )
    return ContentDiff(format="jsonl.gz" if compressed else "jsonl", records=records)
