"""RunPod and Vast provider modules against fake servers on 127.0.0.1 (pytest-httpserver)."""
from __future__ import annotations

import copy
import json
import logging
import time

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from werkzeug import Response

from planner.run.replay import recorded_payload
from pricing import gpus
from pricing.providers.base import ProviderError
from pricing.providers.http import RetryPolicy
from pricing.providers.runpod import RunPodProvider
from pricing.providers.vast import VastOffer, VastProvider

FAST = RetryPolicy(attempts=3, initial_wait_s=0.001, max_wait_s=0.01)
KEY = "SECRET-key-should-never-leak-42"
RUNPOD = json.loads(recorded_payload("/graphql"))
VAST = json.loads(recorded_payload("/api/v0/bundles/"))


def runpod(httpserver, key=None, timeout=2.0) -> RunPodProvider:
    return RunPodProvider(httpserver.url_for(""), SecretStr(key) if key else None, timeout=timeout, retry=FAST)


def vast(httpserver, key=None, limit=1000, disk_gb=50.0, timeout=2.0) -> VastProvider:
    return VastProvider(httpserver.url_for(""), SecretStr(key) if key else None, timeout=timeout, retry=FAST,
                        limit=limit, disk_gb=disk_gb, min_interval_s=0)


def vast_answer(on_demand: list[dict], bid: list[dict] | None = None):
    """A handler answering a bundles search by its `type`, honouring `limit` and a num_gpus split."""
    def handler(request):
        query = request.get_json()
        offers = on_demand if query["type"] == "on-demand" else (bid if bid is not None else on_demand)
        gpus_filter = query.get("num_gpus")
        if gpus_filter:
            op, value = next(iter(gpus_filter.items()))
            keep = {"eq": lambda n: n == value, "in": lambda n: n in value, "gt": lambda n: n > value}[op]
            offers = [o for o in offers if keep(o["num_gpus"])]
        return Response(json.dumps({"offers": offers[: query["limit"]]}), content_type="application/json")
    return handler


# ------------------------------------------------------------------------------------------ RunPod

def test_runpod_normalizes_recorded_payload(httpserver):
    httpserver.expect_request("/graphql", method="POST").respond_with_json(RUNPOD)
    offers = {o.offer_key: o for o in runpod(httpserver).fetch()}
    assert "unknown|secure" not in offers and "unknown|community" not in offers
    h100 = offers["NVIDIA H100 80GB HBM3|secure"]
    assert (h100.gpu_model, h100.vram_gb, h100.on_demand_usd_per_gpu_hour) == ("H100-SXM", 80, 2.99)
    assert "NVIDIA H100 80GB HBM3|community" not in offers  # no community price: no community offer
    assert offers["NVIDIA GeForce RTX 3090|community"].available is False  # stockStatus null: out of stock
    assert all(o.gpu_count == 1 and o.known_gpu for o in offers.values())


def test_runpod_has_no_spot_even_when_a_stale_answer_carries_spot_fields(httpserver):
    """docs/providers/runpod.md, "No spot": spot pods are gone; the query asks for no spot field and ignores any sent."""
    assert any(g.get("secureSpotPrice") for g in RUNPOD["data"]["gpuTypes"])  # the recording still has some
    httpserver.expect_request("/graphql", method="POST").respond_with_json(RUNPOD)
    offers = runpod(httpserver).fetch()
    assert offers and all(o.spot_usd_per_gpu_hour is None for o in offers)
    query = json.loads(httpserver.log[0][0].data)["query"]
    assert "SpotPrice" not in query and "minimumBidPrice" not in query


CATALOG = {"gpus": [  # /v2/catalog/gpus?include=AVAILABILITY&product=POD, as docs/providers/runpod.md, "Prices and availability" shows it
    {"id": "NVIDIA H100 80GB HBM3", "name": "H100 SXM", "pool": None, "manufacturer": "NVIDIA", "memory": 80,
     "secure": True, "community": True, "price": {"secure": 2.99, "community": 2.69, "serverless": None},
     "maxCount": {"secure": 8, "community": 8}, "availability": "HIGH",
     "dataCenters": [{"id": "US-TX-3", "name": "US-TX-3", "availability": "HIGH"}],
     "cudaVersions": [{"version": "12.4", "available": True}, {"version": "12.8", "available": True}]},
    {"id": "NVIDIA A100 80GB PCIe", "name": "A100 PCIe", "manufacturer": "NVIDIA", "memory": 80, "secure": True,
     "community": False, "price": {"secure": 1.64, "community": None}, "maxCount": {"secure": 8, "community": 0},
     "availability": "NONE"},
    {"id": "AMD Instinct MI300X OAM", "name": "MI300X", "manufacturer": "AMD", "memory": 192, "secure": True,
     "community": False, "price": {"secure": 2.49}, "availability": "LOW",
     "dataCenters": [{"id": "EU-RO-1", "name": "EU-RO-1", "availability": "LOW"}]},
]}


