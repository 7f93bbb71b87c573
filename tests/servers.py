"""Local object store servers for tests: moto (S3), gcp-storage-emulator (GCS), a fault proxy.

Every server listens on 127.0.0.1 with a port chosen by the kernel, is started by a
session-scoped fixture and stopped when the session ends. Test modules import the
fixtures they use from here.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Optional

import pytest

# Values moto accepts; no real account is ever contacted.
AWS_TEST_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "casbak-test-key",
    "AWS_SECRET_ACCESS_KEY": "casbak-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
# gcsfs 2026.x probes every bucket over gRPC unless this is false. The emulator has no
# gRPC service, so each first access would wait 60 s for the probe to time out.
GCS_TEST_ENVIRONMENT = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


@dataclass
class S3Server:
    """A running moto server and a way to make fresh buckets on it."""

    endpoint: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def new_bucket(self, object_lock: bool = False) -> str:
        name = f"casbak-{uuid.uuid4().hex[:16]}"
        if object_lock:
            self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        else:
            self.client().create_bucket(Bucket=name)
        return name


@dataclass
class GcsServer:
    """A running GCS emulator."""

    endpoint: str

    def options(self) -> dict:
        return {"endpoint_url": self.endpoint, "token": "anon", "project": "casbak-test"}

    def new_bucket(self) -> str:
        import gcsfs

        name = f"casbak-{uuid.uuid4().hex[:16]}"
        gcsfs.GCSFileSystem(**self.options()).mkdir(name)
        return name


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    saved = {name: os.environ.get(name) for name in AWS_TEST_ENVIRONMENT}
    os.environ.update(AWS_TEST_ENVIRONMENT)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint=f"http://{host}:{port}")
    finally:
        server.stop()
        _restore_environment(saved)


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    saved = {name: os.environ.get(name) for name in GCS_TEST_ENVIRONMENT}
    os.environ.update(GCS_TEST_ENVIRONMENT)
    _use_plain_gcsfs()
    import gcp_storage_emulator.server as emulator

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    original_read_data = emulator._read_data
    emulator._read_data = _byte_exact_read_data(original_read_data)
    server = emulator.create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    port = server._api._httpd.server_address[1]
    try:
        yield GcsServer(endpoint=f"http://127.0.0.1:{port}")
    finally:
        server.stop()
        emulator._read_data = original_read_data
        _restore_environment(saved)


def _byte_exact_read_data(original):
    """Wrap the emulator's request body parser so multipart uploads keep every byte.

    NOTE: gcp-storage-emulator 2026.7.19 parses gcsfs's multipart upload (LF line
    ends) with Python's email parser, which drops a final "\r" of the object. About
    1 in 128 random objects came back one byte short, so encrypted objects failed to
    open at random. This parser splits on the boundary and keeps the content as sent.
    """

    def read_data(request_handler, query):
        content_type = request_handler.headers.get("Content-Type") or ""
        encoding = request_handler.headers.get("Content-Encoding")
        if not content_type.startswith("multipart/related") or encoding:
            return original(request_handler, query)
        raw = _emulator_raw_body(request_handler)
        return _parse_related(raw, content_type)

    return read_data


def _emulator_raw_body(request_handler) -> bytes:
    from gcp_storage_emulator.server import _read_raw_data

    return _read_raw_data(request_handler) or b""


def _parse_related(raw: bytes, content_type: str) -> dict:
    import json

    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    marker = b"--" + boundary
    pieces = raw[raw.index(marker) + len(marker) :].split(marker)
    newline = b"\r\n" if pieces[0].startswith(b"\r\n") else b"\n"
    parts = []
    for piece in pieces[:2]:
        # Each part is: newline, headers, blank line, body, newline before the next marker.
        body = piece[len(newline) : len(piece) - len(newline)]
        headers, content = body.split(newline + newline, 1)
        parts.append((headers.decode(), content))
    part_type = "application/octet-stream"
    for line in parts[1][0].splitlines():
        if line.lower().startswith("content-type:"):
            part_type = line.split(":", 1)[1].strip()
    return {"meta": json.loads(parts[0][1]), "content": parts[1][1], "content-type": part_type}


def _use_plain_gcsfs() -> None:
    # The variable is read when gcsfs is first imported; if something imported it
    # earlier, register the plain class for gs:// directly.
    if "gcsfs" in sys.modules:
        import fsspec
        from gcsfs.core import GCSFileSystem

        for protocol in ("gs", "gcs"):
            fsspec.register_implementation(protocol, GCSFileSystem, clobber=True)


def _restore_environment(saved: dict[str, Optional[str]]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def subprocess_environment(extra: dict[str, str]) -> dict[str, str]:
    """Return the environment for a `casbak` child process talking to the test servers."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CASBAK_")}
    environment.update(AWS_TEST_ENVIRONMENT)
    environment.update(GCS_TEST_ENVIRONMENT)
    environment.update(extra)
    return environment


