"""The planner never ranks a GPU the job image cannot run: every GPU in the table has its CUDA compute
capability, the image's PyTorch build says which it has kernels for (pricing.gpus.image_compute_caps,
also behind Vast's compute_cap search filter), and the placement drops the others with the reason."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from planner.plan.choose import Limits, choose
from planner.plan.plans import image_limits, limits_for
from planner.run.backends.remote import compute_cap_filter
from pricing import gpus
from tests.test_planner import NOW, needs, offer

CU124 = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"  # PLANNER_JOB_IMAGE's default
CU128 = "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"
CU128_TORCH210 = "pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime"


def test_every_gpu_in_the_table_has_a_compute_capability():
    for spec in gpus.GPUS:
        if spec.vendor == "NVIDIA":
            assert spec.compute_cap is not None and 7.0 <= spec.compute_cap <= 12.0, spec.model
        else:
            assert spec.compute_cap is None, spec.model  # AMD: no CUDA
    by = {spec.model: spec.compute_cap for spec in gpus.GPUS}
    assert (by["V100"], by["T4"], by["A100-80GB-SXM"], by["A10"], by["RTX3090"], by["A40"], by["RTX-A6000"]) == \
        (7.0, 7.5, 8.0, 8.6, 8.6, 8.6, 8.6)
    assert {by[m] for m in ("L4", "L40", "L40S", "RTX4090", "RTX6000-Ada")} == {8.9}
    assert {by[m] for m in ("H100-SXM", "H200", "GH200")} == {9.0} and by["B200"] == 10.0
    assert {by[m] for m in ("RTX5090", "RTX5060Ti", "RTX-PRO-6000")} == {12.0}


@pytest.mark.parametrize("image, caps, vast", [
    (CU124, (0.0, 10.0), {"lt": 1000}),
    ("pytorch/pytorch:2.6.0-cuda12.6-cudnn9-runtime", (0.0, 10.0), {"lt": 1000}),
    (CU128, (7.0, float("inf")), {"gte": 700}),
    (CU128_TORCH210, (7.5, float("inf")), {"gte": 750}),
    ("example/torch:2.9.0-cu130", (7.5, float("inf")), {"gte": 750}),  # CUDA 13 targets no Volta
    ("ubuntu:22.04", None, {}),
])
def test_an_images_compute_capabilities_and_vasts_filter_are_one_rule(image, caps, vast):
    assert gpus.image_compute_caps(image) == caps
    assert compute_cap_filter(image) == vast


def image_limits_for(image: str) -> Limits:
    return Limits(**image_limits(SimpleNamespace(job_image=image)))


def test_a_blackwell_card_is_rejected_for_a_cu124_image_and_ranked_for_cu128():
    market = [offer("5090", "RTX5090", 32, on_demand=0.6), offer("4090", "RTX4090", 24, on_demand=0.4)]
    old = choose(needs(), market, image_limits_for(CU124), now=NOW)
    assert [c.offer.offer_key for c in old.ranked] == ["4090"]
    (rejected,) = old.rejected
    assert rejected.offer.offer_key == "5090"
    assert rejected.reason == (f"GPU the job image cannot run: the job image {CU124} has no kernels for RTX5090 "
                               "(compute capability 12.0): use a CUDA 12.8+ image (PLANNER_JOB_IMAGE)")
    new = choose(needs(), market, image_limits_for(CU128), now=NOW)
    assert {c.offer.offer_key for c in new.ranked} == {"5090", "4090"} and not new.rejected


def test_volta_is_rejected_for_a_torch_2_10_image_and_amd_for_any_cuda_image():
    market = [offer("v100", "V100-32GB", 32, on_demand=0.2), offer("mi", "MI300X", 192, on_demand=1.5),
              offer("h100", "H100-SXM", 80, on_demand=2.0)]
    choice = choose(needs(), market, image_limits_for(CU128_TORCH210), now=NOW)
    assert [c.offer.offer_key for c in choice.ranked] == ["h100"]
    reasons = {r.offer.offer_key: r.reason for r in choice.rejected}
    assert "no kernels for V100-32GB (compute capability 7.0): use an image with a CUDA 12.x build of PyTorch " \
           "before 2.10" in reasons["v100"]
    assert "MI300X is an AMD GPU" in reasons["mi"]
    assert choice.explain_empty() == "no offer qualifies (2 GPU the job image cannot run)"
    assert {c.offer.offer_key for c in choose(needs(), market, image_limits_for(CU128), now=NOW).ranked} == \
        {"v100", "h100"}  # torch 2.8 cu128 still builds sm_70; MI300X still has no CUDA


def test_this_machine_and_an_unknown_image_are_not_checked():
    local = offer("local", "RTX5090", 32, on_demand=0.0, provider="local", tier="local")
    assert choose(needs(), [local], image_limits_for(CU124), now=NOW).winner is not None
    market = [offer("5090", "RTX5090", 32, on_demand=0.6)]
    assert choose(needs(), market, image_limits_for("my/own-image:latest"), now=NOW).winner is not None


def test_limits_for_reads_the_job_image_from_settings(db_url):
    from planner.config import load_settings
    from planner.records import Job
    from pricing.db import session_factory

    settings = load_settings()
    assert settings.job_image == CU124
    job = Job(id="j", spot="any")
    with session_factory(settings.db_url)() as session:
        limits = limits_for(job, settings, session)
        assert (limits.compute_caps, limits.job_image) == ((0.0, 10.0), CU124)
        newer = limits_for(job, settings.model_copy(update={"job_image": CU128}), session)
        assert newer.compute_caps == (7.0, float("inf"))
