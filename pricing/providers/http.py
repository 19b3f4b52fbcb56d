"""HTTP for provider modules: JSON requests with bounded retries, and one-line errors free of secrets.

Timeouts, connection errors, HTTP 429 and 5xx are transient: retried with exponential backoff and
jitter (Vast answers 429 without Retry-After). 401/403 are final at once. Anything else non-2xx, or
a body that is not JSON, is a ProviderError. Messages name the status and the endpoint path only:
never the query string, headers or a body that could echo a key.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from pricing.providers.base import ProviderError


class TransientError(ProviderError):
    """A fault worth retrying: timeout, connection error, 429 or 5xx."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial_wait_s: float = 2.0
    max_wait_s: float = 60.0


def request_json(session: requests.Session, method: str, url: str, *, api_key: str | None, json_body=None,
                 timeout: float, retry: RetryPolicy, auth_hint: str, missing_ok: bool = False):
    """Send one request (retrying transient faults) and return the decoded JSON body (None for a 404
    when `missing_ok`: the thing asked about does not exist)."""
    where = urlsplit(url).path or "/"
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"

    def once():
        try:
            response = session.request(method, url, json=json_body, headers=headers, timeout=timeout)
        except requests.Timeout:
            raise TransientError(f"timeout after {timeout:g}s on {where}") from None
        except requests.RequestException as exc:
            raise TransientError(f"connection error on {where} ({type(exc).__name__})") from None
        if response.status_code in (401, 403):
            raise ProviderError(f"authentication failed (HTTP {response.status_code}) on {where}: check {auth_hint}")
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientError(f"HTTP {response.status_code} on {where}")
        if not response.ok:
            raise ProviderError(f"HTTP {response.status_code} on {where}")
        try:
            return orjson.loads(response.content)  # several times faster than json on 30 MB Vast answers
        except orjson.JSONDecodeError:
            kind = response.headers.get("Content-Type", "unknown type").split(";")[0]
            raise ProviderError(f"malformed JSON from {where} ({kind}, {len(response.content)} bytes)") from None

    try:
        for attempt in Retrying(retry=retry_if_exception_type(TransientError), stop=stop_after_attempt(retry.attempts),
                                wait=wait_random_exponential(multiplier=retry.initial_wait_s, max=retry.max_wait_s),
                                reraise=True):
            with attempt:
                return once()
    except TransientError as exc:
        raise ProviderError(f"{exc} (gave up after {retry.attempts} attempts)") from None
