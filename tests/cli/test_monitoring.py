"""Webhook notifications and the Prometheus textfile, against a local HTTP server."""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from casbak.cli.monitoring import METRICS, RunReport, should_notify, write_metrics
from tests.cli.test_snapshot_cli import run_casbak, run_json
from tests.conftest import make_tree

SAMPLE_LINE = re.compile(r'^(casbak_[a-z_]+)\{profile="([^"]*)",repository="((?:[^"\\]|\\.)*)"\} (-?[0-9]+(?:\.[0-9]+)?)$')


class Receiver:
    """A webhook endpoint on 127.0.0.1 that stores every JSON body it receives."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.bodies.append({"content_type": self.headers["Content-Type"],
                                        "json": json.loads(self.rfile.read(length))})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/casbak?token=secret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """Return a URL on 127.0.0.1 where nothing listens (the port was just released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def parse_metrics(path: Path) -> dict[tuple[str, str], float]:
    """Parse the textfile strictly: every line is a comment or a well-formed sample."""
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            assert line.split()[2] in METRICS, line
            continue
        match = SAMPLE_LINE.match(line)
        assert match, f"malformed sample line: {line!r}"
        name, profile, _repository, value = match.groups()
        values[(name, profile)] = float(value)
    return values


@pytest.fixture
def source(tmp_path) -> Path:
    root = tmp_path / "prefs"
    make_tree(root, {"a.jsonl": b'{"chosen": "x"}\n' * 50})
    return root


def test_webhook_on_failure(repository, repo_path):
    with Receiver() as receiver:
        result = run_casbak("snapshot", "--stdin-from-command", "exit 3", "--notify-url", receiver.url, repo=repo_path)

    assert result.returncode == 1
    assert len(receiver.bodies) == 1
    body = receiver.bodies[0]["json"]
    assert receiver.bodies[0]["content_type"] == "application/json"
    assert body["status"] == "failed"
    assert body["snapshot"] is None
    assert "exited with status 3" in body["message"]
    assert body["host"] == socket.gethostname()
    assert body["duration_seconds"] >= 0


def test_webhook_skipped_on_success_by_default(repository, repo_path, source):
    with Receiver() as receiver:
        run_json("snapshot", str(source), "--notify-url", receiver.url, repo=repo_path)

    assert receiver.bodies == []


def test_webhook_always_reports_success(repository, repo_path, source):
    with Receiver() as receiver:
        report = run_json("snapshot", str(source), "--notify-url", receiver.url, "--notify-on", "always", repo=repo_path)

    body = receiver.bodies[0]["json"]
    assert body["status"] == "success"
    assert body["snapshot"] == report["snapshot"]
    assert body["stats"]["files_new"] == 1
    assert body["errors"] == []


def test_unreachable_webhook_keeps_exit_code(repository, repo_path, source):
    result = run_casbak("snapshot", str(source), "--notify-url", closed_port_url(), "--notify-on", "always", repo=repo_path)

    assert result.returncode == 0
    assert b"notification to http://127.0.0.1" in result.stderr
    assert b"failed" in result.stderr


def test_webhook_http_error_keeps_exit_code(repository, repo_path, source):
    with Receiver(status=500) as receiver:
        result = run_casbak("snapshot", str(source), "--notify-url", receiver.url, "--notify-on", "always", repo=repo_path)

    assert result.returncode == 0
    assert len(receiver.bodies) == 1
    assert b"token=secret" not in result.stderr, "the query string may hold a token"


def test_invalid_notify_on_exits_2(repository, repo_path, source):
    result = run_casbak("--json", "snapshot", str(source), "--notify-on", "sometimes", repo=repo_path)

    assert result.returncode == 2
    assert json.loads(result.stdout)["exit_code"] == 2


def test_metrics_file_after_success_and_failure(repository, repo_path, source, tmp_path):
    metrics = tmp_path / "textfile" / "casbak.prom"

    run_json("snapshot", str(source), "--metrics-file", str(metrics), repo=repo_path)
    first = parse_metrics(metrics)
    failed = run_casbak("snapshot", "--stdin-from-command", "exit 1", "--metrics-file", str(metrics), repo=repo_path)
    second = parse_metrics(metrics)

    assert first[("casbak_last_run_success", "")] == 1
    assert first[("casbak_last_run_files", "")] == 1
    assert first[("casbak_last_run_bytes_added", "")] > 0
    assert first[("casbak_last_run_errors", "")] == 0
    assert set(name for name, _ in first) == set(METRICS)
    assert failed.returncode == 1
    assert second[("casbak_last_run_success", "")] == 0
    assert second[("casbak_last_run_errors", "")] == 1
    assert second[("casbak_last_success_timestamp_seconds", "")] == first[("casbak_last_success_timestamp_seconds", "")]
    assert [p.name for p in metrics.parent.iterdir()] == ["casbak.prom"], "no temporary files left behind"


def test_metrics_keep_other_profiles(tmp_path):
    metrics = tmp_path / "casbak.prom"
    nightly = RunReport("snapshot", profile="nightly", repository='/srv/"quoted"')
    nightly.finish("success", 0)
    hourly = RunReport("snapshot", profile="hourly", repository="/srv/b")
    hourly.finish("partial", 3)

    write_metrics(str(metrics), nightly, {"profile": "nightly", "repository": nightly.repository})
    write_metrics(str(metrics), hourly, {"profile": "hourly", "repository": hourly.repository})
    values = parse_metrics(metrics)

    assert values[("casbak_last_run_success", "nightly")] == 1
    assert values[("casbak_last_run_success", "hourly")] == 0
    assert ("casbak_last_success_timestamp_seconds", "hourly") not in values
    assert metrics.read_text().count("# TYPE casbak_last_run_success gauge") == 1


@pytest.mark.parametrize("notify_on, status, expected", [
    ("failure", "success", False), ("failure", "partial", True), ("failure", "failed", True),
    ("always", "success", True),
])
def test_should_notify(notify_on, status, expected):
    assert should_notify(notify_on, status) is expected