def test_runpod_with_a_key_reads_the_v2_catalog_once_per_cloud(httpserver):
    httpserver.expect_request("/v2/catalog/gpus", method="GET").respond_with_json(CATALOG)
    provider = runpod(httpserver, key=KEY)
    offers = {o.offer_key: o for o in provider.fetch()}
    queries = sorted((r.args["cloud"], r.args["include"], r.args["product"]) for r, _ in httpserver.log
                     if r.args["count"] == "1")  # multi-GPU pods are asked for separately (their own test)
    assert queries == [("COMMUNITY", "AVAILABILITY", "POD"), ("SECURE", "AVAILABILITY", "POD")]
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r, _ in httpserver.log)
    assert {key for key, o in offers.items() if o.gpu_count == 1} == {
        "NVIDIA H100 80GB HBM3|secure", "NVIDIA H100 80GB HBM3|community", "NVIDIA A100 80GB PCIe|secure",
        "AMD Instinct MI300X OAM|secure"}
    h100 = offers["NVIDIA H100 80GB HBM3|community"]
    assert (h100.gpu_model, h100.on_demand_usd_per_gpu_hour, h100.spot_usd_per_gpu_hour, h100.stock) == (
        "H100-SXM", 2.69, None, "HIGH")
    assert offers["NVIDIA A100 80GB PCIe|secure"].available is False  # NONE, upper case (docs/providers/runpod.md)
    assert offers["AMD Instinct MI300X OAM|secure"].available and offers["AMD Instinct MI300X OAM|secure"].known_gpu
    assert provider.last_report["source"] == "REST v2 catalog"


def test_runpod_multi_gpu_pods_are_asked_per_count_for_the_images_cuda_and_priced_per_gpu(httpserver):
    """Issue 21: the catalog is asked once per cloud and pod size (`count`, up to the largest `maxCount`) with the
    job image's CUDA (`minCudaVersion`, so a type whose hosts cannot run the image reads unavailable instead of
    400ing at create), and a pod of N GPUs is offered at N x the per-GPU list price (docs/providers/runpod.md,
    "Prices and availability")."""
    def answer(request):
        count = int(request.args["count"])
        gpus = copy.deepcopy(CATALOG["gpus"])
        for gpu in gpus:
            if count == 8:  # no data centre has eight free H100s in one machine now
                gpu["availability"] = "NONE"
                gpu["dataCenters"] = [{**dc, "availability": "NONE"} for dc in gpu.get("dataCenters", [])]
        return Response(json.dumps({"gpus": gpus}), content_type="application/json")

    httpserver.expect_request("/v2/catalog/gpus", method="GET").respond_with_handler(answer)
    provider = RunPodProvider(httpserver.url_for(""), SecretStr(KEY), retry=FAST, min_cuda="12.4")
    offers = {o.offer_key: o for o in provider.fetch()}
    asked = sorted((r.args["cloud"], int(r.args["count"])) for r, _ in httpserver.log)
    assert asked == [(cloud, n) for cloud in ("COMMUNITY", "SECURE") for n in (1, 2, 4, 8)]
    assert all(r.args["minCudaVersion"] == "12.4" for r, _ in httpserver.log)
    two = offers["NVIDIA H100 80GB HBM3|secure|2"]
    assert (two.gpu_count, two.on_demand_usd_per_gpu_hour, two.available, two.location) == (2, 2.99, True, "US-TX-3")
    assert offers["NVIDIA H100 80GB HBM3|community|4"].on_demand_usd_per_gpu_hour * 4 == pytest.approx(4 * 2.69)
    assert offers["NVIDIA H100 80GB HBM3|secure|8"].available is False  # asked with count=8: NONE
    assert "NVIDIA A100 80GB PCIe|community|2" not in offers  # maxCount 0 on community: not offered there
    assert not [key for key in offers if key.startswith("NVIDIA A100 80GB PCIe|secure|") and offers[key].available]


