"""From a job to a placement: its needs (planner.plan.estimate), the offers, the limits, the choice.

Shared by `planner plan` (every offer in the book, nothing launched), `planner launch` and the
supervisor's relaunches (only offers a configured backend can start).
"""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

from sqlalchemy.orm import Session

from jobs import recipe, storage
from jobs.spec import JobSpec
from planner.config import Settings
from planner.plan import budget, kinds, memory
from planner.plan.choose import Choice, Limits, Rejection, choose
from planner.plan.estimate import EstimateError, Needs, StoreUnreachable
from planner.plan.placement import NoPlacement, Placement, PlacementContext
from planner.records import Job
from pricing import gpus, store
from pricing.db import utcnow
from pricing.offer import Offer
from pricing.providers import registry


def needs_for(spec: JobSpec, remaining_fraction: float = 1.0, shapes: dict[str, str] | None = None) -> Needs:
    """The estimate for a spec's parameters (the same names as the job's flags), scaled to the work left.
    `shapes` maps models that do not exist yet to one with their architecture (CampaignPlan.model_shapes)."""
    return kinds.size(spec.kind, spec.params, shapes).remaining(remaining_fraction)


def limits_for(job: Job | None, settings: Settings, session: Session | None = None, *,
               excluded: frozenset[str] = frozenset(), spent_usd: float = 0.0, allow_stale: bool = False) -> Limits:
    """The one place Limits are assembled. From `job` (a stored row, or an unsaved one holding what a
    `plan` was asked: spot, price cap, pins, budget, backend, campaign): its own limits, its budget less
    `spent_usd`, and the campaign's and the month's budget left (read in `session`). From settings: the
    price age, the job image's GPUs, this machine's hours. `job` None: no user limits and no budgets, what
    the hints ask ("what would run it at all"). `excluded`: offers cooling down after an interruption."""
    common = dict(max_price_age=settings.max_price_age, allow_stale=allow_stale, exclude_offer_keys=excluded,
                  max_local_hours=settings.local_max_hours, max_usd_per_gb=settings.max_usd_per_gb,
                  **image_limits(settings))
    if job is None:
        return Limits(**common)
    left = [v for v in (budget.left_this_month(session, for_job=job.id), budget.campaign_left(session, job),
                        None if job.budget_usd is None else job.budget_usd - spent_usd) if v is not None]
    return Limits(spot=job.spot or "any", max_usd_per_hour=job.max_price_per_hour,
                  budget_left_usd=min(left) if left else None,
                  providers=frozenset([job.pin_provider]) if job.pin_provider else None,
                  gpu_models=frozenset([job.pin_gpu]) if job.pin_gpu else None, gpu_count=job.pin_gpu_count,
                  local_forced=job.backend == "local",
                  memory_failures=memory.failures(session, job.id) if session is not None and job.id else memory.Failures(),
                  **common)


def image_limits(settings: Settings) -> dict:
    """The Limits fields that keep offers to GPUs the cloud box's image (PLANNER_JOB_IMAGE) has kernels for."""
    return {"compute_caps": gpus.image_compute_caps(settings.job_image), "job_image": settings.job_image}


def plan_job(session: Session, spec: JobSpec, limits: Limits, offers: list[Offer], now: datetime,
             remaining_fraction: float = 1.0, shapes: dict[str, str] | None = None) -> Choice:
    needs = needs_for(spec, remaining_fraction, shapes)
    return choose(needs, offers, limits, now=now, session=session,
                  efficiency_prior=kinds.efficiency_prior(spec.kind, needs.kind))


def book_offers(session: Session) -> list[Offer]:
    return store.current_offers(session, store.OfferQuery(limit=None))


class Placer:
    """The supervisor's `place`: the best offer that one of `backends` can launch, now."""

    def __init__(self, settings: Settings, backends: dict, local_offer: Offer | None = None):
        self.settings = settings
        self.backends = backends
        self.local_offer = local_offer

    def __call__(self, session: Session, job: Job, context: PlacementContext) -> Placement | NoPlacement:
        spec = JobSpec.from_json(job.spec)
        backends = {name: b for name, b in self.backends.items() if name not in context.excluded_backends}
        offers = []
        if "local" in backends and job.backend in ("auto", "local") and self.local_offer is not None:
            offers.append(self.local_offer)
        via_skypilot = job.backend == "skypilot" and "skypilot" in backends
        if job.backend != "local" and storage.is_remote(spec.output_uri):  # a cloud box cannot see our disk
            offers += [o for o in book_offers(session) if (o.provider in backends
                       and job.backend in ("auto", o.provider)) or (via_skypilot and o.provider in registry.skypilot_providers())]
        limits = limits_for(job, self.settings, session, excluded=context.excluded_offer_keys,
                            spent_usd=context.spent_usd)
        try:
            choice = plan_job(session, spec, limits, offers, context.now, context.remaining_fraction)
        except StoreUnreachable as exc:  # weather: the job waits and is sized again next tick
            return NoPlacement(f"waiting: {exc}")
        except EstimateError as exc:
            return NoPlacement(str(exc), impossible=True)
        winner = choice.winner
        if winner is None:
            reason = choice.explain_empty()
            over_budget = choice.rejected_for(Rejection.OVER_BUDGET)
            if offers and all(o.provider == "local" for o in offers) and not over_budget \
                    and not context.excluded_backends:
                # nothing but this machine could run it, and it cannot: say what would, and fail the job
                return NoPlacement(f"{reason}; {cloud_hint(session, spec, self.settings)}", impossible=True)
            return NoPlacement(reason, over_budget=over_budget)
        backend = self.backends["skypilot" if via_skypilot and winner.offer.provider != "local"
                                else winner.offer.provider]
        placement = placement_for(spec, choice, backend.name, backend.billing_seconds)
        job.requirements = json.dumps({"vram_gb": choice.needs.vram_gb, "disk_gb": choice.needs.disk_gb,
                                       "hours": winner.hours, "expected_usd": winner.expected_usd,
                                       "needs_kind": choice.needs.kind, "ranks": winner.gpus_used}
                                      | placement.spec_params)
        return placement


