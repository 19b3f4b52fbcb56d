"""HTTP for provider modules: JSON requests with bounded retries, and one-line errors free of secrets.

Timeouts, connection errors, HTTP 429 and 5xx are transient: retried with exponential backoff and
jitter. A 429 with `Retry-After` (integer seconds, RunPod REST v2) waits that long; without one
(Vast) the backoff decides. 401/403 are final at once. Anything else non-2xx is an ApiError that
keeps the status, the server's own one-line detail (RFC 9457 `detail`/`title`, Vast's
`error`/`msg`) and the decoded body, so a caller can act on it (a Vast create error that still
carries `new_contract`). Messages name the status and the endpoint path only: never the query
string, headers, or the key (it is redacted from any detail the server echoes).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
import urllib3
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from pricing.providers.base import ProviderError


class TransientError(ProviderError):
    """A fault worth retrying: timeout, connection error, 429 or 5xx."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status  # None for a timeout or connection error
        self.retry_after = retry_after


class ApiError(ProviderError):
    """A final non-2xx answer: `status`, the server's one-line `detail`, and the decoded `body` (or None)."""

    def __init__(self, message: str, *, status: int, detail: str = "", body: Any = None):
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.body = body


class AuthenticationError(ApiError):
    """The provider refused the key (HTTP 401/403, or Vast's 404 `auth_error`): nothing on that account
    can be done with it until the key is fixed; never read as "the thing is gone"."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial_wait_s: float = 2.0
    max_wait_s: float = 60.0
    max_retry_after_s: float = 300.0  # a server asking for longer than this is waited for this long
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings) -> RetryPolicy:
        """The one policy every provider and backend built from planner settings uses."""
        return cls(attempts=settings.http_retries, initial_wait_s=settings.http_retry_wait_s)

    def once(self) -> RetryPolicy:
        """The same policy without retries (creates: a retried create could rent twice)."""
        return RetryPolicy(1, self.initial_wait_s, self.max_wait_s, self.max_retry_after_s, self.sleep)


def secret_value(key) -> str | None:
    """The plain value of an optional SecretStr (or str), for the Authorization header only."""
    if key is None:
        return None
    value = key.get_secret_value() if hasattr(key, "get_secret_value") else str(key)
    return value or None


def one_line(text: Any, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def error_detail(body: Any) -> str:
    """The server's own words from an error body: RFC 9457 `title: detail` (+ the first `errors[]`
    entry), Vast's `error: msg`, or a GraphQL `errors[0].message`."""
    if not isinstance(body, dict):
        return ""
    parts = [body.get(k) for k in ("title", "detail", "error", "msg", "message") if body.get(k)]
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0]
        if isinstance(first, dict):
            bits = [first.get(k) for k in ("location", "loc", "field", "message", "msg", "detail") if first.get(k)]
            parts.append(" ".join(str(b) for b in bits))
        else:
            parts.append(str(first))
    seen, unique = set(), []
    for part in parts:
        text = one_line(part, 200)
        if text and text not in seen:
            seen.add(text)
            unique.append(text)
    return one_line(": ".join(unique))


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare; the backoff decides


def _decode_error_body(response: requests.Response) -> Any:
    try:
        return orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        return None


def request_json(session: requests.Session, method: str, url: str, *, api_key: str | None, json_body=None,
                 timeout: float, retry: RetryPolicy, auth_hint: str, missing_ok: bool = False,
                 params: dict | None = None, headers: dict | None = None,
                 decode: Callable[[bytes], Any] = orjson.loads, idempotent: bool = True):
    """Send one request (retrying transient faults) and return the decoded JSON body: None for an
    empty body (204) or a 404 when `missing_ok` (the thing asked about does not exist).

    A request that is not `idempotent` (a create: sent twice it could rent twice) is retried only
    on 429, which the server answers before acting; a timeout or 5xx is raised at once."""
    where = urlsplit(url).path or "/"
    sent = {"Accept": "application/json", **(headers or {})}
    if api_key:
        sent["Authorization"] = f"Bearer {api_key}"

    def scrub(text: str) -> str:
        return text.replace(api_key, "***") if api_key else text

    def once():
        try:
            response = session.request(method, url, json=json_body, params=params, headers=sent, timeout=timeout,
                                       stream=True)
            # one read of the whole body: requests' own `content` joins 10 kB chunks (slow on 30 MB answers)
            response._content = response.raw.read(decode_content=True) or b""
            response.raw.release_conn()
        except (requests.Timeout, urllib3.exceptions.TimeoutError):
            raise TransientError(f"timeout after {timeout:g}s on {where}") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"connection error on {where} ({type(exc).__name__})") from None
        status = response.status_code
        if status in (401, 403):
            body = _decode_error_body(response)
            detail = scrub(error_detail(body))
            raise AuthenticationError(f"authentication failed (HTTP {status}) on {where}: check {auth_hint}"
                                      + (f" ({detail})" if detail else ""), status=status, detail=detail, body=body)
        if status == 404 and missing_ok:
            return None
        if status == 429 or status >= 500:
            after = _retry_after(response) if status == 429 else None
            raise TransientError(f"HTTP {status} on {where}", status=status, retry_after=after)
        if not response.ok:
            body = _decode_error_body(response)
            detail = scrub(error_detail(body))
            raise ApiError(f"HTTP {status} on {where}" + (f": {detail}" if detail else ""),
                           status=status, detail=detail, body=body)
        if not response.content:
            return None
        try:
            return decode(response.content)  # orjson: several times faster than json on 30 MB Vast answers
        except (orjson.JSONDecodeError, ValueError):
            kind = response.headers.get("Content-Type", "unknown type").split(";")[0]
            raise ProviderError(f"malformed JSON from {where} ({kind}, {len(response.content)} bytes)") from None

    backoff = wait_random_exponential(multiplier=retry.initial_wait_s, max=retry.max_wait_s)

    def wait(state) -> float:
        after = getattr(state.outcome.exception(), "retry_after", None)
        return min(after, retry.max_retry_after_s) if after is not None else backoff(state)

    try:
        for attempt in Retrying(retry=retry_if_exception(lambda e: isinstance(e, TransientError)
                                                         and (idempotent or e.status == 429)),
                                stop=stop_after_attempt(retry.attempts),
                                wait=wait, sleep=retry.sleep, reraise=True):
            with attempt:
                return once()
    except TransientError as exc:
        if retry.attempts == 1 or not (idempotent or exc.status == 429):
            raise
        raise TransientError(f"{exc} (gave up after {retry.attempts} attempts)", status=exc.status,
                             retry_after=exc.retry_after) from None