# Fault injection


@dataclass
class FaultPlan:
    """Shares (0..1) of requests that the proxy fails instead of forwarding."""

    server_error: float = 0.0  # returns 503 SlowDown or 500 InternalError
    reset_before: float = 0.0  # connection dropped before the request reaches the server
    reset_after: float = 0.0  # request served, then the connection dropped without a response
    seed: int = 1
    # (method, text): requests with that method whose path and query contain the text
    # always get a server error.
    always_fail: Optional[tuple[str, str]] = None


@dataclass
class ProxyLog:
    """What the proxy saw; counters are keyed by (method, first path part after the bucket)."""

    requests: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    paths: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str, fragment: str) -> int:
        """Return how many forwarded requests with `method` had `fragment` in their path."""
        with self.lock:
            return sum(1 for m, p in self.paths if m == method and fragment in p)

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.paths.clear()


class FaultProxy:
    """A loopback HTTP reverse proxy that fails a share of requests on purpose.

    It serves at most `max_requests` requests and for at most `max_seconds`; past
    either limit it returns 503 to every request, so a test that loops cannot run away.
    """

    def __init__(self, upstream: str, plan: FaultPlan, max_requests: int = 20000, max_seconds: float = 300.0) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"upstream {upstream}: the fault proxy only forwards to loopback addresses")
        self.upstream = (host, int(port))
        self.plan = plan
        self.random = random.Random(plan.seed)
        self.log = ProxyLog()
        self.max_requests = max_requests
        self.deadline = time.monotonic() + max_seconds
        self.served = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def choose_fault(self) -> Optional[str]:
        with self.log.lock:
            self.served += 1
            if self.served > self.max_requests or time.monotonic() > self.deadline:
                return "limit"
            roll = self.random.random()
        plan = self.plan
        if roll < plan.server_error:
            return "server_error"
        if roll < plan.server_error + plan.reset_before:
            return "reset_before"
        if roll < plan.server_error + plan.reset_before + plan.reset_after:
            return "reset_after"
        return None


def _handler_for(proxy: FaultProxy) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class name
            return

        def _relay(self) -> None:
            body = self._read_body()
            target = proxy.plan.always_fail
            if target and self.command == target[0] and target[1] in self.path:
                fault = "server_error"
            else:
                fault = proxy.choose_fault()
            if fault:
                with proxy.log.lock:
                    proxy.log.faults[fault] += 1
            if fault in ("server_error", "limit"):
                self._send_error(fault)
                return
            if fault == "reset_before":
                self._reset()
                return
            status, reason, headers, answer = self._forward(body)
            with proxy.log.lock:
                proxy.log.requests[self.command] += 1
                proxy.log.paths.append((self.command, self.path.split("?", 1)[0]))
            if fault == "reset_after":
                self._reset()
                return
            self.send_response(status, reason)
            for name, value in headers:
                if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(name, value)
            if self.command == "HEAD":
                length = next((v for n, v in headers if n.lower() == "content-length"), "0")
                self.send_header("Content-Length", length)
            else:
                self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(answer)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._read_chunked_raw()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _read_chunked_raw(self) -> bytes:
            # Kept in chunked form and forwarded with the same header.
            raw = bytearray()
            while True:
                line = self.rfile.readline()
                raw += line
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    break
                raw += self.rfile.read(size + 2)
            while True:
                line = self.rfile.readline()
                raw += line
                if line in (b"\r\n", b"\n", b""):
                    return bytes(raw)

        def _forward(self, body: bytes):
            connection = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                connection.request(self.command, self.path, body=body or None, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                return response.status, response.reason, response.getheaders(), answer
            finally:
                connection.close()

        def _send_error(self, fault: str) -> None:
            code, status = ("SlowDown", 503) if proxy.random.random() < 0.5 or fault == "limit" else ("InternalError", 500)
            payload = (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                f"<Message>injected by the test proxy ({fault})</Message></Error>"
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _reset(self) -> None:
            # SO_LINGER with a zero timeout makes close() send a TCP reset.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

    return Handler


@pytest.fixture
def counting_proxy(moto_server) -> Iterator[FaultProxy]:
    """A proxy in front of moto that injects no faults and records every request."""
    proxy = FaultProxy(moto_server.endpoint, FaultPlan()).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def run_cli(args: list[str], extra_environment: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    """Run `casbak ARGS` in a child process with the test servers' credentials."""
    command = [sys.executable, "-c", "from casbak.cli import main; main()", *args]
    return subprocess.run(
        command, env=subprocess_environment(extra_environment), capture_output=True, text=True, timeout=timeout
    )
