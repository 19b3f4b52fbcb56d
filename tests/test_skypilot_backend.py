"""The SkyPilot backend: the task pinned to the planner's choice (pure, no SkyPilot needed), supervised
through a fake SkyPilot client, and, where the cloud extra is installed, validated by SkyPilot itself and
its in-process optimizer over the catalog we export. Never a real launch."""
from __future__ import annotations

import csv
import uuid

import pytest

from jobs import storage
from jobs.spec import JobSpec
from planner import records
from planner.config import load_settings
from planner.plan import campaigns
from planner.run.backends.base import Status
from planner.run.backends.remote import report_uri
from planner.run.backends.skypilot import SkyPilotBackend
from planner.run.launching import JobOptions, add_jobs, attempts_of, build_supervisor
from pricing import store
from pricing.db import session_factory
from pricing.offer import Offer
from pricing.skypilot_catalog import accelerator_name

JOBS_INSTALL = "planner[jobs] @ git+https://example.invalid/planner@0123abc"


def offer(provider="runpod", tier="community", gpu="RTX4090", raw="NVIDIA GeForce RTX 4090", key=None) -> Offer:
    return Offer(provider=provider, offer_key=key or f"{raw}|{tier}", gpu_model=gpu, gpu_name_raw=raw, vram_gb=24,
                 gpu_count=1, on_demand_usd_per_gpu_hour=0.69, spot_usd_per_gpu_hour=0.20, tier=tier,
                 location="US-TX-3" if provider == "runpod" else "Texas, US", available=True, fetched_at=store.utcnow(),
                 vcpus=16, ram_gb=62.0)


class FakeSky:
    """Managed jobs as SkyPilot's client reports them."""

    def __init__(self):
        self.launched: list[tuple[dict, str]] = []
        self.records: dict[str, dict] = {}
        self.cancelled: list[str] = []

    def launch(self, config, name):
        job_id = str(len(self.records) + 1)
        self.launched.append((config, name))
        self.records[job_id] = {"job_id": int(job_id), "job_name": name, "status": "PENDING", "recovery_count": 0}
        return job_id

    def jobs(self, job_ids=None):
        return [r for j, r in self.records.items() if job_ids is None or j in job_ids]

    def cancel(self, job_id):
        self.cancelled.append(job_id)
        self.records[job_id]["status"] = "CANCELLED"


def assert_box_setup(setup: str) -> None:
    """SkyPilot's setup is our box script's: the deadline's watchdog (jobs.boxend guard) first, then the install,
    which ends the box when it fails (tests/test_box_lifecycle.py runs that script)."""
    guard, install = setup.index('python -c "$B" guard &'), setup.index(f"pip install --quiet --no-cache-dir '{JOBS_INSTALL}'")
    assert guard < install and 'python -c "$B" install-failed' in setup[install:]


def spec(output="memory://sky-test/out") -> JobSpec:
    return JobSpec("bag40-1", "train-bag", output, {"model": "Qwen/Qwen3-0.6B", "data": "s3://b/c.jsonl",
                                                    "fraction": 0.4, "seed": 0}, output + "/ckpt")


def test_the_task_is_pinned_to_the_planners_choice(tmp_path):
    backend = SkyPilotBackend(image="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime", jobs_install=JOBS_INSTALL,
                              catalog_offers=lambda: [], catalog_root=tmp_path)
    task = backend.plan(spec(), offer(), attempt=2, spot=False, usd_per_hour=0.69).request["task"]
    assert task["name"] == "planner-bag40-1-a2"
    assert task["resources"] == {
        "infra": "runpod/US", "instance_type": "1x_RTX4090_COMMUNITY", "accelerators": {"RTX4090": 1},
        "use_spot": False, "disk_size": 50, "image_id": "docker:pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
        "job_recovery": {"strategy": "FAILOVER", "max_restarts_on_errors": 0}}
    assert JobSpec.from_json(task["envs"]["PLANNER_JOB_SPEC"]) == spec()
    assert_box_setup(task["setup"])
    assert task["run"] == "python -m jobs.run --report memory://sky-test/out/.attempts/planner-bag40-1-a2.json"
    vast = backend.plan(spec(), offer("vast", "verified", key="4242"), attempt=1, spot=False,
                        usd_per_hour=0.5).request["task"]["resources"]
    assert vast["infra"] == "vast/US" and vast["instance_type"] == "1x-NVIDIA_GeForce_RTX_4090-16-63488"


