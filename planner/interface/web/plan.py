"""POST /plan: the ranked offers for a job, under the limits `planner plan` uses (launching.JobOptions
-> plans.limits_for: the GPU, provider and backend pins, read as `planner plan --gpu/--provider/--backend`
reads them; the job's budget and the month's budget left).

The API reads only what the project may read: a local input must lie under the project directory or
the runs dir and be a regular file or a directory of regular files (never a FIFO or a device, which
would hang a worker); a URI must be under PLANNER_STORAGE_URI. Nothing the caller names is fetched
from anywhere else (no http(s), no other bucket)."""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from jobs import storage
from jobs.spec import KINDS
from planner.config import CHOICES
from planner.interface.web.common import Context, same_origin
from pricing import store
from pricing.providers.registry import NAMES

router = APIRouter(tags=["plan"])
MAX_DIRECTORY_ENTRIES = 10_000  # a model directory holds tens of files; more is not an input


class PlanRequest(BaseModel):
    kind: str = Field(description=" | ".join(KINDS), max_length=40)
    params: dict = Field(description="the job's parameters, e.g. {model, data, fraction, method}")
    spot: str = Field("any", pattern="^(any|spot|on-demand)$")
    max_price_per_hour: Optional[float] = Field(None, gt=0, allow_inf_nan=False)
    budget_usd: Optional[float] = Field(None, gt=0, allow_inf_nan=False)
    gpu: Optional[str] = Field(None, max_length=64, description="pin a GPU model, NAME[:COUNT] (e.g. H100-SXM:2)")
    provider: Optional[str] = Field(None, max_length=40, description="pin a provider: " + " | ".join((*NAMES, "local")))
    backend: str = Field("auto", max_length=40, description=" | ".join(CHOICES["backend"]))
    allow_stale: bool = False
    top: int = Field(5, ge=1, le=100)


@router.post("/plan", dependencies=[Depends(same_origin)])
def plan(ctx: Context, request: PlanRequest) -> dict:
    """The ranked offers for a job (kind and its parameters, as the job's flags with underscores)."""
    from jobs.spec import JobSpec, SpecError
    from planner.plan.estimate import EstimateError
    from planner.plan.plans import book_offers, choice_summary, plan_job
    from planner.run.launching import JobOptions, gpu_pin, provider_pin

    if request.kind not in KINDS:
        raise HTTPException(422, f"cannot plan this job: unknown kind {request.kind!r}; one of: {', '.join(KINDS)}")
    problem = input_problem(request.kind, request.params, ctx.roots, ctx.settings.storage_uri)
    if problem:
        raise HTTPException(422, f"cannot plan this job: {problem}")
    try:
        gpu, gpu_count = gpu_pin(request.gpu)
    except ValueError as exc:
        raise HTTPException(422, f"cannot plan this job: gpu {exc}") from None
    try:
        provider = provider_pin(request.provider)
    except ValueError as exc:
        raise HTTPException(422, f"cannot plan this job: provider {exc}") from None
    if request.backend not in CHOICES["backend"]:
        raise HTTPException(422, f"cannot plan this job: backend {request.backend}: choose {' | '.join(CHOICES['backend'])}")
    options = JobOptions(backend=request.backend, spot=request.spot, max_price_per_hour=request.max_price_per_hour,
                         budget_usd=request.budget_usd, gpu=gpu, gpu_count=gpu_count, provider=provider)
    try:
        spec = JobSpec("plan", request.kind, "plan-only", request.params)
        with ctx.sessions() as session:
            limits = options.limits(ctx.settings, session, spec.job_id, allow_stale=request.allow_stale)
            choice = plan_job(session, spec, limits, book_offers(session), store.utcnow())
    except (SpecError, EstimateError, KeyError, ValueError) as exc:
        raise HTTPException(422, f"cannot plan this job: {exc}") from None
    return choice_summary(spec, request.kind, choice, request.top)


def input_problem(kind: str, params: dict, roots: tuple[Path, ...], storage_uri: str | None) -> str | None:
    """Why the API may not read one of a job's inputs (None: it may read them all)."""
    from planner.run.inputs import is_local_input

    entry = KINDS[kind]
    for name, value in params.items():  # JSON bodies may carry NaN and Infinity (Python's parser takes them)
        if any(isinstance(item, float) and not math.isfinite(item) for item in (value if isinstance(value, list)
                                                                               else [value])):
            return f"{name} {value}: give finite numbers"
    for name, value in params.items():
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str):
                continue
            if "://" in item and not item.startswith("file://"):
                if not (storage_uri and _under_uri(item, storage_uri)):
                    return (f"{name} {item}: the API reads URIs only under PLANNER_STORAGE_URI"
                            + (f" ({storage_uri})" if storage_uri else ", which is not set"))
            elif name in entry.inputs and is_local_input(item, model=name in entry.model_inputs):
                problem = _local_problem(storage.local_path(item).expanduser(), roots)
                if problem:
                    return f"{name} {item}: {problem}"
    return None


def _under_uri(uri: str, base: str) -> bool:
    base = base.rstrip("/") + "/"
    return uri.startswith(base) and "/../" not in uri[len(base) - 1:] and not uri.endswith("/..")


def _local_problem(path: Path, roots: tuple[Path, ...]) -> str | None:
    """A path the API may not read: outside the roots (after following links), or not a regular file or a
    directory of regular files. Checked with stat, never by opening (a FIFO's open would block)."""
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        return f"the API reads local inputs only under {' or '.join(str(r) for r in roots)}"
    try:
        mode = os.stat(resolved).st_mode
    except OSError:
        return "no such file or directory"
    if stat.S_ISREG(mode):
        return None
    if not stat.S_ISDIR(mode):
        return "not a regular file or directory"
    seen = 0
    for directory, subdirs, files in os.walk(resolved):
        for name in [*subdirs, *files]:
            seen += 1
            inner = Path(directory, name)
            try:
                inner_mode = os.stat(inner).st_mode
            except OSError:
                return f"{inner} cannot be read"
            if not (stat.S_ISREG(inner_mode) or stat.S_ISDIR(inner_mode)):
                return f"{inner} is not a regular file"
            if not any(inner.resolve().is_relative_to(root) for root in roots):
                return f"{inner} links outside {' or '.join(str(r) for r in roots)}"
        if seen > MAX_DIRECTORY_ENTRIES:
            return f"more than {MAX_DIRECTORY_ENTRIES} entries: not a model or corpus directory"
    return None
