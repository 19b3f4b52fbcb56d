"""The Vast.ai API client: endpoints, auth, errors, paging and units, shared by the price reader
(pricing.providers.vast) and the launch backend (planner.run.backends.vast).

The facts this relies on, with Vast's own documentation for each, are in docs/providers/vast.md (cited
below by its section names):

- Base is PLANNER_VAST_URL (the registry's default); the key only in `Authorization: Bearer`.
- Offers ("Offers"): `POST /api/v0/bundles/` (a search; 64 rows unless given a `limit`; unset filters
  take the server's defaults, so `verified` is always sent). Prices are for the whole machine;
  `storage_cost` is $/GB per 30-day month (STORAGE_HOURS_PER_MONTH); `duration` is in seconds.
- Instances ("Instances"): listed only through `GET /api/v1/instances/` (v0 answers 410
  `deprecated_endpoint`), at most 25 rows a page, `next_token` passed back as `after_token`, JSON-valued
  `select_filters` on stored columns (`label` with `eq` or `in`, `id`, `actual_status`, `gpu_name`).
  `GET/DELETE /api/v0/instances/{id}/` and `PUT /api/v0/instances/request_logs/{id}/` still work; `PUT
  /api/v0/instances/{id}/ {"state": "stopped"}` stops one (SIGTERM to its container; its disk bills on).
- Create ("Create"): `PUT /api/v0/asks/{id}/`, sent once; an error body that still carries
  `new_contract` means a (stopped) instance exists: the caller destroys it at once.
- Errors ("Errors"): `{success:false, error, msg}`. A revoked or rotated key is 404 `auth_error`, an
  authentication failure like a 401 (AuthenticationError); a 404 means "gone" only when its `error` is
  `no_such_instance` or `not_found`. 429 carries no Retry-After: pricing.providers.http backs off itself.
- Logs ("Logs"): `request_logs` (without `daemon_logs`, which returns the host daemon's log instead of
  the container's) answers `result_url`; GET it until 200 (the CLI: 30 tries, 0.3 s apart).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import requests

from pricing.providers.base import ProviderError
from pricing.providers.http import ApiError, AuthenticationError, RetryPolicy, request_json, secret_value
from pricing.providers.registry import PROVIDERS, VAST

ENTRY = PROVIDERS[VAST]
STORAGE_HOURS_PER_MONTH = 720  # storage_cost is per GB per 30-day month
LOG_TRIES, LOG_INTERVAL_S = 30, 0.3
GONE_ERRORS = ("no_such_instance", "not_found")  # the only 404s that mean "it does not exist"


def error_of(body) -> str | None:
    """Vast's `error` code from an error body."""
    return body.get("error") if isinstance(body, dict) else None


def storage_usd_per_hour(storage_cost: float | None, disk_gb: float) -> float:
    """What `disk_gb` of an offer's disk costs per hour (billed from creation, also while stopped)."""
    return float(storage_cost or 0.0) * disk_gb / STORAGE_HOURS_PER_MONTH


def is_outbid(instance: dict) -> bool:
    """The all-`stopped` state triple: interrupted or outbid (docs/providers/vast.md, "Instances")."""
    return {instance.get("cur_state"), instance.get("intended_status"), instance.get("next_state")} == {"stopped"}


