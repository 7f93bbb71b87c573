"""Retries with exponential backoff and full jitter for object store requests.

Only errors that a later attempt can fix are retried: throttling (HTTP 429, S3
SlowDown), server errors (HTTP 5xx), dropped or reset connections and timeouts.
Everything else (access denied, not found, invalid request) fails at once, because
repeating it only delays the error. The client libraries (botocore, s3fs, gcsfs) also
retry internally; this layer covers what they give up on, and it bounds the total.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

from casbak.errors import StorageError, UsageError

log = logging.getLogger(__name__)

T = TypeVar("T")

# S3 error codes that mean "try again later" although some arrive with status 400.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)

# Exception classes of aiohttp, botocore, requests and fsspec that mean the request
# never got a complete response. They are matched by name so that this module does not
# import every optional client library.
_TRANSIENT_CLASS_NAMES = frozenset(
    {
        "ClientConnectionError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "HTTPClientError",
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "ResponseParserError",
        "IncompleteRead",
        "FSTimeoutError",
        "ChunkedEncodingError",
        "ProxyError",
        "ChecksumError",
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one storage request; delays in seconds."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, failures: int) -> float:
        """Return a random delay before the next attempt ("full jitter" backoff)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (failures - 1)))
        return random.uniform(0, ceiling)


DEFAULT_POLICY = RetryPolicy()


def policy_from_environment() -> RetryPolicy:
    """Return the default policy, with the attempt count from CASBAK_RETRIES when set."""
    value = os.environ.get("CASBAK_RETRIES")
    if not value:
        return DEFAULT_POLICY
    try:
        attempts = int(value)
    except ValueError:
        raise UsageError(f"CASBAK_RETRIES={value!r}: expected a whole number of attempts, such as 6") from None
    if attempts < 1:
        raise UsageError(f"CASBAK_RETRIES={value!r}: must be at least 1 (1 means no retries)")
    return RetryPolicy(attempts=attempts)


def http_status(error: BaseException) -> Optional[int]:
    """Return the HTTP status code carried by a client library error, if any."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    for attribute in ("status", "code", "status_code"):
        value = getattr(error, attribute, None)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    return None


def _error_code(error: BaseException) -> Optional[str]:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _causes(error: BaseException) -> list[BaseException]:
    """Return the error and the chain of errors it was raised from."""
    chain = []
    current: Optional[BaseException] = error
    while current is not None and current not in chain and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def is_transient(error: BaseException) -> bool:
    """Return True when the same request may succeed if sent again."""
    # Not-found and access errors are final even when the library wrapped a 5xx
    # somewhere below them, so they are checked on the outer error first.
    if isinstance(error, (FileNotFoundError, PermissionError, FileExistsError)):
        return False
    for cause in _causes(error):
        if isinstance(cause, (ConnectionError, TimeoutError)):
            return True
        if any(cls.__name__ in _TRANSIENT_CLASS_NAMES for cls in type(cause).__mro__):
            return True
        if _error_code(cause) in _TRANSIENT_CODES:
            return True
        status = http_status(cause)
        if status is not None and (status >= 500 or status in (408, 429)):
            return True
    return False


def call_with_retry(
    function: Callable[[], T],
    operation: str,
    name: str,
    location: str,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> T:
    """Run `function`, retrying transient errors; raise StorageError when it gives up.

    `operation` ("read", "write", ...) and `name` (the file in the repository) only
    label log lines and the final message. FileNotFoundError passes through unchanged,
    so callers can map it to their own not-found error.
    """
    failures = 0
    while True:
        try:
            return function()
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified right below
            if not is_transient(exc):
                raise StorageError(_final_message(operation, name, location, exc, failures + 1)) from exc
            failures += 1
            if failures >= policy.attempts:
                raise StorageError(_final_message(operation, name, location, exc, failures)) from exc
            wait = policy.delay(failures)
            log.warning(
                "%s %s failed (attempt %d of %d), retrying in %.1f s: %s",
                operation, name, failures, policy.attempts, wait, _describe(exc),
            )
            time.sleep(wait)


def _final_message(operation: str, name: str, location: str, error: BaseException, attempts: int) -> str:
    detail = _describe(error)
    if isinstance(error, PermissionError) or http_status(error) in (401, 403) or "Forbidden" in detail:
        advice = "check the credentials and the bucket's access policy"
    elif is_transient(error):
        advice = f"gave up after {attempts} attempts; check the network and the endpoint, then run again"
    else:
        advice = "check the repository location and the storage options (-o)"
    return f"{operation} of {name} in {location} failed: {detail}; {advice}"


def _describe(error: BaseException) -> str:
    text = str(error).strip().replace("\n", " ")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
