"""The planner: estimates against hand-computed cases, choices on markets built to fool the naive answer,
and budgets under concurrency."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from jobs import recipe
from planner.plan import budget, estimate
from planner.plan.choose import Limits, choose
from planner.plan.estimate import GB, CorpusStats, ModelShape, model_shape, train_needs
from pricing.offer import Offer

NOW = datetime(2026, 11, 25, 12, 0, 0)


def offer(key, gpu, vram, on_demand=None, spot=None, provider="vast", tier="verified", age_h=0.1, count=1,
          **extra) -> Offer:
    return Offer(provider=provider, offer_key=key, gpu_model=gpu, gpu_name_raw=gpu, vram_gb=vram, gpu_count=count,
                 on_demand_usd_per_gpu_hour=on_demand, spot_usd_per_gpu_hour=spot, tier=tier, location="US",
                 available=True, fetched_at=NOW - timedelta(hours=age_h), **extra)


# --- estimates ----------------------------------------------------------------------------------

def test_qwen3_4b_parameter_count_matches_the_published_size():
    # Qwen3-4B: 4.02 B parameters including the tied embedding (the model card says 4.0 B)
    assert model_shape("Qwen/Qwen3-4B").params == pytest.approx(4.02e9, rel=0.01)


def test_shape_is_read_from_a_local_config(tiny_model_dir):
    from safetensors.torch import load_file

    shape = model_shape(str(tiny_model_dir))
    real = sum(t.numel() for t in load_file(str(tiny_model_dir / "model.safetensors")).values())
    assert shape.params == real


def test_full_fine_tuning_memory_by_hand():
    shape = ModelShape("m", vocab=1000, hidden=100, intermediate=200, layers=2, heads=4, kv_heads=2, head_dim=25)
    stats = CorpusStats(records=1000, mean_tokens=50.0, negatives=1.0, measured=True)
    needs = train_needs(shape, stats, fraction=0.5, method="full", batch_size=4, query_max_len=10, doc_max_len=20,
                        mini_batch_size=0)
    P = shape.params
    tokens = 4 * (10 + 2 * 20)  # queries + positive + one negative each
    activations = 2 * tokens * 100 * 2 + estimate.SAVED_PER_LAYER["full"].of(shape) * tokens  # 2 layers' inputs + 1
    # bf16 weights and gradients, bf16 Kahan compensation, fp32 AdamW moments (jobs.optim)
    assert needs.breakdown["weights"] + needs.breakdown["gradients"] + needs.breakdown["compensation"] + \
        needs.breakdown["adam moments"] == pytest.approx(14 * P / GB)
    assert needs.breakdown["activations"] == pytest.approx(activations / GB)
    assert needs.vram_gb == estimate.MIN_VRAM_GB  # a tiny model still asks for the 3 GB floor
    # 6PT plus the recomputed forward, on the tokens the job computes: padding included, as it counts them
    assert needs.flops == pytest.approx(8 * P * 1000 * 0.5 * 50 * recipe.SORTED_CHUNK_PADDING)


def test_lora_needs_far_less_than_full_for_a_4b_model():
    stats = CorpusStats(100_000, 300.0, 1.0, True)
    shape = model_shape("Qwen/Qwen3-4B")
    full = train_needs(shape, stats, fraction=0.4, batch_size=8, method="full")
    lora = train_needs(shape, stats, fraction=0.4, batch_size=8, method="lora")
    assert full.vram_gb > 32 and lora.vram_gb < 24 <= full.vram_gb
    assert lora.flops == pytest.approx(full.flops * 6 / 8)


def test_corpus_is_measured_when_reachable(toy_corpus):
    stats = estimate.corpus_stats(str(toy_corpus))
    # one negative a record, and FlagEmbedding's sampler fills the group of 8 with copies of it (jobs.data.make_group)
    assert stats.measured and stats.records == 72 and stats.negatives == 7.0
    assert estimate.corpus_stats(str(toy_corpus), sampler="keep-all").negatives == 1.0
    assert not estimate.corpus_stats("/nonexistent.jsonl").measured


# --- choosing -----------------------------------------------------------------------------------

def needs(flops=6 * 4e9 * 2e9, vram=20.0):
    return estimate.Needs("train-bag/full", vram, 100, 16, flops, 0.0)


def test_slow_cheap_gpu_loses_to_a_fast_one_that_finishes_cheaper():
    market = [offer("slow", "RTX3090", 24, on_demand=0.20), offer("fast", "H100-SXM", 80, on_demand=2.00)]
    choice = choose(needs(), market, now=NOW)
    assert choice.winner.offer.offer_key == "fast"
    loser = choice.ranked[1]
    assert loser.offer.offer_key == "slow" and "cheaper per hour but" in loser.why_lost
    assert loser.usd_per_hour < choice.winner.usd_per_hour and loser.expected_usd > choice.winner.expected_usd


def test_flaky_spot_loses_to_on_demand_when_rework_eats_the_discount(db_url):
    from planner.records import Attempt, Job
    from pricing.db import session_factory

    sessions = session_factory(db_url)
    with sessions() as session:  # our history: this provider's spot instances die every ~half hour
        session.add(Job(id="j", name="j", kind="train-bag", spec="{}"))
        session.flush()
        for i in range(20):
            start = NOW - timedelta(days=1, hours=i)
            session.add(Attempt(job_id="j", number=i + 1, backend="vast", provider="vast", tier="verified", spot=True,
                                outcome="preempted", launched_at=start, ended_at=start + timedelta(minutes=30)))
        session.commit()
        market = [offer("x", "H100-SXM", 80, on_demand=2.0, spot=1.7)]
        calm = choose(needs(), market, Limits(checkpoint_hours=1.0), now=NOW)
        flaky = choose(needs(), market, Limits(checkpoint_hours=1.0), now=NOW, session=session)
    assert calm.winner.spot is True
    assert flaky.winner.spot is False and flaky.ranked[1].interruption_rate > 0.5
    assert "interruptions/h cost" in flaky.ranked[1].why_lost


def test_hard_filters_and_their_reasons():
    market = [
        offer("small", "RTX4090", 16, on_demand=0.3),
        offer("stale", "H100-SXM", 80, on_demand=1.0, age_h=5),
        offer("pricey", "H100-SXM", 80, on_demand=9.0),
        offer("ok", "A100-80GB-SXM", 80, on_demand=1.2),
        offer("mystery", "Voodoo5", 80, on_demand=0.1),
    ]
    choice = choose(needs(), market, Limits(max_usd_per_hour=5.0), now=NOW)
    reasons = {r.offer.offer_key: r.reason for r in choice.rejected}
    assert [c.offer.offer_key for c in choice.ranked] == ["ok"]
    assert reasons["small"].startswith("too little VRAM") and reasons["stale"].startswith("stale price")
    assert reasons["pricey"].startswith("over the price cap") and reasons["mystery"].startswith("unknown GPU")
    assert choose(needs(), market, Limits(allow_stale=True), now=NOW).winner.offer.offer_key == "stale"


def test_a_merge_streams_bytes_so_a_gpu_of_unknown_speed_may_run_it():
    """The merge's sizing says it is I/O-bound (Needs.io_bound): a GPU missing from the speed table may run it,
    its hours from the bytes it streams; a computing job on that GPU is rejected as of unknown speed."""
    merge = estimate.merge_needs(model_shape("Qwen/Qwen3-4B"), models=5)
    market = [offer("mystery", "Voodoo5", 80, on_demand=0.1)]
    placed = choose(merge, market, now=NOW).winner
    assert merge.io_bound and placed.offer.offer_key == "mystery"
    assert placed.hours == pytest.approx(merge.io_bytes / (estimate.DISK_GBPS * 1e9) / 3600 + 0.05)
    assert choose(needs(), market, now=NOW).winner is None


def test_nothing_fits_says_by_how_much_and_what_would():
    choice = choose(needs(vram=100.0), [offer("a", "H100-SXM", 80, on_demand=2.0)], now=NOW)
    assert choice.winner is None
    message = choice.explain_empty()
    assert "20.0 GB more than the largest offered" in message and "--method lora" in message


def test_budget_filter_uses_the_worst_case():
    market = [offer("a", "H100-SXM", 80, on_demand=2.0)]
    expected = choose(needs(), market, now=NOW).winner.expected_usd
    assert choose(needs(), market, Limits(budget_left_usd=expected * 1.5), now=NOW).winner is None
    assert choose(needs(), market, Limits(budget_left_usd=expected * 2.5), now=NOW).winner is not None


# --- budgets ------------------------------------------------------------------------------------

def _jobs(sessions, n, budget_usd=None):
    from planner.records import Job

    with sessions() as session:
        for i in range(n):
            session.add(Job(id=f"j{i}", name=f"j{i}", kind="train-bag", spec="{}", budget_usd=budget_usd))
        session.commit()


def test_concurrent_reservations_never_overspend_the_monthly_budget(db_url):
    from planner.records import Job
    from pricing.db import session_factory

    sessions = session_factory(db_url)
    _jobs(sessions, 12)
    with sessions() as session:
        budget.set_monthly_budget(session, 100.0)
    results = {}
    barrier = threading.Barrier(12)

    def launch(i):
        with sessions() as session:
            job = session.get(Job, f"j{i}")
            barrier.wait()
            results[i] = budget.Ledger().reserve(session, job, 30.0)

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r is None for r in results.values()) == 3
    assert all("monthly budget" in r.reason and r.scope is budget.BudgetScope.MONTHLY
               for r in results.values() if r is not None)
    with sessions() as session:
        assert budget.committed(session) == pytest.approx(90.0)


def test_reservations_across_processes_never_overspend(tmp_path):
    import subprocess
    import sys

    from pricing.db import session_factory, upgrade

    url = f"sqlite:///{tmp_path / 'planner.db'}"
    upgrade(url)
    sessions = session_factory(url)
    _jobs(sessions, 8)
    with sessions() as session:
        budget.set_monthly_budget(session, 50.0)
    script = ("import sys; from pricing.db import session_factory; from planner.plan.budget import Ledger; "
              "from planner.records import Job; s = session_factory(sys.argv[1])(); "
              "print(Ledger().reserve(s, s.get(Job, sys.argv[2]), 20.0) is None)")
    procs = [subprocess.Popen([sys.executable, "-c", script, url, f"j{i}"], stdout=subprocess.PIPE, text=True)
             for i in range(8)]
    outcomes = [p.communicate()[0].strip() for p in procs]
    assert outcomes.count("True") == 2
    with sessions() as session:
        assert budget.committed(session) == pytest.approx(40.0)


def test_release_frees_the_unspent_part(db_url):
    from planner.records import Attempt, Job
    from pricing.db import session_factory

    sessions = session_factory(db_url)
    _jobs(sessions, 1)
    with sessions() as session:
        budget.set_monthly_budget(session, 10.0)
        job = session.get(Job, "j0")
        assert budget.Ledger().reserve(session, job, 8.0) is None
        session.add(Attempt(job_id="j0", number=1, backend="local", provider="local", outcome="succeeded",
                            launched_at=budget.utcnow(), ended_at=budget.utcnow(), dollars=3.0))
        session.commit()
        assert budget.committed(session) == pytest.approx(8.0)
        budget.Ledger().release(session, job)
        session.commit()
        assert budget.committed(session) == pytest.approx(3.0)
        assert budget.left_this_month(session) == pytest.approx(7.0)


@pytest.mark.parametrize("scope", ["monthly", "campaign"])
def test_a_job_waits_while_others_hold_the_budget_then_launches_when_they_settle(db_url, scope):
    """Parallel jobs must not stop each other with worst cases they will not spend: the second waits,
    whether the cap is the monthly budget or the campaign's one budget."""
    from jobs.spec import JobSpec
    from planner.plan.placement import Placement
    from planner.records import Campaign, Job
    from planner.run.backends.base import Backend, Handle, LaunchPlan, PollResult, Status
    from planner.run.supervisor import Supervisor
    from pricing.db import session_factory

    class Stub(Backend):
        name = "stub"
        finished: set[str] = set()

        def plan(self, spec, offer, *, attempt, spot, usd_per_hour, disk_gb=None, max_hours=None):
            return LaunchPlan("stub", spec.job_id, attempt, spot, usd_per_hour, ("true",), {})

        def launch(self, plan):
            return Handle("stub", plan.job_id, plan.label)

        def poll(self, handle):
            return PollResult(Status.SUCCEEDED if handle.instance_id in self.finished else Status.RUNNING)

        def cancel(self, handle):
            pass

        def logs(self, handle, tail=200):
            return ""

        def list_labeled(self):
            return []

    sessions = session_factory(db_url)
    with sessions() as session:
        if scope == "monthly":
            budget.set_monthly_budget(session, 100.0)
        else:
            session.add(Campaign(id="c1", kind="bagging", params="{}", budget_usd=100.0))
        for name in ("a", "b"):
            session.add(Job(id=name, name=name, kind="merge", backend="stub", campaign_id="c1" if scope != "monthly" else None,
                            spec=JobSpec(name, "merge", f"/tmp/{name}", {"models": ["x"], "weights": [1]}).to_json()))
        session.commit()
    clock = [NOW.replace(tzinfo=timezone.utc)]
    stub = Stub()
    supervisor = Supervisor(sessions, {"stub": stub}, lambda session, job, context: Placement(
        "stub", None, False, usd_per_hour=1.0, worst_case_usd=60.0), budget=budget.Ledger(clock=lambda: clock[0]),
        clock=lambda: clock[0])
    assert supervisor.tick().launched == ["a"]
    with sessions() as session:
        waiting = session.get(Job, "b")
        assert waiting.state == "pending" and waiting.error.startswith("waiting: running jobs hold $60.00")
    stub.finished.add("a")
    clock[0] += timedelta(hours=2)
    report = supervisor.tick()
    assert report.finished == [("a", "succeeded")]
    assert report.launched == ["b"]  # a spent $2 of its $60 and released the rest: b's worst case fits now
    with sessions() as session:
        assert budget.committed(session, clock[0]) == pytest.approx(2.0 + 60.0)
        if scope == "campaign":
            assert budget.campaign_committed(session, "c1") == pytest.approx(62.0)
            third = Job(id="c", name="c", kind="merge", backend="stub", campaign_id="c1", spec="{}")
            session.add(third)
            session.commit()
            assert "campaign budget: $38.00 left" in budget.Ledger(clock=lambda: clock[0]).reserve(session, third, 40.0).reason