def test_supervised_through_skypilot_recovery_to_success(db_url, tmp_path, toy_corpus):
    settings = load_settings(db_url=db_url, runs_dir=tmp_path / "runs", jobs_install=JOBS_INSTALL,
                             storage_uri=f"memory://sky-{uuid.uuid4().hex[:8]}", poll_interval_s=0.1)
    sessions = session_factory(db_url)
    with sessions() as session:
        store.write_snapshot(session, "runpod", store.utcnow(), [offer()])
    fake = FakeSky()
    backend = SkyPilotBackend(image=settings.job_image, jobs_install=JOBS_INSTALL, catalog_root=tmp_path / "catalog",
                              catalog_offers=lambda: [offer()], client_factory=lambda: fake)
    job = campaigns.train_bag_job(settings, model="Qwen/Qwen3-0.6B", data=str(toy_corpus), fraction=0.4, seed=0,
                                  method="lora", extra={"max_steps": 50})
    with sessions() as session:
        add_jobs(session, [job], JobOptions(backend="skypilot", spot="any"))  # RunPod: never spot
    supervisor = build_supervisor(settings, sessions, {"skypilot": backend})
    assert supervisor.tick().launched == [job.spec.job_id]
    [(task, name)] = fake.launched
    with sessions() as session:
        project = records.project_id(session)
    assert name == f"planner-{project}-{job.spec.job_id}-a1" and not task["resources"]["use_spot"]
    with open(tmp_path / "catalog" / "runpod" / "vms.csv") as rows:  # SkyPilot prices and bids from our book
        [row] = list(csv.DictReader(rows))
    assert row["InstanceType"] == task["resources"]["instance_type"] and row["SpotPrice"] == ""  # no RunPod spot

    fake.records["1"].update(status="RECOVERING", recovery_count=1)  # SkyPilot handles a preemption itself
    supervisor.tick()
    with sessions() as session:
        [attempt] = attempts_of(session, job.spec.job_id)
        assert attempt.outcome == "running" and "recovered it 1 time" in attempt.detail
    fake.records["1"]["status"] = "SUCCEEDED"
    storage.write_bytes_atomic(storage.join(job.spec.output_uri, "DONE"), b"{}")
    storage.write_json_atomic(report_uri(job.spec.output_uri, name), {"exit_code": 0, "log_tail": "done"})
    assert supervisor.tick().finished == [(job.spec.job_id, "succeeded")]
    with sessions() as session:
        [attempt] = attempts_of(session, job.spec.job_id)
        assert attempt.dollars > 0 and attempt.provider == "runpod" and attempt.backend == "skypilot"


def test_statuses_map_to_attempt_outcomes(tmp_path):
    fake = FakeSky()
    backend = SkyPilotBackend(image="img", jobs_install=JOBS_INSTALL, catalog_offers=lambda: [offer()],
                              catalog_root=tmp_path, client_factory=lambda: fake)
    output = f"memory://sky-status-{uuid.uuid4().hex[:8]}"
    handle = backend.launch(backend.plan(spec(output), offer("vast", key="7"), attempt=1, spot=True, usd_per_hour=0.2))
    assert backend.poll(handle).status is Status.PENDING
    fake.records[handle.instance_id]["status"] = "FAILED_CONTROLLER"
    assert backend.poll(handle).status is Status.LOST
    fake.records[handle.instance_id].update(status="FAILED_SETUP", failure_reason="pip install failed")
    result = backend.poll(handle)
    assert result.status is Status.FAILED and "pip install failed" in result.detail
    storage.write_json_atomic(report_uri(output, handle.label), {"exit_code": 75, "log_tail": ""})
    fake.records[handle.instance_id]["status"] = "FAILED"
    assert backend.poll(handle).exit_code == 75  # resumable: our supervisor relaunches
    fake.records.pop(handle.instance_id)
    assert backend.poll(handle).status is Status.FAILED  # the report still says how it ended
    orphan = fake.launch({}, "planner-ghost-a1")
    fake.launch({}, "someone-else")
    assert [h.instance_id for h in backend.list_labeled()] == [orphan]


