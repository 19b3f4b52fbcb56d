"""Bandwidth a provider bills per byte (Vast's `inet_down_cost` / `inet_up_cost`, $/GB: docs/providers/vast.md,
"Offers") is priced: read from the offers, kept in the price book, added to a job's expected cost, worst case
and reservation (the box's deadline leaves room for it), settled, capped, and shown by `planner plan`."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from planner.plan.billing import attempt_cost, traffic_columns
from planner.plan.choose import Limits, Rejection, choose
from planner.plan.estimate import corpus_stats, model_shape, train_needs
from planner.plan.placement import Placement
from planner.records import Attempt
from tests.test_planner import NOW, offer


def bag_needs():
    """The headline job: a Qwen3-4B bag on 40 % of an (assumed, unreachable) corpus."""
    return train_needs(model_shape("Qwen/Qwen3-4B"), corpus_stats(None), fraction=0.4)


def test_the_bag_moves_its_base_model_corpus_output_and_checkpoints():
    needs = bag_needs()
    assert needs.download_bytes > 8e9  # the bf16 base (4 B parameters) and the corpus
    assert 16e9 < needs.upload_bytes < 17e9  # the float32 output
    assert 0 < needs.checkpoint_bytes < needs.upload_bytes  # the LoRA adapter and its moments
    resumed = needs.remaining(0.5)
    assert resumed.download_bytes == needs.download_bytes + needs.checkpoint_bytes  # pulls its checkpoint too


def test_a_free_bandwidth_host_beats_a_cheaper_one_billing_per_gb():
    free = offer("free", "RTX4090", 24, on_demand=0.40)
    metered = offer("metered", "RTX4090", 24, on_demand=0.37, download_usd_per_gb=0.08, upload_usd_per_gb=0.08)
    choice = choose(bag_needs(), [metered, free], Limits(gpu_models=frozenset({"RTX4090"}), spot="on-demand"), now=NOW)
    first, second = choice.ranked
    assert first.offer.offer_key == "free" and "bandwidth" not in first.breakdown
    assert second.offer.offer_key == "metered" and second.usd_per_hour < first.usd_per_hour
    traffic = second.traffic
    restarts = second.interruption_rate * second.hours  # on-demand hosts break too (the provider's prior)
    gb = (traffic.download_gb * (1 + restarts) + traffic.checkpoint_gb * restarts + traffic.upload_gb
          + traffic.checkpoint_gb * second.expected_hours / 0.5)
    assert second.breakdown["bandwidth"] == pytest.approx(0.08 * gb, rel=1e-6)
    assert second.expected_usd == pytest.approx(sum(second.breakdown.values()))
    assert second.worst_case_usd == pytest.approx(2 * second.expected_usd)  # the reservation covers it
    assert "bandwidth costs" in second.why_lost and "$0.080/GB in" in second.why_lost
    # without its bandwidth the metered host would have won: the ranking is the bandwidth's doing
    assert second.expected_usd - second.breakdown["bandwidth"] < first.expected_usd


def test_spot_restarts_pull_the_download_again():
    metered = offer("m", "RTX4090", 24, spot=0.20, download_usd_per_gb=0.05, upload_usd_per_gb=0.0)
    [candidate] = choose(bag_needs(), [metered], Limits(spot="spot"), now=NOW).ranked
    traffic, interruptions = candidate.traffic, candidate.interruption_rate * candidate.hours
    assert interruptions > 0
    pulled = traffic.download_gb * (1 + interruptions) + traffic.checkpoint_gb * interruptions
    assert candidate.breakdown["bandwidth"] == pytest.approx(0.05 * pulled, rel=1e-6)


def test_a_bandwidth_price_cap_rules_hosts_out():
    cheap = offer("c", "RTX4090", 24, on_demand=0.40, download_usd_per_gb=0.01, upload_usd_per_gb=0.01)
    dear = offer("d", "RTX4090", 24, on_demand=0.30, download_usd_per_gb=0.002, upload_usd_per_gb=0.2)
    choice = choose(bag_needs(), [cheap, dear], Limits(max_usd_per_gb=0.05), now=NOW)
    assert [c.offer.offer_key for c in choice.ranked] == ["c"]
    [out] = choice.rejected
    assert out.code is Rejection.OVER_BANDWIDTH_CAP and "$0.200/GB out > $0.050/GB" in out.reason


def test_the_box_deadline_leaves_the_reservation_room_for_its_traffic():
    metered = offer("m", "RTX4090", 24, on_demand=0.40, download_usd_per_gb=0.08, upload_usd_per_gb=0.08)
    [c] = choose(bag_needs(), [metered], now=NOW).ranked
    placement = Placement(backend="vast", offer=metered, spot=False, usd_per_hour=c.usd_per_hour,
                          worst_case_usd=c.worst_case_usd, traffic=c.traffic)
    hours = placement.max_hours
    assert 0 < hours < c.worst_case_usd / c.usd_per_hour
    # an attempt that runs to its deadline and succeeds costs exactly the reservation
    attempt = Attempt(usd_per_hour=c.usd_per_hour, billing_seconds=1, launched_at=NOW, outcome="succeeded",
                      **traffic_columns(c.traffic))
    assert attempt_cost(attempt, NOW + timedelta(hours=hours)) <= c.worst_case_usd + 1e-6


def test_settlement_bills_the_download_at_once_checkpoints_per_interval_and_outputs_on_success():
    attempt = Attempt(usd_per_hour=1.0, billing_seconds=1, launched_at=NOW, outcome="running",
                      download_usd_per_gb=0.1, upload_usd_per_gb=0.2, download_gb=10.0, upload_gb=20.0,
                      checkpoint_gb=1.0)
    assert attempt_cost(attempt, NOW) == pytest.approx(1.0)  # the download is pulled first
    assert attempt_cost(attempt, NOW + timedelta(minutes=65)) == pytest.approx(65 / 60 + 1.0 + 2 * 0.2)
    attempt.outcome = "succeeded"
    assert attempt_cost(attempt, NOW + timedelta(minutes=65)) == pytest.approx(65 / 60 + 1.0 + 2 * 0.2 + 4.0)
    free = Attempt(usd_per_hour=1.0, billing_seconds=1, launched_at=NOW, outcome="succeeded")
    assert attempt_cost(free, NOW + timedelta(hours=1)) == pytest.approx(1.0)


def test_vast_offers_carry_bandwidth_prices_into_the_book(db_url):
    from pricing import store
    from pricing.db import session_factory
    from pricing.providers.vast import VastProvider
    from tests.simcloud.vast import FakeVast

    fake = FakeVast("k", "/tmp")
    try:
        offers = VastProvider(fake.url, "k", min_interval_s=0).fetch()
    finally:
        fake.close()
    a6000 = next(o for o in offers if o.offer_key == "103")
    assert (a6000.download_usd_per_gb, a6000.upload_usd_per_gb) == (0.02, 0.02)
    with session_factory(db_url)() as session:
        store.write_snapshot(session, "vast", store.utcnow(), offers)
        book = {o.offer_key: o for o in store.current_offers(session)}
    assert (book["103"].download_usd_per_gb, book["103"].upload_usd_per_gb) == (0.02, 0.02)
    assert book["101"].download_usd_per_gb == 0.0


def test_plan_pinned_to_4090_on_vast_ranks_the_free_bandwidth_host_first(db_url, cli, toy_corpus):
    """Issue 21's done-when, through the command: the free host is first, the $0.03/h cheaper host that
    bills $0.08/GB second, and the plan shows bandwidth as its own line."""
    from pricing import store
    from pricing.db import session_factory
    from pricing.offer import Offer

    def vast(key, price, per_gb):
        return Offer(provider="vast", offer_key=key, gpu_model="RTX4090", gpu_name_raw="RTX 4090", vram_gb=24,
                     gpu_count=1, on_demand_usd_per_gpu_hour=price, spot_usd_per_gpu_hour=None, tier="verified",
                     location="US", available=True, fetched_at=store.utcnow(), reliability=0.99, ram_gb=64,
                     download_usd_per_gb=per_gb, upload_usd_per_gb=per_gb)

    with session_factory(db_url)() as session:
        store.write_snapshot(session, "vast", store.utcnow(), [vast("7001", 0.40, 0.0), vast("7002", 0.37, 0.08)])
    args = ["plan", "train-bag", "--fraction", "0.4", "--data", str(toy_corpus), "--gpu", "RTX 4090", "--provider",
            "vast"]
    job = json.loads(cli(*args, "--json").stdout)["jobs"][0]
    assert [c["offer_key"] for c in job["ranked"]][:2] == ["7001", "7002"], job["ranked"]
    assert job["ranked"][1]["breakdown"]["bandwidth"] > 0 and "bandwidth" not in job["ranked"][0]["breakdown"]
    text = cli(*args).stdout
    assert "bandwidth" in text and "$0.080/GB" in text


def test_runpod_container_disk_is_priced_into_the_hourly_rate():
    """RunPod bills a running pod's storage at $0.10/GB-month apart from the GPU (docs/providers/runpod.md,
    "Billing"): the job's disk is added to the rate the plan ranks, reserves and records."""
    from planner.plan.choose import HOURS_PER_MONTH
    from pricing.providers.runpod import DISK_USD_PER_GB_MONTH

    needs = bag_needs()
    pod = offer("rp", "RTX4090", 24, on_demand=0.69, provider="runpod", tier="community",
                disk_usd_per_gb_month=DISK_USD_PER_GB_MONTH)
    [c] = choose(needs, [pod], now=NOW).ranked
    disk_per_hour = needs.disk_gb * 0.10 / HOURS_PER_MONTH
    assert c.usd_per_hour == pytest.approx(0.69 + disk_per_hour)
    assert c.breakdown["disk"] == pytest.approx(disk_per_hour * c.expected_hours)
    assert "bandwidth" not in c.breakdown and c.traffic is None  # ingress and egress are free on RunPod


