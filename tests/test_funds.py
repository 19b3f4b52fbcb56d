"""Money checks before renting (planner.run.funds): each account's balance, read through the providers' API
clients from the simulated RunPod and Vast.ai (tests/simcloud, whose balances follow the providers' docs),
against what a launch would reserve there."""
from __future__ import annotations

import pytest

from planner.config import load_settings
from planner.plan import campaigns
from planner.run import funds
from planner.run.launching import JobOptions, build_backends
from pricing.db import session_factory
from tests.simcloud.runpod import FakeRunPod
from tests.simcloud.vast import FakeVast
from tests.simcloud.world import RUNPOD_KEY, VAST_KEY, stop_fakes, write_book


@pytest.fixture
def cloud(db_url, tmp_path):
    runpod, vast = FakeRunPod(RUNPOD_KEY, tmp_path / "boxes"), FakeVast(VAST_KEY, tmp_path / "boxes")
    settings = load_settings(db_url=db_url, runpod_api_key=RUNPOD_KEY, vast_api_key=VAST_KEY, runpod_url=runpod.url,
                             vast_url=vast.url, http_retry_wait_s=0.01, vast_min_interval_s=0,
                             storage_uri="s3://bucket/planner", jobs_install="planner @ file:///wheel")
    sessions = session_factory(db_url)
    write_book(sessions)
    yield settings, sessions, runpod, vast
    stop_fakes(runpod, vast)


def test_the_api_clients_read_each_balance(cloud):
    settings, _, runpod, vast = cloud
    runpod.funds, vast.funds = 12.5, 0.5
    backends = build_backends(settings)
    assert backends["runpod"].api.balance() == 12.5
    assert backends["vast"].api.balance() == 0.5


def test_a_balance_that_cannot_cover_the_reservation_stops_the_launch(cloud, tiny_model_dir, toy_corpus):
    settings, sessions, runpod, vast = cloud
    runpod.funds = 0.05  # the tiny model's worst case is mostly the startup hours: about $0.13
    job = campaigns.train_bag_job(settings, model=str(tiny_model_dir), data=str(toy_corpus), fraction=0.4, seed=1,
                                  method="full", extra={"max_steps": 400000})
    options = JobOptions(backend="runpod")
    with sessions() as session:
        needed = funds.needed_by_provider(session, [job.spec], lambda spec: options.limits(settings, session,
                                                                                            spec.job_id), {"runpod"})
    assert set(needed) == {"runpod"} and needed["runpod"][0] > 0.05
    short, warnings = funds.shortfalls(build_backends(settings), needed)
    assert not warnings and [s.provider for s in short] == ["runpod"]
    message = short[0].message()
    assert "$0.05" in message and f"${needed['runpod'][0]:.2f}" in message and funds.OVERRIDE_FLAG in message
    assert runpod.pods == {}  # nothing rented

    runpod.funds = 1000.0
    assert funds.shortfalls(build_backends(settings), needed) == ([], [])


def test_an_unreadable_balance_is_a_warning_not_a_stop(cloud):
    settings, _, runpod, vast = cloud
    vast.inject("vast.user", 503, "<html>unavailable</html>", times=50)
    short, warnings = funds.shortfalls(build_backends(settings), {"vast": (3.0, 1)})
    assert short == [] and len(warnings) == 1 and "vast" in warnings[0] and VAST_KEY not in warnings[0]


def test_the_fakes_refuse_a_create_below_an_hour_of_credit_and_stop_boxes_at_zero(cloud):
    """RunPod: "at least one hour's worth of credits" to deploy, and pods stopped (terminated without a
    network volume) at $0 (runpod/docs pods/pricing.mdx)."""
    import requests

    settings, _, runpod, vast = cloud
    runpod.funds = 0.30
    answer = requests.post(f"{runpod.url}/v2/pods", headers={"Authorization": f"Bearer {RUNPOD_KEY}"}, timeout=10,
                           json={"name": "planner-x-a1", "image": "i", "gpu": {"id": "NVIDIA RTX A6000"},
                                 "cloud": "SECURE", "args": "sleep 30"})
    assert answer.status_code == 402 and runpod.pods == {}
    runpod.funds = 0.8  # one hour of an A6000 ($0.79)
    answer = requests.post(f"{runpod.url}/v2/pods", headers={"Authorization": f"Bearer {RUNPOD_KEY}"}, timeout=10,
                           json={"name": "planner-x-a1", "image": "i", "gpu": {"id": "NVIDIA RTX A6000"},
                                 "cloud": "SECURE", "args": "sleep 30"})
    assert answer.status_code == 201
    runpod.funds = runpod.billed_usd()  # spent
    requests.get(f"{runpod.url}/v2/pods", headers={"Authorization": f"Bearer {RUNPOD_KEY}"}, timeout=10)
    assert runpod.pods == {}


def qwen3_4b_config(directory) -> str:
    """A Qwen3-4B as the planner sizes it: its config (the architecture's widths), no weights needed to plan."""
    import json

    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 2560, "intermediate_size": 9728,
        "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 151936, "max_position_embeddings": 40960, "torch_dtype": "bfloat16",
        "tie_word_embeddings": True}))
    return str(directory)


def test_a_launch_with_fifty_cents_rents_nothing_and_says_why(cli, db_url, tmp_path, monkeypatch):
    """The headline command, pinned to RunPod, against an account holding $0.50: exit 1 before any create,
    naming the balance and what the launch would reserve."""
    import json

    runpod = FakeRunPod(RUNPOD_KEY, tmp_path / "boxes")
    try:
        runpod.funds = 0.50
        write_book(session_factory(db_url))
        for name, value in {"RUNPOD_API_KEY": RUNPOD_KEY, "PLANNER_RUNPOD_URL": runpod.url,
                            "PLANNER_STORAGE_URI": "s3://lab-bucket/planner",
                            "PLANNER_JOBS_INSTALL": "planner[jobs] @ git+https://example.org/planner@abc"}.items():
            monkeypatch.setenv(name, value)
        corpus = tmp_path / "train.jsonl"
        words = " ".join(f"word{i}" for i in range(150))
        corpus.write_text("".join(json.dumps({"query": f"q{i} {words}", "positive": f"p{i} {words}",
                                              "negative": [f"n{i} {words}"]}) + "\n" for i in range(20000)))
        model = qwen3_4b_config(tmp_path / "Qwen3-4B")
        result = cli("launch", "train-bag", "--fraction", "0.4", "--model", model, "--data", str(corpus),
                     "--method", "lora", "--backend", "runpod", "--yes", code=1)
        said = result.output + result.stderr
        assert "balance is $0.50" in said and "--ignore-balance" in said, said
        assert not [r for r in runpod.requests if r["method"] == "POST" and r["path"] == "/v2/pods"]  # no create
        assert runpod.pods == {} and RUNPOD_KEY not in said
        plain = cli("launch", "train-bag", "--fraction", "0.4", "--model", model, "--data", str(corpus), "--method",
                    "lora", "--backend", "runpod", "--yes", "--ignore-balance", "--dry-run")  # the flag exists
        assert "balance" not in plain.output
    finally:
        stop_fakes(runpod)
