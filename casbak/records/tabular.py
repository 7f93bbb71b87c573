"""Tables: CSV (optionally gzip-compressed) and Parquet, compared row by row."""

from __future__ import annotations

import csv
import io
from typing import Any, Iterator

from casbak.records.matching import match_records
from casbak.records.model import KEY_ADDED, KEY_CHANGED, KEY_REMOVED, ContentDiff, KeyChange, RecordLimits
from casbak.records.streams import Opener, decompressed

# Rows of preference data hold whole conversations, far above csv's 128 KiB default
# field limit. The limit is process-wide in the csv module, so it is only ever raised.
CSV_FIELD_LIMIT = 256 * 1024 * 1024
PARQUET_BATCH_ROWS = 4096
EXTRA_FIELDS = "_extra"  # where csv.DictReader puts values beyond the header's columns


def _text(binary) -> io.TextIOWrapper:
    # NOTE: bytes that are not UTF-8 are replaced with U+FFFD, so two such rows differing
    # only in those bytes compare equal.
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace", newline="")


def iter_csv(open_stream: Opener, compressed: bool) -> Iterator[dict]:
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    with open_stream() as raw, decompressed(raw, compressed) as stream:
        yield from csv.DictReader(_text(stream), restkey=EXTRA_FIELDS)


def csv_columns(open_stream: Opener, compressed: bool) -> list[str]:
    with open_stream() as raw, decompressed(raw, compressed) as stream:
        return next(csv.reader(_text(stream)), [])


def column_changes(old: list[str], new: list[str], old_types: dict | None = None, new_types: dict | None = None) -> list[KeyChange]:
    """List columns added, removed, or (when types are given) changed in type."""
    changes = [KeyChange(name, KEY_REMOVED, old=(old_types or {}).get(name)) for name in old if name not in new]
    changes += [KeyChange(name, KEY_ADDED, new=(new_types or {}).get(name)) for name in new if name not in old]
    if old_types and new_types:
        for name in old:
            if name in new and old_types[name] != new_types[name]:
                changes.append(KeyChange(name, KEY_CHANGED, old=old_types[name], new=new_types[name]))
    return changes


def diff_csv(open_old: Opener, open_new: Opener, compressed: bool, key: str | None, limits: RecordLimits) -> ContentDiff:
    records = match_records(lambda: iter_csv(open_old, compressed), lambda: iter_csv(open_new, compressed), key, limits)
    records.schema = column_changes(csv_columns(open_old, compressed), csv_columns(open_new, compressed))
    return ContentDiff(format="csv.gz" if compressed else "csv", records=records)


def iter_parquet(open_stream: Opener) -> Iterator[dict[str, Any]]:
    """Yield rows as dicts, reading one batch of a row group at a time."""
    import pyarrow.parquet as pq  # imported here: pyarrow takes a while to load

    with open_stream() as stream:
        table = pq.ParquetFile(stream)
        for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            yield from batch.to_pylist()


def parquet_schema(open_stream: Opener) -> dict[str, str]:
    import pyarrow.parquet as pq

    with open_stream() as stream:
        schema = pq.ParquetFile(stream).schema_arrow
        return {field.name: str(field.type) for field in schema}


def diff_parquet(open_old: Opener, open_new: Opener, key: str | None, limits: RecordLimits) -> ContentDiff:
    records = match_records(lambda: iter_parquet(open_old), lambda: iter_parquet(open_new), key, limits)
    old_types, new_types = parquet_schema(open_old), parquet_schema(open_new)
    records.schema = column_changes(list(old_types), list(new_types), old_types, new_types)
    return ContentDiff(format="parquet", records=records)


def tabular_errors() -> tuple[type[BaseException], ...]:
    """Return the exceptions that mean a table could not be parsed."""
    import pyarrow

    return (csv.Error, ValueError, pyarrow.ArrowException)
