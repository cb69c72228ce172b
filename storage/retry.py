"""Retry with backoff for transient storage errors, ending in one clear error that names the URL.

fsspec backends retry a little on their own (botocore: about 5 attempts over ~10 s for a refused connection; s3fs:
5 attempts on timeouts and throttling), which covers a blip but not an endpoint that is away for a minute (a MinIO
restart, a load balancer failover). ``retry_call`` wraps one whole operation (a read, or a complete atomic write)
and repeats it with exponential backoff until a deadline; an error that is not transient (missing object, denied,
bad request) is raised at once. No library does this across backends with a deadline and a message naming the URL
(tenacity would give the loop, not the classification), hence this small module.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["DEADLINE_ENV", "StorageError", "deadline_s", "is_transient", "retry_call"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds one operation keeps retrying a transient error; the environment sets it for every process of a run.
DEADLINE_ENV = "STORAGE_RETRY_DEADLINE_S"
DEFAULT_DEADLINE_S = 120.0
FIRST_WAIT_S = 0.5
MAX_WAIT_S = 15.0
# Error codes object stores send for "try again" (S3, GCS, MinIO, Ceph, R2).
RETRY_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
}


class StorageError(OSError):
    """A storage operation that kept failing with transient errors until its deadline (the URL is in the message)."""


def env_seconds(name: str, default: float) -> float:
    """A duration in seconds from the environment variable ``name`` (unset or empty: ``default``); a value that is
    not a number raises naming the variable."""
    value = os.environ.get(name)
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of seconds") from None


def deadline_s() -> float:
    """The retry deadline in seconds: ``$STORAGE_RETRY_DEADLINE_S``, else 120."""
    return env_seconds(DEADLINE_ENV, DEFAULT_DEADLINE_S)


def _transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from fsspec.exceptions import FSTimeoutError

        types.append(FSTimeoutError)
    except ImportError:  # pragma: no cover - fsspec is a requirement
        pass
    try:
        from botocore import exceptions as bx

        types += [bx.ConnectionError, bx.HTTPClientError, bx.ResponseStreamingError]
    except ImportError:  # no S3 support installed
        pass
    try:
        import aiohttp

        types += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError]
    except ImportError:
        pass
    return tuple(types)


_TRANSIENT: tuple[type[BaseException], ...] | None = None


def _status(err: BaseException) -> int | None:
    """The HTTP status an error carries (botocore ClientError, aiohttp ClientResponseError, gcsfs HttpError)."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        code = (response.get("Error") or {}).get("Code")
        if code in RETRY_CODES:
            return 503
        return int(status) if status else None
    for attr in ("status", "code", "status_code"):
        value = getattr(err, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) is worth retrying: a refused or dropped connection, a
    timeout, an HTTP 5xx / 429 or a throttling code. Missing objects and denied access are not."""
    global _TRANSIENT
    if _TRANSIENT is None:
        _TRANSIENT = _transient_types()
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        if isinstance(err, _TRANSIENT):
            return True
        status = _status(err)
        if status is not None and (status >= 500 or status == 429):
            return True
        err = err.__cause__ or err.__context__
    return False


def retry_call(
    fn: Callable[[], T],
    *,
    url: Any,
    what: str,
    deadline: float | None = None,
    first_wait_s: float = FIRST_WAIT_S,
    max_wait_s: float = MAX_WAIT_S,
) -> T:
    """``fn()``, repeated on transient errors with exponential backoff (jittered) until ``deadline`` seconds.

    Args:
        fn: the whole operation; it must be safe to repeat (a read, or a write that replaces the object whole).
        url: what the operation touches, named in the log and the final error.
        what: a verb for messages ("read", "write", "list").
        deadline: seconds to keep trying (default ``deadline_s()``); 0 tries once.

    Raises:
        StorageError: the operation still failed transiently at the deadline (chained to the last error).
        Exception: the first error that is not transient, unchanged.
    """
    limit = deadline_s() if deadline is None else float(deadline)
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as err:
            if not is_transient(err):
                raise
            waited = time.monotonic() - start
            if waited >= limit:
                raise StorageError(
                    f"{what} {url} failed after {attempt} attempt(s) over {waited:.0f} s: {type(err).__name__}: "
                    f"{err} (transient errors until the deadline; {_endpoint_hint(url)}; {DEADLINE_ENV}={limit:g})"
                ) from err
            pause = min(max_wait_s, first_wait_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            pause = max(0.0, min(pause, limit - waited))
            log.warning("%s %s: %s: %s; retry %d in %.1f s", what, url, type(err).__name__, err, attempt, pause)
            time.sleep(pause)


def _endpoint_hint(url: Any) -> str:
    """The endpoint the client talks to, in the order s3fs applies them: fsspec's config (``FSSPEC_S3_ENDPOINT_URL``,
    passed to the client as an argument), then botocore's environment, else AWS itself."""
    text = str(url)
    if text.startswith(("s3://", "s3a://")):
        from fsspec.config import conf

        options = conf.get(text.split(":", 1)[0], {}) or conf.get("s3", {})
        endpoint = (
            options.get("endpoint_url")
            or (options.get("client_kwargs") or {}).get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or "AWS S3"
        )
        return f"endpoint {endpoint}"
    return "check the network and the service"