def test_runpod_v2_problem_json_error_is_one_line_with_its_detail(httpserver):
    problem = {"title": "Bad Request", "status": 400, "detail": "include=AVAILABILITY requires product"}
    httpserver.expect_request("/v2/catalog/gpus").respond_with_json(problem, status=400,
                                                                    content_type="application/problem+json")
    with pytest.raises(ProviderError, match="HTTP 400 on /v2/catalog/gpus: Bad Request: include=AVAILABILITY"):
        runpod(httpserver, key=KEY).fetch()


def test_runpod_graphql_410_says_to_set_the_key(httpserver):
    httpserver.expect_request("/graphql").respond_with_json({"errors": [{"message": "gone"}]}, status=410)
    with pytest.raises(ProviderError, match="retired its GraphQL API .*RUNPOD_API_KEY"):
        runpod(httpserver).fetch()


def test_429_waits_retry_after_when_given_and_backs_off_without(httpserver):
    waits = []
    policy = RetryPolicy(attempts=3, initial_wait_s=0.001, max_wait_s=0.01, sleep=waits.append)
    httpserver.expect_ordered_request("/v2/catalog/gpus").respond_with_data(
        "slow down", status=429, headers={"Retry-After": "7"})
    httpserver.expect_request("/v2/catalog/gpus").respond_with_json(CATALOG)
    RunPodProvider(httpserver.url_for(""), SecretStr(KEY), retry=policy).fetch()
    assert waits == [7.0]  # RunPod's Retry-After, integer seconds (docs/providers/runpod.md)
    httpserver.clear()
    waits.clear()
    httpserver.expect_ordered_request("/api/v0/bundles/").respond_with_data("API requests too frequent", status=429)
    httpserver.expect_request("/api/v0/bundles/").respond_with_handler(vast_answer(VAST["offers"]))
    VastProvider(httpserver.url_for(""), retry=policy, min_interval_s=0).fetch()
    assert len(waits) == 1 and 0 <= waits[0] <= 0.01  # Vast sends none (docs/providers/vast.md): our own backoff


def test_runpod_graphql_error_at_200_fails(httpserver):
    httpserver.expect_request("/graphql").respond_with_json({"errors": [{"message": "Something went wrong"}]})
    with pytest.raises(ProviderError, match="GraphQL error: Something went wrong"):
        runpod(httpserver).fetch()


def test_runpod_unknown_gpu_kept_under_raw_name(httpserver, caplog):
    payload = copy.deepcopy(RUNPOD)
    payload["data"]["gpuTypes"].append({**payload["data"]["gpuTypes"][1], "id": "NVIDIA Hypothetical X9",
                                        "displayName": "X9", "memoryInGb": 36})
    httpserver.expect_request("/graphql").respond_with_json(payload)
    provider = runpod(httpserver)
    x9 = [o for o in provider.fetch() if o.gpu_name_raw == "NVIDIA Hypothetical X9"]
    assert x9 and all(o.gpu_model == "NVIDIA Hypothetical X9" and not o.known_gpu and o.vram_gb == 36 for o in x9)
    assert provider.last_report["unknown GPUs"] == ["NVIDIA Hypothetical X9"]
    assert "unknown RunPod GPU type" in caplog.text


@pytest.mark.parametrize("body", [{"data": {"gpuTypes": None}}, {"data": {}}, [1, 2],
                                  {"data": {"gpuTypes": [{"id": "x"}]}}])
def test_runpod_schema_drift_fails(httpserver, body):
    httpserver.expect_request("/graphql").respond_with_json(body)
    with pytest.raises(ProviderError, match="unexpected"):
        runpod(httpserver).fetch()


# ------------------------------------------------------------------------------------------ Vast

def test_vast_prices_per_gpu_with_storage_and_measured_vram(httpserver):
    httpserver.expect_request("/api/v0/bundles/", method="POST").respond_with_handler(vast_answer(VAST["offers"]))
    offers = {o.offer_key: o for o in vast(httpserver, disk_gb=50).fetch()}
    raw = {str(o["id"]): o for o in VAST["offers"]}
    for key, offer in offers.items():
        r = raw[key]
        storage = r["storage_cost"] * 50 / 720
        assert offer.on_demand_usd_per_gpu_hour == pytest.approx((r["dph_base"] + storage) / r["num_gpus"])
        assert offer.spot_usd_per_gpu_hour == pytest.approx((r["min_bid"] + storage) / r["num_gpus"])
        assert offer.vram_gb == pytest.approx(r["gpu_ram"] / 1024)
    modded = offers["22790314"]  # two 48 GB "RTX 4090"s in Hong Kong, cpu_cores null
    assert (modded.gpu_model, modded.gpu_count, round(modded.vram_gb)) == ("RTX4090", 2, 48)
    assert modded.ram_gb is None and modded.location == "Hong Kong, HK"
    assert offers["20551207"].gpu_model == "A100-40GB-SXM"  # the name covers 40 and 80 GB: VRAM decides
    assert offers["11684738"].tier == "verified" and offers["11684738"].reliability == pytest.approx(0.9700835)