def test_a_running_campaign_job_is_stopped_before_the_campaign_passes_its_budget(db_url):
    from planner.records import Attempt, Campaign, Job
    from planner.run.supervisor import Supervisor
    from pricing.db import session_factory

    sessions = session_factory(db_url)
    start = NOW.replace(tzinfo=timezone.utc)
    with sessions() as session:
        session.add(Campaign(id="c1", kind="bagging", params="{}", budget_usd=10.0))
        for name in ("a", "b"):
            session.add(Job(id=name, name=name, kind="merge", backend="stub", campaign_id="c1", spec="{}",
                            state="running"))
            session.flush()
            session.add(Attempt(job_id=name, number=1, backend="stub", provider="stub", spot=False, usd_per_hour=2.0,
                                billing_seconds=1, outcome="running", launched_at=start, instance_id=name))
        session.commit()
        supervisor = Supervisor(sessions, {}, None, clock=lambda: start + timedelta(hours=2.4), poll_interval_s=1800)
        job, attempt = session.get(Job, "a"), session.scalars(select(Attempt).where(Attempt.job_id == "a")).one()
        # by the next check (2.9 h) the two attempts will have cost 2 x $5.80 > $10
        assert "over its budget of $10.00" in supervisor._over_budget(session, job, attempt)
        assert Supervisor(sessions, {}, None, clock=lambda: start + timedelta(hours=1),
                          poll_interval_s=1800)._over_budget(session, job, attempt) is None
