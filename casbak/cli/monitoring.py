"""Run reports for unattended jobs: a JSON webhook and a Prometheus textfile.

Both outputs describe one run with the same `RunReport`. Neither may change the
outcome of the backup: a webhook that fails is logged and the exit code stays that of
the backup itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from casbak import __version__

log = logging.getLogger(__name__)

STATUS_SUCCESS = "success"
STATUS_PARTIAL = "partial"
STATUS_FAILED = "failed"

WEBHOOK_TIMEOUT_SECONDS = 10.0

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

METRICS = {
    "casbak_last_success_timestamp_seconds": "Unix time of the last run that wrote a complete snapshot.",
    "casbak_last_run_timestamp_seconds": "Unix time at which the last run finished, whatever its outcome.",
    "casbak_last_run_duration_seconds": "Wall-clock duration of the last run in seconds.",
    "casbak_last_run_bytes_added": "Bytes of new file content (before compression) the last run added.",
    "casbak_last_run_files": "Files in the last run's snapshot (new, changed and unmodified).",
    "casbak_last_run_errors": "Entries the last run could not read, plus 1 if the run failed.",
    "casbak_last_run_success": "1 if the last run wrote a complete snapshot, else 0.",
}


@dataclass
class RunReport:
    """The outcome of one command run, as the webhook and `--json` present it."""

    command: str
    status: str = STATUS_FAILED
    exit_code: int = 1
    profile: Optional[str] = None
    repository: Optional[str] = None
    host: str = field(default_factory=socket.gethostname)
    snapshot: Optional[str] = None
    started: float = field(default_factory=time.time)
    finished: Optional[float] = None
    stats: dict[str, Any] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    message: Optional[str] = None

    def finish(self, status: str, exit_code: int, message: Optional[str] = None) -> None:
        self.status, self.exit_code, self.message = status, exit_code, message
        self.finished = time.time()

    @property
    def duration_seconds(self) -> float:
        end = self.finished if self.finished is not None else time.time()
        return round(end - self.started, 3)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "casbak.run/1",
            "command": self.command,
            "status": self.status,
            "exit_code": self.exit_code,
            "snapshot": self.snapshot,
            "profile": self.profile,
            "repository": self.repository,
            "host": self.host,
            "started": _iso(self.started),
            "finished": _iso(self.finished) if self.finished is not None else None,
            "duration_seconds": self.duration_seconds,
            "stats": self.stats,
            "errors": self.errors,
            "warnings": self.warnings,
            "message": self.message,
            "program_version": __version__,
        }


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def should_notify(notify_on: str, status: str) -> bool:
    """Return True when a run with `status` is reported under the `notify-on` setting."""
    return notify_on == "always" or status != STATUS_SUCCESS


def send_webhook(url: str, report: RunReport, timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> bool:
    """POST the report as JSON to `url`; log and return False on any failure."""
    # urllib.request loads http.client and email, which most runs never need.
    import urllib.error
    import urllib.request

    body = json.dumps(report.to_json(), default=str).encode()
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"casbak/{__version__}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.error("notification to %s failed: %s; the backup result is unchanged", _redact(url), exc)
        return False
    log.info("notification sent to %s (HTTP %d)", _redact(url), status)
    return True


def _redact(url: str) -> str:
    # Webhook URLs often carry a token in the query string; keep it out of logs.
    return url.split("?", 1)[0]


def write_metrics(path: str, report: RunReport, labels: dict[str, str]) -> None:
    """Write the run's gauges to a Prometheus textfile atomically (temporary file + rename).

    Samples of other label sets in the file are kept, so several profiles may share one
    file, and the last success time survives failed runs. A file that cannot be written
    is logged, not raised.
    NOTE: two runs that finish at the same moment and share one file can lose one update;
    give each profile its own file when runs overlap.
    """
    try:
        samples = _read_samples(path)
    except OSError as exc:
        log.warning("metrics file %s: cannot be read (%s); writing it anew", path, exc)
        samples = []
    key = tuple(sorted(labels.items()))
    previous_success = next(
        (value for name, sample_labels, value in samples
         if name == "casbak_last_success_timestamp_seconds" and sample_labels == key),
        None,
    )
    ours = _run_values(report, previous_success)
    kept = [s for s in samples if s[1] != key or s[0] not in ours]
    for name, value in ours.items():
        if value is not None:
            kept.append((name, key, value))
    try:
        _write_atomically(path, _render(kept))
    except OSError as exc:
        log.error("metrics file %s: cannot be written (%s); the backup result is unchanged", path, exc)


def _run_values(report: RunReport, previous_success: Optional[str]) -> dict[str, Optional[str]]:
    stats = report.stats
    files = sum(int(stats.get(k, 0)) for k in ("files_new", "files_changed", "files_unmodified"))
    success = report.status == STATUS_SUCCESS
    finished = report.finished if report.finished is not None else time.time()
    errors = int(stats.get("errors", 0)) + (1 if report.status == STATUS_FAILED else 0)
    return {
        "casbak_last_success_timestamp_seconds": _number(finished) if success else previous_success,
        "casbak_last_run_timestamp_seconds": _number(finished),
        "casbak_last_run_duration_seconds": _number(report.duration_seconds),
        "casbak_last_run_bytes_added": str(int(stats.get("data_added", 0))),
        "casbak_last_run_files": str(files),
        "casbak_last_run_errors": str(errors),
        "casbak_last_run_success": "1" if success else "0",
    }


def _number(value: float) -> str:
    return f"{value:.3f}"


def _read_samples(path: str) -> list[tuple[str, tuple, str]]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return []
    samples = []
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            log.warning("metrics file %s: dropping unparsable line %r", path, line)
            continue
        name, label_text, value, _timestamp = match.groups()
        labels = tuple(sorted((k, _unescape(v)) for k, v in _LABEL.findall(label_text or "")))
        samples.append((name, labels, value))
    return samples


def _render(samples: list[tuple[str, tuple, str]]) -> str:
    lines: list[str] = []
    names = list(METRICS) + sorted({s[0] for s in samples} - set(METRICS))
    for name in names:
        rows = sorted((s for s in samples if s[0] == name), key=lambda s: s[1])
        if not rows:
            continue
        if name in METRICS:
            lines.append(f"# HELP {name} {METRICS[name]}")
            lines.append(f"# TYPE {name} gauge")
        for _name, labels, value in rows:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _write_atomically(path: str, text: str) -> None:
    # node_exporter may read at any moment, so it must see the old or the new file, never half.
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".casbak-metrics-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            log.debug("temporary metrics file %s already gone", temporary)
        raise
