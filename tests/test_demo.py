"""`planner demo`: no keys, no network, everything in the directory it names."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def test_demo_runs_offline_in_its_own_directory(tmp_path):
    target = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PLANNER_RUNPOD_URL"] = env["PLANNER_VAST_URL"] = "http://127.0.0.1:9"  # must not be used
    result = subprocess.run([sys.executable, "-m", "planner", "demo", "--dir", str(target), "--json"],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["directory"] == str(target) and "recorded" in report["source"]
    assert [r["status"] for r in report["refresh"]] == ["ok", "ok"]
    prices = [min(p for p in (o["on_demand_usd_per_gpu_hour"], o["spot_usd_per_gpu_hour"]) if p is not None)
              for o in report["cheapest"]]
    assert prices == sorted(prices) and all(o["vram_gb"] >= 3 for o in report["cheapest"])
    assert (target / "planner.db").exists()

    # the campaign: every job done, one bag interrupted once and resumed, all of it inside `target`
    assert report["states"] and set(report["states"].values()) == {"succeeded"}
    assert len(report["plan"]) == len(report["states"]) == 13  # 5 bags, merge, encode, 6 evaluations
    assert all(row["expected_usd"] > 0 and row["provider"] in ("runpod", "vast") for row in report["plan"])
    victim = report["interrupted"]
    attempts = [(row["attempt"], row["outcome"]) for row in report["bill"] if row["job"] == victim]
    assert attempts == [(1, "preempted"), (2, "succeeded")]
    assert sum(1 for row in report["bill"] if row["outcome"] == "preempted") == 1
    assert report["total_usd"] == sum(row["usd"] for row in report["bill"]) > 0
    models = [row["model"] for row in report["evaluation"]]
    assert models == ["bag 0.2", "bag 0.4", "bag 0.6", "bag 0.8", "bag 1", "merged"]
    assert all(0 <= row["ndcg@10"] <= 1 and 0 <= row["mrr@10"] <= 1 for row in report["evaluation"])
    assert report["encoded"] == 200
    runs = target / "runs" / "outputs"
    assert sum(1 for d in runs.iterdir() if (d / "output" / "DONE").exists()) == 13


def test_demo_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = subprocess.run([sys.executable, "-m", "planner", "demo", "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not empty" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"