class VastAPI:
    def __init__(self, base_url: str = ENTRY.default_url, api_key=None, *, timeout: float = 30.0,
                 retry: RetryPolicy = RetryPolicy(), session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key  # SecretStr | None
        self.timeout = timeout
        self.retry = retry
        self.session = session or requests.Session()
        self.sleep = sleep

    def call(self, method: str, path: str, *, body: dict | None = None, params: dict | None = None,
             missing_ok: bool = False, idempotent: bool = True, decode=orjson.loads):
        """One request to `{base}{path}` (path starts with /api/v0 or /api/v1). With `missing_ok` a 404
        whose `error` is one of GONE_ERRORS answers None; a 404 `auth_error` (a revoked or rotated key) is an
        AuthenticationError, never "gone"."""
        try:
            return request_json(self.session, method, f"{self.base_url}{path}", api_key=secret_value(self.api_key),
                                json_body=body, params=params, timeout=self.timeout, retry=self.retry,
                                auth_hint=ENTRY.key_env, idempotent=idempotent, decode=decode)
        except ApiError as exc:
            if exc.status != 404:
                raise
            if error_of(exc.body) == "auth_error":
                raise AuthenticationError(f"authentication failed (HTTP 404 auth_error) on {path.split('?')[0]}: "
                                          f"check {ENTRY.key_env}", status=404, detail=exc.detail,
                                          body=exc.body) from None
            if missing_ok and error_of(exc.body) in GONE_ERRORS:
                return None
            raise

    def search(self, query: dict, decode=orjson.loads):
        """POST /api/v0/bundles/: the raw answer (decoded by `decode`)."""
        return self.call("POST", "/api/v0/bundles/", body=query, decode=decode)

    def balance(self) -> float:
        """The account's prepaid credit in USD: `GET /api/v0/users/current/` (docs/providers/vast.md,
        "Account": `credit` is read, `balance` where it is missing)."""
        user = self.call("GET", "/api/v0/users/current/")
        value = next((user[k] for k in ("credit", "balance") if isinstance(user, dict)
                      and isinstance(user.get(k), (int, float)) and not isinstance(user.get(k), bool)), None)
        if value is None:
            raise ProviderError("unexpected /api/v0/users/current/ schema: no credit or balance number")
        return float(value)

    def offers(self, query: dict) -> list[dict]:
        body = self.search(query)
        offers = body.get("offers") if isinstance(body, dict) else None
        if not isinstance(offers, list):
            raise ProviderError("unexpected bundles schema: no 'offers' list")
        return offers

    def create(self, ask_id: int, body: dict) -> int:
        """PUT /api/v0/asks/{id}/ -> the new instance id. A failure whose body still names a
        `new_contract` destroys that instance before raising."""
        try:
            answer = self.call("PUT", f"/api/v0/asks/{ask_id}/", body=body, idempotent=False)
        except ApiError as exc:
            contract = exc.body.get("new_contract") if isinstance(exc.body, dict) else None
            if contract:
                self.destroy(contract)
            raise
        answer = answer if isinstance(answer, dict) else {}
        contract = answer.get("new_contract")
        if not answer.get("success") or not contract:
            if contract:
                self.destroy(contract)
            reason = answer.get("error") or answer.get("msg") or "no instance id in the answer"
            raise ApiError(f"Vast.ai did not create an instance from offer {ask_id}: {reason}", status=200,
                           detail=str(reason), body=answer)
        return int(contract)

    def stop(self, instance_id) -> None:
        """PUT /api/v0/instances/{id}/ {"state": "stopped"} (vast-cli `stop_instance`; docs/providers/vast.md,
        "Instances"): the container gets SIGTERM and the instance is stopped, its disk kept and billed until it is
        destroyed. Quiet when it is gone (GONE_ERRORS), never for a rejected key."""
        answer = self.call("PUT", f"/api/v0/instances/{instance_id}/", body={"state": "stopped"}, missing_ok=True)
        if isinstance(answer, dict) and answer.get("success") is False and answer.get("error") not in GONE_ERRORS:
            raise ProviderError(f"Vast.ai did not stop instance {instance_id}: {answer.get('error')}")

    def destroy(self, instance_id) -> None:
        """DELETE /api/v0/instances/{id}/; quiet when it is gone (GONE_ERRORS), never for a rejected key."""
        answer = self.call("DELETE", f"/api/v0/instances/{instance_id}/", missing_ok=True)
        if isinstance(answer, dict) and answer.get("success") is False and answer.get("error") not in GONE_ERRORS:
            raise ProviderError(f"Vast.ai did not destroy instance {instance_id}: {answer.get('error')}")

    def instances(self, filters: dict | None = None, max_pages: int = 400) -> list[dict]:
        """Every instance matching `filters` (select_filters), walking the v1 pages by next_token."""
        rows: list[dict] = []
        token = None
        for _ in range(max_pages):
            params = {"select_filters": orjson.dumps(filters).decode()} if filters else {}
            if token:
                params["after_token"] = token
            body = self.call("GET", "/api/v1/instances/", params=params or None)
            page = body.get("instances") if isinstance(body, dict) else None
            if not isinstance(page, list):
                raise ProviderError("unexpected /api/v1/instances/ schema: no 'instances' list")
            rows += [row for row in page if isinstance(row, dict)]
            token = body.get("next_token")
            if not token:
                return rows
        raise ProviderError(f"/api/v1/instances/ still paging after {max_pages} pages")

    def labelled(self, labels) -> list[dict]:
        """Every instance carrying one of `labels`: one `label in [...]` listing (vast-cli's own filter for
        several labels), not a request per instance."""
        return self.instances({"label": {"in": sorted(set(labels))}})

    def logs(self, instance_id, tail: int = 1000) -> str:
        """The container's log: request_logs, then GET the result_url until it answers 200; '' when it
        never does. No `daemon_logs`: that returns the host daemon's log instead of the job's."""
        answer = self.call("PUT", f"/api/v0/instances/request_logs/{instance_id}/", body={"tail": str(tail)})
        url = answer.get("result_url") if isinstance(answer, dict) else None
        if not url:
            raise ProviderError(f"Vast.ai gave no log URL for instance {instance_id}")
        for attempt in range(LOG_TRIES):
            try:
                response = self.session.get(url, timeout=self.timeout)  # a presigned S3 URL: no key sent
            except requests.RequestException:
                response = None
            if response is not None and response.status_code == 200:
                return response.text
            if attempt + 1 < LOG_TRIES:
                self.sleep(LOG_INTERVAL_S)
        return ""