def placement_for(spec: JobSpec, choice: Choice, backend: str, billing_seconds: int) -> Placement:
    """The choice's winner as the placement `backend` launches (the Placer's, and a dry run's)."""
    winner = choice.winner
    # the chunk changes only where the card cannot hold the job's default or the user's (the results' bits
    # follow it), or where that chunk ran out of memory before (planner.plan.memory)
    chunked = winner.mini_batch is not None and winner.mini_batch < (spec.params.get("mini_batch_size")
                                                                     or recipe.DEFAULT_MINI_BATCH)
    chosen = {"mini_batch_size": winner.mini_batch} if chunked else {}
    return Placement(backend=backend, offer=winner.offer, spot=winner.spot, usd_per_hour=winner.usd_per_hour,
                     worst_case_usd=winner.worst_case_usd, expected_usd=winner.expected_usd,
                     billing_seconds=billing_seconds, ranks=winner.gpus_used, spec_params=chosen,
                     mini_batch=winner.mini_batch, planned_vram_gb=winner.vram_need_gb,
                     planned_ram_gb=choice.needs.ram_on(winner.gpus_used), traffic=winner.traffic)


def local_warning(session: Session, spec: JobSpec, offer: Offer, settings: Settings,
                  shapes: dict[str, str] | None = None) -> str | None:
    """For an explicit --backend local: the job's estimate on this machine when it is long or does not fit
    (the launch is obeyed; this says what to expect). None when it fits within PLANNER_LOCAL_MAX_HOURS."""
    from planner.plan.choose import local_description, local_memory_problem

    try:
        choice = plan_job(session, spec, replace(limits_for(None, settings), local_forced=True), [offer], utcnow(),
                          shapes=shapes)
    except EstimateError:
        return None
    if choice.winner is None:
        return None
    hours, memory = choice.winner.hours, local_memory_problem(offer, choice.needs)
    if hours <= settings.local_max_hours and memory is None:
        return None
    return (f"{spec.job_id} is estimated at about {hours:,.1f} h on this machine ({local_description(offer)})"
            + (f"; {memory}" if memory else "") + ": running it here as --backend local asks")


def cloud_hint(session: Session, spec: JobSpec, settings: Settings) -> str:
    """What would run a job this machine cannot: the cheapest fitting cloud offer in the book, and what
    a cloud launch needs."""
    try:
        choice = plan_job(session, spec, limits_for(None, settings, allow_stale=True), book_offers(session), utcnow())
        best = choice.winner
    except EstimateError:
        best = None
    where = (f"it fits {best.offer.gpu_count}x {best.offer.gpu_model} on {best.offer.provider} "
             f"(${best.usd_per_hour:.2f}/h, about {best.hours:.2g} h)" if best else "it needs a cloud GPU")
    return (f"{where}: launch with --backend {' or '.join(registry.NAMES)}, which needs "
            f"{' or '.join(entry.key_env for entry in registry.PROVIDERS.values())}, "
            "PLANNER_STORAGE_URI and PLANNER_JOBS_INSTALL")


def choice_summary(spec: JobSpec, name: str, choice: Choice, top: int) -> dict:
    """A plan as JSON: what the job needs and the ranked offers with their numbers and reasons."""
    def candidate(c):
        return {"provider": c.offer.provider, "offer_key": c.offer.offer_key, "gpu": c.offer.gpu_model,
                "gpu_count": c.offer.gpu_count, "vram_gb": c.offer.vram_gb, "spot": c.spot,
                "usd_per_hour": c.usd_per_hour, "work_hours": c.hours, "expected_hours": c.expected_hours,
                "expected_usd": c.expected_usd, "worst_case_usd": c.worst_case_usd, "breakdown": c.breakdown,
                "interruptions_per_hour": c.interruption_rate, "why_lost": c.why_lost or None,
                "gpus_used": c.gpus_used, "mini_batch_size": c.mini_batch, "vram_need_gb": c.vram_need_gb,
                "bandwidth": None if c.traffic is None else {
                    "download_usd_per_gb": c.traffic.download_usd_per_gb,
                    "upload_usd_per_gb": c.traffic.upload_usd_per_gb,
                    "download_gb_per_start": c.traffic.download_gb, "upload_gb": c.traffic.upload_gb,
                    "checkpoint_gb": c.traffic.checkpoint_gb}}

    needs = choice.needs
    return {"job_id": spec.job_id, "name": name, "kind": spec.kind, "params": spec.params,
            "needs": {"vram_gb": needs.vram_gb, "disk_gb": needs.disk_gb, "ram_gb": needs.ram_gb,
                      "tflop": needs.flops / 1e12, "breakdown_gb": needs.breakdown,
                      "ram_breakdown_gb": needs.ram_breakdown, "notes": list(needs.notes)},
            "ranked": [candidate(c) for c in choice.ranked[:top]],
            "rejected": {code.value: n for code, n in choice.rejection_counts().items()},
            "no_offer": None if choice.winner else choice.explain_empty()}
