"""choose without a session: measured efficiencies handed in (`efficiency=`), the rule they follow
(`efficiency_from`), and a relaunch's needs scaling every per-token cost (the gradient cache's pass too).

Issue 15: the market simulator feeds its campaign's measurements back the way the supervisor's
attempts do, through a session-free hook, and prices the work left after a checkpoint.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from jobs.spec import JobSpec
from planner.plan import kinds
from planner.plan.choose import Limits, choose, dp_scaling, efficiency_from, learned_efficiency
from planner.plan.plans import needs_for
from pricing.offer import Offer

NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)


def offer(key, gpu, vram, usd_per_gpu, count=1):
    return Offer(provider="vast", offer_key=key, gpu_model=gpu, gpu_name_raw=gpu, vram_gb=vram, gpu_count=count,
                 on_demand_usd_per_gpu_hour=usd_per_gpu, spot_usd_per_gpu_hour=None, tier="verified",
                 location="EU", available=True, fetched_at=NOW - timedelta(minutes=5))


def bag_needs(remaining: float = 1.0):
    return needs_for(JobSpec("bag40", "train-bag", "s3://b/out", {"model": "Qwen/Qwen3-4B", "data": None,
                                                                  "fraction": 0.4}), remaining)


def test_efficiency_from_is_the_rule_learned_efficiency_follows():
    assert efficiency_from({}, 0.25) == 0.25
    assert efficiency_from({}, 0.25, 4) == pytest.approx(0.25 * dp_scaling(4))
    assert efficiency_from({1: [0.1, 0.3, 0.2]}, 0.25, 2) == pytest.approx(0.2 * dp_scaling(2))  # the median, scaled
    assert efficiency_from({1: [0.2], 4: [0.15, 0.17]}, 0.25, 4) == pytest.approx(0.16)  # measured at that count
    assert learned_efficiency(None, "train-bag/lora", "RTX4090", 0.25, 4) == efficiency_from({}, 0.25, 4)


def test_a_handed_in_efficiency_replaces_the_prior_per_model_and_gpu_count():
    needs = bag_needs()
    prior = kinds.efficiency_prior("train-bag", needs.kind)
    market = [offer("one", "RTX4090", 24, 0.30), offer("four", "RTX4090", 24, 0.30, count=4),
              offer("h100", "H100-SXM", 80, 2.00)]
    before = {c.offer.offer_key: c for c in choose(needs, market, Limits(), now=NOW, efficiency_prior=prior).ranked}
    asked = []

    def measured(model: str, count: int) -> float:
        asked.append((model, count))
        return efficiency_from({1: [prior / 2]} if model == "RTX4090" else {}, prior, count)

    after = {c.offer.offer_key: c for c in choose(needs, market, Limits(), now=NOW, efficiency_prior=prior,
                                                  efficiency=measured).ranked}
    assert sorted(asked) == [("H100-SXM", 1), ("RTX4090", 1), ("RTX4090", 4)]  # once per model and count
    assert after["one"].hours == pytest.approx(before["one"].hours * 2)
    assert after["four"].hours == pytest.approx(before["four"].hours * 2)  # the one-GPU measurement, scaled
    assert after["h100"].hours == pytest.approx(before["h100"].hours)  # nothing measured: the prior
    # without the hook (and without a session) choose is what it was
    again = choose(needs, market, Limits(), now=NOW, efficiency_prior=prior)
    assert [c.offer.offer_key for c in again.ranked] == [c.offer.offer_key for c in before.values()]


def test_the_work_left_after_a_checkpoint_scales_the_cache_pass_too():
    whole, quarter = bag_needs(), bag_needs(0.25)
    assert whole.cache_flops > 0
    assert quarter.flops == pytest.approx(whole.flops / 4) and quarter.cache_flops == pytest.approx(whole.cache_flops / 4)
    for vram, count in ((24, 1), (24, 4), (80, 8)):
        assert quarter.flops_on(vram, count) == pytest.approx(whole.flops_on(vram, count) / 4)
        assert quarter.mini_batch_on(vram, count) == whole.mini_batch_on(vram, count)  # memory does not shrink
    assert quarter.vram_gb == whole.vram_gb and whole.remaining(1.0) is whole
    market = [offer("one", "RTX4090", 24, 0.30)]
    hours = [choose(n, market, Limits(), now=NOW).winner.hours for n in (whole, quarter)]
    assert hours[1] == pytest.approx(hours[0] / 4)
