"""The planner sizes a BOOM bag as the job will run it, uses every GPU of an offer, and learns throughput.

Issue: the recipe's needs (LoRA, group 8, 128 queries, a gradient-cache chunk per card), multi-GPU
offers ranked with their real hours, and the next plan following a finished attempt's measurement.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from jobs.spec import JobSpec
from planner.plan import kinds
from planner.plan.choose import Limits, choose, dp_scaling, learned_efficiency
from planner.plan.plans import needs_for
from pricing import gpus
from pricing.offer import Offer

NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)


def offer(key, gpu, vram, usd_per_gpu, count=1):
    return Offer(provider="vast", offer_key=key, gpu_model=gpu, gpu_name_raw=gpu, vram_gb=vram, gpu_count=count,
                 on_demand_usd_per_gpu_hour=usd_per_gpu, spot_usd_per_gpu_hour=None, tier="verified",
                 location="EU", available=True, fetched_at=NOW - timedelta(minutes=5))


def bag_spec(**params) -> JobSpec:
    return JobSpec("bag40", "train-bag", "s3://b/out", {"model": "Qwen/Qwen3-4B", "data": None, "fraction": 0.4,
                                                        **params})


def test_a_qwen3_4b_bag_is_sized_as_the_boom_recipe():
    needs = needs_for(bag_spec())
    assert needs.kind == "train-bag/lora"
    assert needs.sequences_per_step == 128 * (1 + 8)  # 128 queries, each with a group of 8 documents
    assert any("128 queries per step x a group of 8" in note for note in needs.notes)
    assert needs.vram_gb < 16  # the chunked batch fits a cheap card: weights + adapter + one small chunk
    on_24, on_80 = needs.mini_batch_on(24, 1), needs.mini_batch_on(80, 1)
    assert on_24 and on_80 and on_24 <= on_80 <= 32  # up to the job default: the chunk only shrinks where needed
    assert needs.mini_batch_on(needs.vram_gb - 1, 1) is None
    assert needs.mini_batch_on(needs.vram_gb / 0.92 + 0.05, 1) == 4  # a card with room for the smallest chunk only
    full = needs_for(bag_spec(method="full"))
    assert full.kind == "train-bag/full" and full.vram_gb > 48  # 14 bytes per parameter before activations


def test_an_explicit_mini_batch_is_kept_and_zero_turns_the_cache_off():
    assert needs_for(bag_spec(mini_batch_size=16)).mini_batch_on(80, 1) == 16
    unchunked = needs_for(bag_spec(mini_batch_size=0))
    assert unchunked.mini_batch_on(80, 1) is None and unchunked.vram_gb > 80  # the whole 128 x 9 batch at once


def test_multi_gpu_offers_are_ranked_with_their_real_hours():
    needs = needs_for(bag_spec())
    market = [offer("one", "RTX4090", 24, 0.30), offer("four", "RTX4090", 24, 0.30, count=4),
              offer("tiny", "RTX3070", 8, 0.05)]
    choice = choose(needs, market, Limits(), now=NOW, efficiency_prior=kinds.efficiency_prior("train-bag", needs.kind))
    by_key = {c.offer.offer_key: c for c in choice.ranked}
    assert "tiny" not in by_key and any(r.offer.offer_key == "tiny" and "VRAM" in r.reason for r in choice.rejected)
    one, four = by_key["one"], by_key["four"]
    assert four.gpus_used == 4 and one.gpus_used == 1
    # the same work on four GPUs at the data-parallel scaling prior (the per-GPU chunk may differ)
    assert four.hours == pytest.approx(one.hours / (4 * dp_scaling(4)), rel=0.05)
    assert four.usd_per_hour == pytest.approx(4 * one.usd_per_hour)
    assert four.mini_batch is not None and one.mini_batch is not None


def test_a_merge_on_a_multi_gpu_box_uses_one_process():
    needs = kinds.size("merge", {"models": ["Qwen/Qwen3-4B"] * 5})
    assert not needs.data_parallel and needs.gpus_used(8) == 1


def test_the_next_plan_follows_a_finished_attempts_measurement(db_url):
    from planner.records import Attempt, Job
    from pricing.db import session_factory, utcnow

    needs = needs_for(bag_spec())
    market = [offer("one", "RTX4090", 24, 0.30)]
    prior = kinds.efficiency_prior("train-bag", needs.kind)
    sessions = session_factory(db_url)
    with sessions() as session:
        before = choose(needs, market, Limits(), now=NOW, session=session, efficiency_prior=prior).winner
        measured_efficiency = prior / 2
        session.add(Job(id="done-bag", name="bag", kind="train-bag", spec=bag_spec().to_json(), state="succeeded",
                        requirements=json.dumps({"needs_kind": needs.kind})))
        session.flush()
        session.add(Attempt(job_id="done-bag", number=1, backend="vast", provider="vast", gpu_model="RTX4090",
                            gpu_count=1, outcome="succeeded", launched_at=utcnow(), ended_at=utcnow(),
                            measured_tflops=measured_efficiency * gpus.by_model("RTX4090").bf16_tflops))
        # a full fine-tune measured on the same card says nothing about LoRA
        session.add(Job(id="full-bag", name="bag", kind="train-bag", spec=bag_spec(method="full").to_json(),
                        state="succeeded", requirements=json.dumps({"needs_kind": "train-bag/full"})))
        session.flush()
        session.add(Attempt(job_id="full-bag", number=1, backend="vast", provider="vast", gpu_model="RTX4090",
                            gpu_count=1, outcome="succeeded", launched_at=utcnow(), ended_at=utcnow(),
                            measured_tflops=0.9 * gpus.by_model("RTX4090").bf16_tflops))
        session.commit()
        assert learned_efficiency(session, needs.kind, "RTX4090", prior) == pytest.approx(measured_efficiency)
        assert learned_efficiency(session, needs.kind, "RTX4090", prior, 2) == \
            pytest.approx(measured_efficiency * dp_scaling(2))
        after = choose(needs, market, Limits(), now=NOW, session=session, efficiency_prior=prior).winner
    assert after.hours == pytest.approx(before.hours * 2)


def test_an_efficiency_learned_from_a_bags_report_predicts_that_bags_hours():
    """The job counts its FLOPs on the tokens its forward computes, padding included (issue 22: train_bag's
    Meter); the planner counts a bag's work the same way, so a bag that reports its TFLOP/s after T hours is
    planned again at T hours (counting real tokens only, it was planned at T / padding)."""
    from jobs import recipe
    from jobs.train_bag import Meter
    from planner.plan.estimate import CorpusStats, model_shape, train_needs

    shape, stats, hours = model_shape("Qwen/Qwen3-4B"), CorpusStats(200_000, 900.0, 7.0, measured=True), 10.0
    needs = train_needs(shape, stats, fraction=0.4)
    real = stats.records * 0.4 * stats.mean_tokens  # what the bag trains on
    padded = real * recipe.SORTED_CHUNK_PADDING  # what its sorted chunks compute
    meter = Meter(world=1)
    meter.started -= hours * 3600  # the run took `hours`
    meter.add(round(real), round(padded), padded * recipe.train_flops_per_token(shape.params, "lora",
                                                                                 cached_passes=True))
    measured = meter.rates(1, 1)["tflops_per_gpu"]  # what the supervisor records (Attempt.measured_tflops)
    peak = gpus.by_model("H100-SXM").bf16_tflops
    assert needs.hours_on(peak, measured / peak, 1, needs.flops_on(24, 1)) == pytest.approx(hours, rel=1e-3)


def test_ranks_outcome_combines_like_one_process():
    from jobs.run import combined_exit

    assert combined_exit([0, 0]) == 0
    assert combined_exit([75, 75]) == 75
    assert combined_exit([75, -9]) == 75  # the other rank killed by us after the grace period
    assert combined_exit([2, -15]) == 2
    assert combined_exit([0, 1]) == 1
    assert combined_exit([75, 1]) == 1  # a crash is a crash even if the other rank saved


def test_an_encode_corpus_of_id_and_text_is_sized_from_a_sample(tmp_path, monkeypatch):
    from planner.plan import estimate

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": i, "text": "word " * 40}) + "\n" for i in range(1000)))
    small = kinds.size("encode", {"model": "Qwen/Qwen3-0.6B", "input": str(docs)})
    monkeypatch.setattr(estimate, "TEXT_SAMPLE_BYTES", 5_000)  # only a sample of the file is read
    sampled = estimate.text_stats(str(docs))
    assert sampled.measured and sampled.mean_tokens == 50.0
    assert sampled.records == pytest.approx(1000, rel=0.02)
    assert small.flops == pytest.approx(2 * estimate.model_shape("Qwen/Qwen3-0.6B").params * 1000 * 50)
