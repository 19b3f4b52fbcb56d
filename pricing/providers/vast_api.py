"""The Vast.ai API client: endpoints, auth, errors, paging and units, shared by the price reader
(pricing.providers.vast) and the launch backend (planner.run.backends.vast).

Facts from /work/shared/reference/provider-apis-2026-12.md §4 ("note §4") and pricing-apis.md:

- Base is PLANNER_VAST_URL (default https://console.vast.ai); the key only in `Authorization: Bearer`.
- Offers: `POST /api/v0/bundles/` (a search; 64 rows unless given a `limit`). Prices are for the
  whole machine; `storage_cost` is $/GB per 30-day month (STORAGE_HOURS_PER_MONTH).
- Instances: list only through `GET /api/v1/instances/` (v0 answers 410 `deprecated_endpoint`),
  at most 25 rows a page, `next_token` passed back as `after_token`, JSON-valued `select_filters`
  on stored columns (`label`, `id`, `actual_status`, `gpu_name`).
  `GET/DELETE /api/v0/instances/{id}/` and `PUT /api/v0/instances/request_logs/{id}/` still work.
- Create: `PUT /api/v0/asks/{id}/`, sent once; an error body that still carries `new_contract`
  means a (stopped) instance exists: the caller destroys it at once.
- Errors: `{success:false, error, msg}`; a bad key may be 404 `auth_error`. 429 carries no
  Retry-After: pricing.providers.http backs off itself.
- Logs: `request_logs` answers `result_url`; GET it until 200 (the CLI: 30 tries, 0.3 s apart).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import requests

from pricing.providers.base import ProviderError
from pricing.providers.http import ApiError, RetryPolicy, request_json, secret_value

KEY_ENV = "VAST_API_KEY"
DEFAULT_URL = "https://console.vast.ai"
STORAGE_HOURS_PER_MONTH = 720  # storage_cost is per GB per 30-day month
PAGE_ROWS = 25  # the v1 instance listing's page size
LOG_TRIES, LOG_INTERVAL_S = 30, 0.3


def storage_usd_per_hour(storage_cost: float | None, disk_gb: float) -> float:
    """What `disk_gb` of an offer's disk costs per hour (billed from creation, also while stopped)."""
    return float(storage_cost or 0.0) * disk_gb / STORAGE_HOURS_PER_MONTH


def is_outbid(instance: dict) -> bool:
    """The all-`stopped` state triple: interrupted or outbid (note §4 "Instance status", as dstack reads it)."""
    return {instance.get("cur_state"), instance.get("intended_status"), instance.get("next_state")} == {"stopped"}


class VastAPI:
    def __init__(self, base_url: str = DEFAULT_URL, api_key=None, *, timeout: float = 30.0,
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
        """One request to `{base}{path}` (path starts with /api/v0 or /api/v1)."""
        return request_json(self.session, method, f"{self.base_url}{path}", api_key=secret_value(self.api_key),
                            json_body=body, params=params, timeout=self.timeout, retry=self.retry, auth_hint=KEY_ENV,
                            missing_ok=missing_ok, idempotent=idempotent, decode=decode)

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

    def destroy(self, instance_id) -> None:
        """DELETE /api/v0/instances/{id}/; quiet for `no_such_instance`."""
        try:
            answer = self.call("DELETE", f"/api/v0/instances/{instance_id}/", missing_ok=True)
        except ApiError as exc:
            if isinstance(exc.body, dict) and exc.body.get("error") == "no_such_instance":
                return
            raise
        if isinstance(answer, dict) and answer.get("success") is False and answer.get("error") != "no_such_instance":
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

    def instance(self, instance_id, label: str | None = None) -> dict | None:
        """One instance from a label-filtered v1 page (one request, not a poll per instance)."""
        filters = {"label": {"eq": label}} if label else {"id": {"eq": int(instance_id)}}
        return next((row for row in self.instances(filters, max_pages=4) if str(row.get("id")) == str(instance_id)),
                    None)

    def logs(self, instance_id, tail: int = 1000) -> str:
        """request_logs, then GET the result_url until it answers 200; '' when it never does."""
        answer = self.call("PUT", f"/api/v0/instances/request_logs/{instance_id}/",
                           body={"tail": str(tail), "daemon_logs": "true"})
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
