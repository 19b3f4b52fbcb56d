"""Pinned hardware: `--gpu NAME[:COUNT]` and `--provider` narrow the choice (each offer that loses says
why), are checked at the command line, and stay on the job for every relaunch."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from planner.interface.cli import app
from planner.plan.choose import Limits, choose
from tests.test_planner import NOW, needs, offer


def test_pins_filter_with_a_reason_for_each_offer_that_loses():
    market = [offer("h1", "H100-SXM", 80, on_demand=2.0), offer("h2", "H100-SXM", 80, on_demand=1.9, count=2),
              offer("a1", "A100-80GB-SXM", 80, on_demand=0.5), offer("rp", "H100-SXM", 80, on_demand=2.5,
                                                                      provider="runpod", tier="secure")]
    free = choose(needs(), market, now=NOW)
    assert free.winner.offer.offer_key == "a1" and len(free.ranked) == 4
    pinned = choose(needs(), market, Limits(gpu_models=frozenset({"H100-SXM"}), gpu_count=1,
                                            providers=frozenset({"vast"})), now=NOW)
    assert [c.offer.offer_key for c in pinned.ranked] == ["h1"]
    reasons = {r.offer.offer_key: r.reason for r in pinned.rejected}
    assert reasons == {"h2": "other GPU count: 2 (pinned to 1)", "a1": "other GPU: A100-80GB-SXM (pinned to H100-SXM)",
                       "rp": "provider excluded: runpod (pinned to vast)"}


def test_plan_and_launch_take_gpu_and_provider(recorded_providers, tiny_model_dir, toy_corpus, monkeypatch, tmp_path):
    from planner.config import load_settings
    from planner.records import Job
    from pricing.db import session_factory

    monkeypatch.setenv("PLANNER_RUNS_DIR", str(tmp_path / "runs"))
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(app, ["prices", "refresh"]).exit_code in (0, 1)
    base = ["encode", "--model", str(tiny_model_dir), "--input", str(toy_corpus), "--top", "50"]
    plan = runner.invoke(app, ["plan", *base, "--gpu", "RTX 4090", "--provider", "vast", "--json"])
    assert plan.exit_code == 0, plan.output
    job = json.loads(plan.stdout)["jobs"][0]
    assert job["ranked"] and {(c["gpu"], c["provider"]) for c in job["ranked"]} == {("RTX4090", "vast")}
    assert job["rejected"].get("other GPU", 0) > 0
    two = json.loads(runner.invoke(app, ["plan", *base, "--gpu", "RTX4090:2", "--json"]).stdout)["jobs"][0]
    assert two["ranked"] and all(c["gpu_count"] == 2 for c in two["ranked"])
    text = runner.invoke(app, ["plan", *base, "--gpu", "RTX4090:2"]).stdout
    assert "pinned:" in text and "offers left out as other GPU" in text

    for bad, message in ((["--gpu", "H100:0"], "give a GPU model and optionally a count"),
                         (["--gpu", "H100:99999999999999999999"], "a count of 1 to 64"),  # past the column
                         (["--gpu", "Voodoo5"], "not a GPU this planner knows"),
                         (["--provider", "aws"], "--provider aws: choose")):
        result = runner.invoke(app, ["plan", *base, *bad])
        assert result.exit_code == 2 and message in result.stderr, result.output

    launched = runner.invoke(app, ["launch", *base, "--gpu", "RTX4090:2", "--provider", "vast", "--yes", "--json"])
    assert launched.exit_code == 0, launched.output
    job_id = json.loads(launched.stdout)["jobs"][0]
    with session_factory(load_settings().db_url)() as session:
        row = session.get(Job, job_id)
        assert (row.pin_gpu, row.pin_gpu_count, row.pin_provider) == ("RTX4090", 2, "vast")
