"""The RunPod API client: everything about talking to RunPod, shared by the price reader
(pricing.providers.runpod) and the launch backend (planner.run.backends.runpod).

The facts this relies on, with RunPod's own documentation for each, are in docs/providers/runpod.md
(cited below by its section names):

- REST v2 lives under `{base}/v2`, GraphQL under `{base}/graphql` ("API"); `base` is PLANNER_RUNPOD_URL
  (the registry's default). The key only ever goes in `Authorization: Bearer`; v2 needs it everywhere,
  catalog included.
- v2 errors are RFC 9457 problem+json `{title,status,detail,errors?[]}` ("Errors and limits"); the detail
  is kept on the ApiError. GraphQL answers its errors at HTTP 200 in `errors[]` (a failure here), and is
  retiring ("GraphQL"): a 410 gets a message saying what to do. A 429 carries `Retry-After` in integer
  seconds, honoured by pricing.providers.http.
- Catalog ("Prices and availability"): `GET /v2/catalog/gpus?include=AVAILABILITY&product=POD&cloud=...
  &count=N&minCudaVersion=V`; list prices per GPU, no spot, availability upper case, the data centres
  with stock.
- Pods ("Pods"): `POST /v2/pods` (strict: 422 names an unknown field; 400 rule or no capacity; 402
  balance; 403 pool not allowed), `GET /v2/pods/{id}`, `POST /v2/pods/{id}/action` (`stop`: SIGTERM, then EXITED, the disk kept and billed; 409
  when the pod's status allows no stop), `DELETE /v2/pods/{id}` (204), `GET /v2/pods` (one
  unpaged list, no server-side filter: filtered by name on the client), and `GET /v2/pods/{id}/logs`
  ("Logs": Server-Sent Events of the container's lines with `source=container`, resumed with
  `Last-Event-ID`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson
import requests

from pricing.providers.base import ProviderError
from pricing.providers.http import ApiError, RetryPolicy, TransientError, one_line, request_json, secret_value
from pricing.providers.registry import PROVIDERS, RUNPOD

ENTRY = PROVIDERS[RUNPOD]
CLOUDS = {"secure": "SECURE", "community": "COMMUNITY"}  # our tier -> v2 `cloud`
LOG_TAIL_MAX = 5000
LOG_SOURCE = "container"  # the job's own lines; omitted, the stream mixes in the host's `system` lines


@dataclass(frozen=True)
class LogEvent:
    """One SSE event of `GET /v2/pods/{id}/logs`: its id (for Last-Event-ID) and the log line."""

    id: str | None
    line: str
    source: str = "container"  # or "system"
    ts: str | None = None


class RunPodAPI:
    def __init__(self, base_url: str = ENTRY.default_url, api_key=None, *, timeout: float = 30.0,
                 retry: RetryPolicy = RetryPolicy(), session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key  # SecretStr | None: read only where the header is built
        self.timeout = timeout
        self.retry = retry
        self.session = session or requests.Session()

    @property
    def has_key(self) -> bool:
        return secret_value(self.api_key) is not None

    # ------------------------------------------------------------------ transport

    def rest(self, method: str, path: str, *, body: dict | None = None, params: dict | None = None,
             missing_ok: bool = False, idempotent: bool = True, retry: RetryPolicy | None = None):
        return request_json(self.session, method, f"{self.base_url}/v2{path}", api_key=secret_value(self.api_key),
                            json_body=body, params=params, timeout=self.timeout, retry=retry or self.retry,
                            auth_hint=ENTRY.key_env, missing_ok=missing_ok, idempotent=idempotent)

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        """The `data` of a GraphQL answer; `errors` at HTTP 200 and a retired endpoint (410) are ProviderErrors."""
        try:
            body = request_json(self.session, "POST", f"{self.base_url}/graphql", api_key=secret_value(self.api_key),
                                json_body={"query": query, "variables": variables or {}}, timeout=self.timeout,
                                retry=self.retry, auth_hint=ENTRY.key_env)
        except ApiError as exc:
            if exc.status == 410:
                raise ProviderError(f"RunPod retired its GraphQL API (HTTP 410 on /graphql): set {ENTRY.key_env} so "
                                    "prices and pods go through REST v2") from None
            raise
        if not isinstance(body, dict):
            raise ProviderError(f"unexpected GraphQL answer: a {type(body).__name__}, not an object")
        if body.get("errors"):
            raise ProviderError(f"GraphQL error: {graphql_message(body)}")
        data = body.get("data")
        if not isinstance(data, dict):
            raise ProviderError("unexpected GraphQL answer: no data object")
        return data

    def balance(self) -> float:
        """The account's prepaid balance in USD: GraphQL `myself { clientBalance }`, the only balance read
        until GraphQL retires (docs/providers/runpod.md, "GraphQL")."""
        myself = self.graphql("query { myself { clientBalance } }").get("myself")
        value = myself.get("clientBalance") if isinstance(myself, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ProviderError("unexpected GraphQL answer: no myself.clientBalance number")
        return float(value)

    # ------------------------------------------------------------------ catalog

    def catalog_gpus(self, cloud: str, count: int = 1, min_cuda: str | None = None) -> list[dict]:
        """Every GPU type with its list prices and, for `count` GPUs in one pod on `cloud` (SECURE|COMMUNITY)
        with at least CUDA `min_cuda`, its availability, data centres and CUDA versions (include and product
        go together; count and minCudaVersion are valid only with them)."""
        params = {"include": "AVAILABILITY", "product": "POD", "cloud": cloud, "count": count}
        if min_cuda:
            params["minCudaVersion"] = min_cuda
        body = self.rest("GET", "/catalog/gpus", params=params)
        gpus = body.get("gpus") if isinstance(body, dict) else None
        if not isinstance(gpus, list) or not all(isinstance(g, dict) and "id" in g for g in gpus):
            raise ProviderError("unexpected /v2/catalog/gpus schema: no 'gpus' list of objects with an 'id'")
        return gpus

    # ------------------------------------------------------------------ pods

    def create_pod(self, body: dict) -> dict:
        """POST /v2/pods, sent once (a retried create could rent twice; a 429 is retried: nothing was
        created). The ApiError's status says what to do (docs/providers/runpod.md, "Pods")."""
        pod = self.rest("POST", "/pods", body=body, idempotent=False)
        if not isinstance(pod, dict) or not pod.get("id"):
            raise ProviderError("RunPod created no pod: the answer has no id")
        return pod

    def pod(self, pod_id: str) -> dict | None:
        pod = self.rest("GET", f"/pods/{pod_id}", missing_ok=True)
        return pod if isinstance(pod, dict) else None

    def stop_pod(self, pod_id: str) -> None:
        """POST /v2/pods/{id}/action {"action": "stop"} (docs/providers/runpod.md, "Pods"): the container gets
        SIGTERM and the pod moves to EXITED, keeping (and billing) its disk until it is deleted. Quiet when the pod
        is gone (404) or no longer running (409: `stop` is not in its `actions`)."""
        try:
            self.rest("POST", f"/pods/{pod_id}/action", body={"action": "stop"}, missing_ok=True)
        except ApiError as exc:
            if exc.status != 409:
                raise

    def delete_pod(self, pod_id: str) -> None:
        """DELETE /v2/pods/{id}; quiet when the pod is already gone."""
        self.rest("DELETE", f"/pods/{pod_id}", missing_ok=True)

    def pods(self) -> list[dict]:
        """Every pod of the account: one unpaged list that filters nothing server-side."""
        body = self.rest("GET", "/pods")
        page = body.get("pods") if isinstance(body, dict) else None
        if not isinstance(page, list):
            raise ProviderError("unexpected /v2/pods schema: no 'pods' list")
        return [p for p in page if isinstance(p, dict)]

    def pod_logs(self, pod_id: str, *, tail: int | None = 100, last_event_id: str | None = None,
                 idle_timeout_s: float = 30.0, stop: Callable[[], bool] = lambda: False) -> Iterator[LogEvent]:
        """The container's log as SSE events: the last `tail` lines, then live ones. Returns when
        the stream ends, when nothing arrives for `idle_timeout_s`, or when `stop()` is true between
        events. Resume a dropped stream by passing the last event's id (and no `tail`)."""
        headers = {"Accept": "text/event-stream"}
        if secret_value(self.api_key):
            headers["Authorization"] = f"Bearer {secret_value(self.api_key)}"
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        where = f"/v2/pods/{pod_id}/logs"
        try:
            params = {"source": LOG_SOURCE} | ({} if tail is None else {"tail": max(0, min(tail, LOG_TAIL_MAX))})
            response = self.session.get(f"{self.base_url}{where}", params=params,
                                        headers=headers, stream=True, timeout=(self.timeout, idle_timeout_s))
        except requests.RequestException as exc:
            raise TransientError(f"connection error on {where} ({type(exc).__name__})") from None
        with response:
            if response.status_code == 404:
                return
            if not response.ok:
                raise ProviderError(f"HTTP {response.status_code} on {where}")
            try:
                for event in parse_sse(response.iter_lines(chunk_size=1, decode_unicode=True)):  # lines as they come
                    yield event
                    if stop():
                        return
            except (requests.ConnectionError, requests.Timeout):  # dropped or idle: the caller resumes
                return


def parse_sse(lines) -> Iterator[LogEvent]:
    """Server-Sent Events to LogEvents: `id:` and `data:` lines, a blank line ends an event; `data`
    is `{"ts","source","line"}` JSON (a plain string is kept as the line)."""
    event_id, data = None, []
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if line == "" or line is None:
            if data:
                yield _log_event(event_id, "\n".join(data))
            data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = value
        elif name == "data":
            data.append(value)
    if data:
        yield _log_event(event_id, "\n".join(data))


def _log_event(event_id: str | None, data: str) -> LogEvent:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        return LogEvent(event_id, data)
    if not isinstance(payload, dict):
        return LogEvent(event_id, str(payload))
    return LogEvent(event_id, str(payload.get("line", "")), str(payload.get("source") or "container"),
                    payload.get("ts"))


def graphql_message(body: dict) -> str:
    """The first GraphQL error's message, on one line."""
    errors = body.get("errors") or [{}]
    first = errors[0] if isinstance(errors, list) and errors else errors
    message = first.get("message", "no message") if isinstance(first, dict) else str(first)
    return one_line(message)