def test_vast_query_asks_for_3gb_both_types_and_a_limit(httpserver):
    httpserver.expect_request("/api/v0/bundles/").respond_with_handler(vast_answer(VAST["offers"]))
    vast(httpserver, limit=777).fetch()
    queries = [json.loads(request.data) for request, _ in httpserver.log]
    assert {q["type"] for q in queries} == {"on-demand", "bid"}
    assert all(q["gpu_ram"] == {"gte": 3072} and q["limit"] == 777 and q["allocated_storage"] == 50 for q in queries)
    # `verified` always sent: left out, vast-cli's default (verified only) or the server's would decide
    # (docs/providers/vast.md, "Offers"); the book wants both tiers
    assert all(q["verified"] == {"eq": "any"} for q in queries)


def test_vast_bid_price_comes_from_the_bid_search(httpserver):
    bid = copy.deepcopy(VAST["offers"])
    for offer in bid:
        offer["min_bid"] = 0.05 * offer["num_gpus"]
    httpserver.expect_request("/api/v0/bundles/").respond_with_handler(vast_answer(VAST["offers"], bid))
    offers = vast(httpserver, disk_gb=0).fetch()
    assert {round(o.spot_usd_per_gpu_hour, 6) for o in offers} == {0.05}


def test_vast_splits_full_pages_to_get_every_offer(httpserver):
    many = []
    for i in range(30):
        offer = copy.deepcopy(VAST["offers"][i % 5])
        offer.update(id=1000 + i, num_gpus=[1, 2, 4, 8][i % 4])
        many.append(offer)
    httpserver.expect_request("/api/v0/bundles/").respond_with_handler(vast_answer(many))
    provider = vast(httpserver, limit=10)
    assert len(provider.fetch()) == 30 and not provider.last_report["truncated"]
    assert provider.last_report["searches"] == 2 * (1 + 5)  # per type: one full page, then five GPU-count parts
    assert all("verified" in json.loads(request.data) for request, _ in httpserver.log)  # split searches too


def test_vast_reports_truncation_when_splits_cannot_help(httpserver):
    same = [{**copy.deepcopy(VAST["offers"][0]), "id": 1000 + i} for i in range(12)]
    httpserver.expect_request("/api/v0/bundles/").respond_with_handler(vast_answer(same))
    provider = vast(httpserver, limit=10)
    assert len(provider.fetch()) == 10 and provider.last_report["truncated"]


def test_vast_drops_implausible_offers(httpserver, caplog):
    broken = copy.deepcopy(VAST["offers"])
    broken[0]["dph_base"], broken[0]["min_bid"] = 0, 0
    broken[1]["dph_base"] = 5000
    httpserver.expect_request("/api/v0/bundles/").respond_with_handler(vast_answer(broken))
    provider = vast(httpserver)
    keys = {o.offer_key for o in provider.fetch()}
    assert keys == {str(o["id"]) for o in broken[2:]} and provider.last_report["dropped"] == 2


def test_vast_empty_answer_is_empty_book(httpserver):
    httpserver.expect_request("/api/v0/bundles/").respond_with_json({"offers": []})
    assert vast(httpserver).fetch() == []  # the refresh judges emptiness against the last snapshot


def test_vast_429_then_success(httpserver):
    httpserver.expect_ordered_request("/api/v0/bundles/").respond_with_data("API requests too frequent", status=429)
    httpserver.expect_request("/api/v0/bundles/").respond_with_handler(vast_answer(VAST["offers"]))
    assert len(vast(httpserver).fetch()) == 5


# ------------------------------------------------------------------------------------------ both

FAULTS = {
    "401": (lambda s: s.respond_with_data("Invalid user key", status=401), "authentication failed (HTTP 401)"),
    "500": (lambda s: s.respond_with_data("oops", status=500), "HTTP 500 on"),
    "malformed": (lambda s: s.respond_with_data("<html>maintenance</html>", content_type="text/html"),
                  "malformed JSON"),
    "timeout": (lambda s: s.respond_with_handler(lambda r: (time.sleep(0.6), Response("{}"))[1]), "timeout after"),
}


