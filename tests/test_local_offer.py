"""This machine as an offer like the others: measured, placed by auto only where the job fits and its
hours are sane, obeyed (with a warning) under --backend local; item 6 of issue 14."""
from __future__ import annotations

from jobs.spec import JobSpec
from planner.config import load_settings
from planner.plan import plans
from planner.plan.choose import Limits
from planner.plan.placement import NoPlacement, Placement, PlacementContext
from planner.records import Job
from planner.run.backends.local import LocalBackend, local_offer
from pricing.db import session_factory, utcnow

CPU_BOX = dict(provider="local", offer_key="local", gpu_model="CPU", gpu_name_raw="CPU", vram_gb=0.0, gpu_count=1,
               on_demand_usd_per_gpu_hour=0.0, spot_usd_per_gpu_hour=None, tier="local", location="localhost",
               available=True, known_gpu=False, vcpus=2.0, ram_gb=16.0, tflops=0.2)


def cpu_box(**changes):
    from pricing.offer import Offer

    return Offer(**{**CPU_BOX, "fetched_at": utcnow(), **changes})


def bag(model, data, job_id="bag1"):
    return JobSpec(job_id, "train-bag", f"/tmp/{job_id}", {"model": model, "data": data, "fraction": 0.5, "seed": 0,
                                                           "method": "full", "epochs": 1})


def test_this_machine_is_measured():
    offer = local_offer(1.5)
    assert offer.provider == "local" and offer.vcpus >= 1 and offer.ram_gb > 0
    if offer.vram_gb == 0:  # a CPU-only box: its speed is measured, not assumed
        assert offer.gpu_model == "CPU" and offer.tflops > 0
    assert offer.on_demand_usd_per_gpu_hour * offer.gpu_count == 1.5


def test_auto_keeps_tiny_models_here_and_sends_a_4b_bag_elsewhere(db_url, tiny_model_dir, toy_corpus):
    sessions = session_factory(db_url)
    settings = load_settings(db_url=db_url)
    placer = plans.Placer(settings, {"local": LocalBackend(settings.runs_dir)}, cpu_box())
    context = PlacementContext(frozenset(), 1.0, 0.0, utcnow())
    with sessions() as session:
        tiny = Job(id="bag1", backend="auto", spot="any", spec=bag(str(tiny_model_dir), str(toy_corpus)).to_json())
        assert isinstance(placer(session, tiny, context), Placement)
        big = Job(id="bag2", backend="auto", spot="any", spec=bag("Qwen/Qwen3-4B", str(toy_corpus), "bag2").to_json())
        refused = placer(session, big, context)
        assert isinstance(refused, NoPlacement) and refused.impossible
        assert "here" in refused.reason and "--backend runpod or vast" in refused.reason
        assert "PLANNER_STORAGE_URI" in refused.reason and "PLANNER_JOBS_INSTALL" in refused.reason
        forced = Job(id="bag3", backend="local", spot="any", spec=big.spec)
        obeyed = placer(session, forced, context)
        assert isinstance(obeyed, Placement) and obeyed.backend == "local"
        warning = plans.local_warning(session, bag("Qwen/Qwen3-4B", str(toy_corpus), "bag2"), cpu_box(), settings)
        assert warning and "estimated at about" in warning and "h on this machine (CPU only" in warning
        assert plans.local_warning(session, bag(str(tiny_model_dir), str(toy_corpus)), cpu_box(), settings) is None


def test_a_local_gpu_is_held_to_its_vram(db_url, toy_corpus):
    sessions = session_factory(db_url)
    small_gpu = cpu_box(gpu_model="RTX4090", gpu_name_raw="NVIDIA GeForce RTX 4090", vram_gb=4.0, known_gpu=True,
                        tflops=None)
    with sessions() as session:
        choice = plans.plan_job(session, bag("Qwen/Qwen3-4B", str(toy_corpus)), Limits(max_local_hours=24.0),
                                [small_gpu], utcnow())
    assert choice.winner is None and choice.rejected[0].reason.startswith("too little VRAM here: 4 GB")