def test_runpod_offers_carry_the_disk_rate(recorded_providers, monkeypatch):
    from planner.config import load_settings
    from pricing.providers.http import RetryPolicy
    from pricing.providers.runpod import RunPodProvider

    monkeypatch.setenv("RUNPOD_API_KEY", "rp-test")
    settings = load_settings()
    offers = RunPodProvider.from_settings(settings, RetryPolicy.from_settings(settings)).fetch()
    assert offers and {o.disk_usd_per_gb_month for o in offers} == {0.10}


def test_vast_hosts_are_capped_at_the_planned_bandwidth_price_at_create(tmp_path):
    """Just before a create the host is searched again with `inet_down_cost` / `inet_up_cost` at most what the
    plan priced (and PLANNER_MAX_USD_PER_GB): a host that raised its price since is no capacity."""
    from planner.run.backends.vast import VastBackend
    from pricing.providers.vast_api import VastAPI
    from tests.simcloud.vast import ASKS, FakeVast

    fake = FakeVast("k", tmp_path)
    try:
        backend = VastBackend(VastAPI(fake.url, "k"), image="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
                              jobs_install="planner", max_usd_per_gb=0.05)
        filters = backend.host_filters(50, 1.0, bandwidth=(0.02, None))
        assert filters["inet_down_cost"] == {"lte": 0.02} and filters["inet_up_cost"] == {"lte": 0.05}
        assert "inet_down_cost" not in VastBackend(VastAPI(fake.url, "k"), image="i", jobs_install="p").host_filters(50)

        def found(planned):
            query = {"id": {"eq": 103}, "type": "on-demand", "limit": 1,
                     **backend.host_filters(50, 1.0, bandwidth=(planned, planned))}
            return [o["id"] for o in backend.api.offers(query)]

        assert found(0.02) == [103]
        ASKS[103] = (*ASKS[103][:5], 0.04, 0.04)  # the host raised its bandwidth price after the book was read
        assert found(0.02) == []
    finally:
        ASKS[103] = (*ASKS[103][:5], 0.02, 0.02)
        fake.close()
