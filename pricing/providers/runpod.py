"""RunPod: per-GPU list prices of every GPU type from one GraphQL `gpuTypes` query.

Quirks kept here: prices are already per GPU-hour; each type is offered on the secure and/or the
community cloud (one Offer per tier with a price); a spot price of 0 or null means no spot; RunPod
is removing spot pods, so when the API rejects a spot field the query is retried once without the
spot fields; GraphQL `errors` at HTTP 200 are failures; the pseudo-type "unknown" is dropped;
`lowestPrice.stockStatus` null means out of stock.
"""
from __future__ import annotations

import logging

import requests
from pydantic import SecretStr

from pricing import gpus
from pricing.offer import Offer
from pricing.providers.base import Provider, ProviderError
from pricing.providers.http import RetryPolicy, request_json

log = logging.getLogger("pricing.providers.runpod")

SPOT_FIELDS = ("secureSpotPrice", "communitySpotPrice", "minimumBidPrice")
TIERS = (("secure", "securePrice", "secureSpotPrice"), ("community", "communityPrice", "communitySpotPrice"))


def gpu_types_query(with_spot: bool) -> str:
    spot = " secureSpotPrice communitySpotPrice" if with_spot else ""
    bid = " minimumBidPrice" if with_spot else ""
    return ("query GpuTypes { gpuTypes { id displayName memoryInGb maxGpuCount secureCloud communityCloud "
            f"securePrice communityPrice{spot} lowestPrice(input: {{gpuCount: 1}}) "
            f"{{ uninterruptablePrice{bid} stockStatus minVcpu minMemory }} }} }}")


class RunPodProvider(Provider):
    name = "runpod"

    def __init__(self, base_url: str, api_key: SecretStr | None = None, timeout: float = 30.0,
                 session: requests.Session | None = None, retry: RetryPolicy = RetryPolicy()):
        self.url = base_url.rstrip("/") + "/graphql"
        self.api_key = api_key
        self.timeout = timeout
        self.session = session or requests.Session()
        self.retry = retry
        self.last_report: dict = {}

    def fetch(self) -> list[Offer]:
        body = self._query(with_spot=True)
        spot_removed = _spot_field_rejected(body)
        if spot_removed:
            log.warning("RunPod rejected the spot fields (%s); querying without them", spot_removed)
            body = self._query(with_spot=False)
        if body.get("errors"):
            raise ProviderError(f"GraphQL error: {_first_message(body)}")
        try:
            types = body["data"]["gpuTypes"]
            if not isinstance(types, list):
                raise TypeError("gpuTypes is not a list")
            offers, unknown = parse_gpu_types(types)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"unexpected gpuTypes schema: {type(exc).__name__}: {exc}") from None
        self.last_report = {"spot fields removed": bool(spot_removed), "unknown GPUs": sorted(unknown)}
        return offers

    def _query(self, with_spot: bool) -> dict:
        body = request_json(self.session, "POST", self.url, json_body={"query": gpu_types_query(with_spot)},
                            api_key=self.api_key.get_secret_value() if self.api_key else None,
                            timeout=self.timeout, retry=self.retry, auth_hint="RUNPOD_API_KEY")
        if not isinstance(body, dict):
            raise ProviderError(f"unexpected GraphQL answer: a {type(body).__name__}, not an object")
        return body


def _first_message(body: dict) -> str:
    errors = body.get("errors") or [{}]
    message = errors[0].get("message", "no message") if isinstance(errors[0], dict) else str(errors[0])
    return " ".join(str(message).split())[:300]


def _spot_field_rejected(body: dict) -> str | None:
    """The spot field named by a GraphQL error, if the error is about one (its removal from the schema)."""
    for error in body.get("errors") or []:
        message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
        for spot_field in SPOT_FIELDS:
            if spot_field in message:
                return spot_field
    return None


def parse_gpu_types(types: list[dict]) -> tuple[list[Offer], set[str]]:
    """Offers (one per GPU type and tier with an on-demand price) and the GPU ids our table lacks."""
    from pricing.db import utcnow

    now = utcnow()
    offers, unknown = [], set()
    for gpu in types:
        gpu_id = gpu["id"]
        if gpu_id == "unknown":
            continue
        vram = float(gpu["memoryInGb"])
        spec = gpus.resolve(gpu_id, vram) or gpus.resolve(gpu.get("displayName") or "", vram)
        if spec is None:
            unknown.add(gpu_id)
            log.warning("unknown RunPod GPU type %r (%s GB): kept under its raw name", gpu_id, vram)
        lowest = gpu.get("lowestPrice") or {}
        for tier, price_field, spot_field in TIERS:
            on_demand = gpu.get(price_field)
            if not on_demand:
                continue
            spot = gpu.get(spot_field) or None  # 0 and null both mean "no spot"
            offers.append(Offer(
                provider="runpod", offer_key=f"{gpu_id}|{tier}", gpu_model=spec.model if spec else gpu_id,
                gpu_name_raw=gpu_id, vram_gb=vram, gpu_count=1, on_demand_usd_per_gpu_hour=float(on_demand),
                spot_usd_per_gpu_hour=float(spot) if spot else None, tier=tier, location=None,
                available=lowest.get("stockStatus") not in (None, "None"), fetched_at=now,
                known_gpu=spec is not None, vcpus=lowest.get("minVcpu"), ram_gb=lowest.get("minMemory"),
                stock=lowest.get("stockStatus"),
            ))
    return offers, unknown
