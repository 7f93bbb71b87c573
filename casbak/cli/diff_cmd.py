"""`casbak diff`: print what changed between two snapshots, as text or JSON."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any, Optional

import typer

from casbak.cli.output import display_path, format_size
from casbak.errors import UsageError
from casbak.tree import FILE, SYMLINK, Entry

if TYPE_CHECKING:
    from casbak.operations.diff import Change, DiffResult, DiffSummary
    from casbak.records.model import ByteDiff, ContentDiff, KeyChange, RecordChange, RecordDiff, RecordRef

JSON_SCHEMA = "casbak-diff/1"
VALUE_WIDTH = 60  # characters of a value shown in text output before it is cut


def diff_command(
    ctx: typer.Context,
    old: str = typer.Argument(..., help="Older snapshot: id, id prefix, `latest`, `latest~N`, @YYYY-MM-DD or @YYYY-MM-DDTHH:MM (UTC)."),
    new: str = typer.Argument(..., help="Newer snapshot, in the same forms."),
    path: Optional[str] = typer.Argument(None, help="Compare only this path; a file path turns on --records."),
    records: bool = typer.Option(False, "--records", help="Also compare modified files inside: records, config keys or chunk ranges."),
    key: Optional[str] = typer.Option(None, "--key", help="Record field that identifies a record (dotted for nested fields, such as meta.id)."),
    stat: bool = typer.Option(False, "--stat", help="Print only the counts."),
    details: int = typer.Option(50, "--details", min=0, help="Changed records shown with their changed fields, per file; text output also prints at most this many added and removed records."),
    listed: int = typer.Option(1000, "--list-limit", min=0, help="Added, removed and changed records listed per file, per kind."),
) -> None:
    """Show paths added (+), removed (-), modified (M), type-changed (T) and metadata-changed (U)."""
    # casbak.records loads yaml and the other record parsers, so only diff runs import it.
    from casbak.operations.diff import diff
    from casbak.records.model import RecordLimits

    state = ctx.obj
    if key is not None and not key.strip():
        raise UsageError("--key is empty: give a record field name such as id")
    repository = state.open_repository()
    limits = RecordLimits(listed=listed, details=details)
    # --stat prints counts only, so reading files for content diffs would be wasted work.
    compare_content: Optional[bool] = None  # None: on for --key or a file PATH
    if stat:
        compare_content = False
    elif records:
        compare_content = True
    result = diff(repository, old, new, path, records=compare_content, key=key, limits=limits)
    if state.json:
        state.emit_json(result_json(result, include_changes=not stat))
        return
    if not stat:
        for change in result.changes:
            for line in change_lines(change, details):
                typer.echo(line)
        if result.changes:
            typer.echo("")
    typer.echo(summary_line(result.summary))


def register(app: typer.Typer) -> None:
    app.command("diff")(diff_command)


# Text output


def summary_line(summary: DiffSummary) -> str:
    return (
        f"{summary.added} added, {summary.removed} removed, {summary.modified} modified, "
        f"{summary.type_changed} type changed, {summary.metadata_changed} metadata changed; "
        f"{format_size(summary.bytes_added)} added, {format_size(summary.bytes_removed)} removed"
    )


def change_lines(change: Change, details: int) -> list[str]:
    lines = [f"{change.status}  {display_path(change.path)}{_change_note(change)}"]
    if change.content is not None:
        lines += ["     " + line for line in content_lines(change.content, details)]
    return lines


def _change_note(change: Change) -> str:
    old, new = change.old, change.new
    if old is not None and new is not None and old.type != new.type:
        return f"  ({old.type} -> {new.type})"
    parts = []
    if "content" in change.fields and old.type == FILE:
        parts.append(f"{format_size(old.size)} -> {format_size(new.size)}")
    elif "content" in change.fields and old.type == SYMLINK:
        parts.append(f"-> {display_path(old.target)} now -> {display_path(new.target)}")
    for name in change.fields:
        # A content change sets the mtime anyway, so mtime is only worth showing alone.
        if name in ("mode", "uid", "gid") or (name == "mtime" and "content" not in change.fields):
            parts.append(f"{name} {_metadata_value(old, name)} -> {_metadata_value(new, name)}")
    if old is None or new is None:
        entry = new or old
        if entry.type == FILE:
            parts.append(format_size(entry.size))
        elif entry.type == SYMLINK:
            parts.append(f"symlink -> {display_path(entry.target)}")
        else:
            parts.append(entry.type)
    return f"  ({', '.join(parts)})" if parts else ""


def _metadata_value(entry: Entry, name: str) -> str:
    if name == "mode":
        return f"{entry.mode:04o}"
    if name == "mtime":
        seconds, nanos = divmod(entry.mtime_ns, 1_000_000_000)
        stamp = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{stamp}.{nanos:09d}Z"
    return str(getattr(entry, name))


def content_lines(content: ContentDiff, details: int) -> list[str]:
    lines = [f"note: {note}" for note in content.notes]
    if content.keys is not None:
        lines += [key_change_line(change) for change in content.keys] or ["no key changed (formatting only)"]
    if content.records is not None:
        lines += record_lines(content.records, details)
    if content.bytes is not None:
        lines += byte_lines(content.bytes)
    return lines


def key_change_line(change: KeyChange) -> str:
    if change.status == "added":
        return f"{change.path}: added {_short(change.new)}"
    if change.status == "removed":
        return f"{change.path}: removed (was {_short(change.old)})"
    old_text, new_text = _short_pair(_display_value(change.old), _display_value(change.new))
    return f"{change.path}: {old_text} -> {new_text}"


def _display_value(value: Any) -> str:
    from casbak.records.structure import display_value

    return display_value(value)


def _short(value: Any) -> str:
    text = _display_value(value)
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 3] + "..."


def _short_pair(old: str, new: str) -> tuple[str, str]:
    """Cut two long values to a window around their first difference, so the change is visible."""
    if len(old) <= VALUE_WIDTH and len(new) <= VALUE_WIDTH:
        return old, new
    pairs = enumerate(zip(old, new))
    first_difference = next((i for i, (x, y) in pairs if x != y), min(len(old), len(new)))
    start = max(0, first_difference - VALUE_WIDTH // 4)
    return _window(old, start), _window(new, start)


def _window(text: str, start: int) -> str:
    end = start + VALUE_WIDTH - 6
    head = "..." if start > 0 else ""
    tail = "..." if end < len(text) else ""
    return head + text[start:end] + tail


def record_lines(records: RecordDiff, details: int) -> list[str]:
    matched = f"by {records.key}" if records.key else "by content"
    lines = [
        f"records {matched}: {records.added} added, {records.removed} removed, {records.changed} changed, "
        f"{records.unchanged} unchanged ({records.old_count} -> {records.new_count})"
    ]
    lines += [f"column {key_change_line(change)}" for change in records.schema]
    if records.without_key:
        lines.append(f"{records.without_key} records have no {records.key} field and were matched by content")
    if records.duplicate_keys:
        lines.append(f"{records.duplicate_keys} {records.key} values occur more than once; repeats are paired in order")
    lines += [f"+ {_ref(ref, records.key)}" for ref in records.added_records[:details]]
    lines += [f"- {_ref(ref, records.key)}" for ref in records.removed_records[:details]]
    for change in records.changed_records[:details]:
        lines += _record_change_lines(change, records.key)
    longest_list = max(len(records.added_records), len(records.removed_records), len(records.changed_records))
    if records.truncated or longest_list > details:
        lines.append("(lists are cut; --details and --list-limit show more, --json lists all kept)")
    return lines


def _ref(ref: RecordRef, key: Optional[str]) -> str:
    if key is None or ref.key is None:
        return f"record #{ref.number}"
    return f"{key}={_display_value(ref.key)} (#{ref.number})"


def _record_change_lines(change: RecordChange, key: Optional[str]) -> list[str]:
    names = sorted({_top_field(field.path) for field in change.fields})
    head = f"M {key}={_display_value(change.key)}"
    if names:
        head += f": {', '.join(names)} changed"
    if change.swapped:
        head += " (" + "; ".join(f"{a} and {b} swapped" for a, b in change.swapped) + ")"
    return [head] + ["    " + key_change_line(field) for field in change.fields]


def _top_field(path: str) -> str:
    for position, character in enumerate(path):
        if character in ".[" and position > 0:
            return path[:position]
    return path


def byte_lines(bytes_diff: ByteDiff) -> list[str]:
    lines = [
        f"chunks: {bytes_diff.shared_chunks} shared ({bytes_diff.old_chunks} -> {bytes_diff.new_chunks}); "
        f"{format_size(bytes_diff.bytes_added)} added, {format_size(bytes_diff.bytes_removed)} removed"
    ]
    if bytes_diff.added_ranges:
        lines.append("new bytes at " + ", ".join(f"{a}-{b}" for a, b in bytes_diff.added_ranges))
    if bytes_diff.removed_ranges:
        lines.append("old bytes gone at " + ", ".join(f"{a}-{b}" for a, b in bytes_diff.removed_ranges))
    if bytes_diff.ranges_truncated:
        lines.append("(range lists are cut)")
    return lines


# JSON output (schema documented in docs/diff.md)


def result_json(result: DiffResult, include_changes: bool = True) -> dict:
    body: dict[str, Any] = {
        "schema": JSON_SCHEMA,
        "old": {"id": result.old.id, "time": result.old.time_iso},
        "new": {"id": result.new.id, "time": result.new.time_iso},
        "path": result.path,
        "summary": {
            "added": result.summary.added,
            "removed": result.summary.removed,
            "modified": result.summary.modified,
            "type_changed": result.summary.type_changed,
            "metadata_changed": result.summary.metadata_changed,
            "bytes_added": result.summary.bytes_added,
            "bytes_removed": result.summary.bytes_removed,
            "trees_read": result.summary.trees_read,
        },
    }
    if include_changes:
        body["changes"] = [change_json(change) for change in result.changes]
    return body


def change_json(change: Change) -> dict:
    try:
        change.path.decode("utf-8")
        raw_hex = None
    except UnicodeDecodeError:
        raw_hex = change.path.hex()
    return {
        "path": display_path(change.path),
        "path_hex": raw_hex,
        "status": change.status,
        "fields": list(change.fields),
        "old": entry_json(change.old),
        "new": entry_json(change.new),
        "content": content_json(change.content),
    }


def entry_json(entry: Optional[Entry]) -> Optional[dict]:
    if entry is None:
        return None
    return {
        "type": entry.type,
        "size": entry.size,
        "mode": f"{entry.mode:04o}",
        "uid": entry.uid,
        "gid": entry.gid,
        "mtime_ns": entry.mtime_ns,
        "target": display_path(entry.target) if entry.target is not None else None,
    }


def content_json(content: Optional[ContentDiff]) -> Optional[dict]:
    if content is None:
        return None
    return {
        "format": content.format,
        "notes": content.notes,
        "keys": None if content.keys is None else [key_change_json(k) for k in content.keys],
        "records": None if content.records is None else records_json(content.records),
        "bytes": None if content.bytes is None else bytes_json(content.bytes),
    }


def _plain(value: Any) -> Any:
    from casbak.records.structure import canonical_json

    # Round-trip through canonical JSON so Parquet and TOML values (bytes, dates) become JSON values.
    return json.loads(canonical_json(value))


def key_change_json(change: KeyChange) -> dict:
    return {"path": change.path, "status": change.status, "old": _plain(change.old), "new": _plain(change.new)}


def records_json(records: RecordDiff) -> dict:
    return {
        "key": records.key,
        "old_count": records.old_count,
        "new_count": records.new_count,
        "added": records.added,
        "removed": records.removed,
        "changed": records.changed,
        "unchanged": records.unchanged,
        "without_key": records.without_key,
        "duplicate_keys": records.duplicate_keys,
        "truncated": records.truncated,
        "schema": [key_change_json(change) for change in records.schema],
        "added_records": [{"key": _plain(r.key), "number": r.number} for r in records.added_records],
        "removed_records": [{"key": _plain(r.key), "number": r.number} for r in records.removed_records],
        "changed_records": [
            {
                "key": _plain(c.key),
                "old_number": c.old_number,
                "new_number": c.new_number,
                "fields": [key_change_json(f) for f in c.fields],
                "swapped": [list(pair) for pair in c.swapped],
            }
            for c in records.changed_records
        ],
    }


def bytes_json(bytes_diff: ByteDiff) -> dict:
    return {
        "old_size": bytes_diff.old_size,
        "new_size": bytes_diff.new_size,
        "old_chunks": bytes_diff.old_chunks,
        "new_chunks": bytes_diff.new_chunks,
        "shared_chunks": bytes_diff.shared_chunks,
        "bytes_added": bytes_diff.bytes_added,
        "bytes_removed": bytes_diff.bytes_removed,
        "added_ranges": [list(r) for r in bytes_diff.added_ranges],
        "removed_ranges": [list(r) for r in bytes_diff.removed_ranges],
        "ranges_truncated": bytes_diff.ranges_truncated,
    }