def test_skypilot_accepts_the_task_and_its_optimizer_picks_our_offer(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # before SkyPilot imports: it reads its catalog root then
    monkeypatch.setenv("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
    sky = pytest.importorskip("sky")
    cheap, dear = offer(), offer(tier="secure")
    dear = Offer(**{**dear.__dict__, "on_demand_usd_per_gpu_hour": 0.99, "spot_usd_per_gpu_hour": 0.5})
    backend = SkyPilotBackend(image="img", jobs_install=JOBS_INSTALL, catalog_offers=lambda: [cheap, dear],
                              catalog_root=tmp_path / ".sky" / "catalogs" / "v8")
    from pricing.skypilot_catalog import export_catalog

    export_catalog([cheap, dear], backend.catalog_root)
    task = sky.Task.from_yaml_config(backend.plan(spec(), cheap, attempt=1, spot=False, usd_per_hour=0.69)
                                     .request["task"])
    import sky.check

    monkeypatch.setattr(sky.check, "get_cached_enabled_clouds_or_refresh", lambda *a, **k: [sky.RunPod(), sky.Vast()])
    with sky.Dag() as dag:
        dag.add(task)
    best = sky.optimizer.Optimizer.optimize(dag, quiet=True).tasks[0].best_resources
    assert best.instance_type == "1x_RTX4090_COMMUNITY" and not best.use_spot


def test_every_runpod_gpu_of_our_table_has_a_name_skypilot_knows():
    """Our canonical models (pricing.gpus) as SkyPilot's RunPod catalog names them (its fetch_runpod.py)."""
    from pricing import gpus
    from pricing.skypilot_catalog import SKYPILOT_RUNPOD_NAMES

    not_on_runpod = {"A100-40GB-SXM", "A100-40GB-PCIe", "A10", "A10G", "A16", "GH200", "RTX4500-Ada", "RTX4000-SFF-Ada",
                     "RTX-A2000", "RTX5070Ti", "RTX5070", "RTX5060Ti", "RTX4070Ti", "RTX4070", "RTX4060Ti", "RTX4060",
                     "RTX3080", "RTX3060Ti", "RTX3060", "T4", "TitanRTX", "TitanV", "QuadroRTX8000", "QuadroRTX6000",
                     "RTX2080Ti", "MI250"} - {"RTX3080"}  # GPUs SkyPilot's RunPod catalog does not list
    unknown = {g.model: accelerator_name(offer(gpu=g.model)) for g in gpus.GPUS
               if g.model not in not_on_runpod and accelerator_name(offer(gpu=g.model)) not in SKYPILOT_RUNPOD_NAMES}
    assert unknown == {}
    assert accelerator_name(offer(gpu="A100-80GB-PCIe")) == "A100-80GB" and accelerator_name(offer(gpu="H200")) == \
        "H200-SXM"
    assert accelerator_name(offer("vast", gpu="RTX-A6000", key="1")) == "RTX-A6000"  # Vast keeps our names


def test_runpod_catalog_rows_are_one_per_data_centre_with_its_country_as_region():
    """SkyPilot passes a row's AvailabilityZone as RunPod `dataCenterIds` (enforced by RunPod) and groups zones by
    country as its fetcher's REGION_ZONES does (docs/providers/runpod.md, "SkyPilot"); an offer whose data centres
    the book does not know (prices read without a key) is left out rather than guessed."""
    import dataclasses

    from pricing.skypilot_catalog import data_centre_country, runpod_rows

    assert [data_centre_country(dc) for dc in ("US-TX-3", "EU-RO-1", "EUR-IS-1", "CA-MTL-1", "AP-IN-1", "OC-AU-1")] \
        == ["US", "RO", "IS", "CA", "IN", "AU"]
    spread = dataclasses.replace(offer(), location="EU-RO-1,US-TX-3")
    unplaced = dataclasses.replace(offer(raw="NVIDIA RTX A6000", gpu="RTX-A6000"), location=None)
    rows = runpod_rows([spread, unplaced])
    assert [(r["Region"], r["AvailabilityZone"]) for r in rows] == [("RO", "EU-RO-1"), ("US", "US-TX-3")]
    assert {r["InstanceType"] for r in rows} == {"1x_RTX4090_COMMUNITY"}


def test_a_skypilot_dry_run_prints_the_task_it_would_submit(recorded_providers, tiny_model_dir, toy_corpus,
                                                            monkeypatch, tmp_path):
    """`launch --backend skypilot --dry-run` shows, after the plan, the task YAML the backend would submit for
    the winning offer: built by our code (SkyPilot not importable here), inputs at the URIs the launch would
    upload them to, nothing uploaded."""
    import json
    import sys

    import yaml
    from typer.testing import CliRunner

    from planner.interface.cli import app

    monkeypatch.setitem(sys.modules, "sky", None)  # `import sky` raises ImportError: the cloud extra is absent
    store_uri = f"memory://sky-dry-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PLANNER_STORAGE_URI", store_uri)
    monkeypatch.setenv("PLANNER_JOBS_INSTALL", JOBS_INSTALL)
    monkeypatch.setenv("PLANNER_JOB_IMAGE", "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime")
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(app, ["prices", "refresh"]).exit_code in (0, 1)
    launch = ["launch", "encode", "--model", str(tiny_model_dir), "--input", str(toy_corpus), "--backend", "skypilot",
              "--dry-run"]

    result = runner.invoke(app, [*launch, "--json"])
    assert result.exit_code == 0, result.output
    [job] = json.loads(result.stdout)["jobs"]
    best = job["ranked"][0]
    assert job["skypilot_task_problem"] is None
    task = yaml.safe_load(job["skypilot_task_yaml"])
    assert task["name"] == f"planner-{job['job_id']}-a1"
    resources = task["resources"]
    assert resources["infra"].split("/")[0] == best["provider"] and resources["use_spot"] == best["spot"]
    assert resources["accelerators"] == {accelerator_name(Offer(
        provider=best["provider"], offer_key=best["offer_key"], gpu_model=best["gpu"], gpu_name_raw=best["gpu"],
        vram_gb=best["vram_gb"], gpu_count=best["gpu_count"], on_demand_usd_per_gpu_hour=None,
        spot_usd_per_gpu_hour=None, tier="", location="", available=True, fetched_at=store.utcnow())):
        best["gpu_count"]}
    assert resources["image_id"] == "docker:pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"
    spec = JobSpec.from_json(task["envs"]["PLANNER_JOB_SPEC"])
    assert spec.job_id == job["job_id"] and spec.output_uri.startswith(store_uri)
    assert spec.params["input"].startswith(f"{store_uri}/inputs/") and spec.params["input"].endswith(toy_corpus.name)
    assert spec.params["model"] == str(tiny_model_dir) or spec.params["model"].startswith(f"{store_uri}/inputs/")
    assert_box_setup(task["setup"])
    assert not storage.exists(storage.join(store_uri, "inputs"))  # a dry run uploads nothing

    text = runner.invoke(app, launch)
    assert text.exit_code == 0, text.output
    plan, _, shown = text.stdout.partition("as `--backend skypilot` would submit it on the winning offer:\n")
    again = yaml.safe_load(shown)  # the YAML verbatim: it parses whole (a new job id each run)
    assert "SkyPilot task" in plan and again["resources"] == resources and again["setup"] == task["setup"]
    assert again["name"].startswith("planner-encode-") and again["name"] in again["run"]

    monkeypatch.delenv("PLANNER_JOBS_INSTALL")
    missing = runner.invoke(app, launch)
    assert missing.exit_code == 0 and "no SkyPilot task" in missing.stdout and "PLANNER_JOBS_INSTALL" in missing.stdout
    assert "sky" not in {m.partition(".")[0] for m, mod in sys.modules.items() if mod is not None}