@pytest.mark.parametrize("make", [runpod, vast], ids=["runpod", "vast"])
@pytest.mark.parametrize("fault", FAULTS)
def test_faults_give_one_line_reason_without_key(httpserver, caplog, make, fault):
    respond, reason = FAULTS[fault]
    respond(httpserver.expect_request(make(httpserver, key=KEY).url.replace(httpserver.url_for(""), "/")))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ProviderError) as error:
        make(httpserver, key=KEY, timeout=0.3).fetch()
    message = str(error.value)
    assert reason in message and "\n" not in message and KEY not in message and KEY not in caplog.text
    attempts = 1 if fault in ("401", "malformed") else FAST.attempts
    deadline = time.monotonic() + 5  # the single-threaded fake logs a slow request once it has answered it
    while len(httpserver.log) < attempts and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(httpserver.log) == attempts  # 401 and bad JSON are final; 5xx and timeouts are retried


@pytest.mark.parametrize("make", [runpod, vast], ids=["runpod", "vast"])
def test_500_then_success(httpserver, make):
    path = make(httpserver).url.replace(httpserver.url_for(""), "/")
    httpserver.expect_ordered_request(path).respond_with_data("busy", status=503)
    payload = RUNPOD if make is runpod else {"offers": VAST["offers"]}
    httpserver.expect_request(path).respond_with_json(payload)
    assert make(httpserver).fetch()


@pytest.mark.parametrize("make", [runpod, vast], ids=["runpod", "vast"])
def test_key_only_in_authorization_header(httpserver, make):
    path = make(httpserver, key=KEY).url.replace(httpserver.url_for(""), "/")
    httpserver.expect_request(path).respond_with_json(CATALOG if make is runpod else {"offers": VAST["offers"]})
    make(httpserver, key=KEY).fetch()
    for request, _ in httpserver.log:
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        assert KEY not in request.url and KEY not in request.get_data(as_text=True)


# ------------------------------------------------------------------------------------------ properties

vast_offers = st.fixed_dictionaries({
    "num_gpus": st.integers(1, 16), "gpu_ram": st.integers(3072, 200_000),
    "dph_base": st.floats(0.01, 50), "min_bid": st.one_of(st.none(), st.floats(0.01, 50)),
    "storage_cost": st.floats(0, 1), "gpu_name": st.sampled_from(["RTX 4090", "H100 SXM", "Mystery GPU 9000"]),
})


@settings(max_examples=200, deadline=None)
@given(raw=vast_offers, disk=st.floats(0, 2000))
def test_vast_normalization_properties(raw, disk):
    provider = VastProvider("http://127.0.0.1:9", disk_gb=disk, min_interval_s=0)
    provider.last_report = {"dropped": 0, "unknown GPUs": []}
    raw = {**raw, "id": 1, "verification": "verified"}
    offer = provider._offer(msgspec.convert(raw, VastOffer), True, None, None)
    storage = raw["storage_cost"] * disk / 720
    whole = raw["dph_base"] + storage
    if whole / raw["num_gpus"] > 100 or (raw["min_bid"] and (raw["min_bid"] + storage) / raw["num_gpus"] > 100):
        assert offer is None
        return
    assert offer.on_demand_usd_per_gpu_hour * offer.gpu_count == pytest.approx(whole)
    assert offer.vram_gb == pytest.approx(raw["gpu_ram"] / 1024)  # from gpu_ram, whatever the name says
    assert (offer.spot_usd_per_gpu_hour is None) == (not raw["min_bid"])
    assert offer.known_gpu == (raw["gpu_name"] != "Mystery GPU 9000")


@given(spec=st.sampled_from(gpus.GPUS), noise=st.sampled_from(["", "NVIDIA ", "nvidia geforce "]),
       upper=st.booleans())
def test_resolve_is_case_space_and_vendor_insensitive(spec, noise, upper):
    for alias in spec.aliases:
        name = noise + alias.replace(" ", "  ")
        found = gpus.resolve(name.upper() if upper else name, spec.vram_gb)
        assert found is not None and found.vram_gb == spec.vram_gb
    assert gpus.resolve(spec.model) is not None and gpus.by_model(spec.model) == spec


def test_every_recorded_gpu_is_in_the_table():
    names = [g["id"] for g in RUNPOD["data"]["gpuTypes"] if g["id"] != "unknown"]
    names += [o["gpu_name"] for o in VAST["offers"]]
    assert all(gpus.resolve(name) for name in names)
