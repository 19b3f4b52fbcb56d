"""Which offer finishes a job cheapest: hard limits first, then the expected dollars to finish.

For an offer at p $/h (whole instance) on which the job takes h hours of work:

    expected = p * (h + startup) + [spot] p * rate * h * (lost + restart)

startup is the image pull and model download before the first step; for a spot offer, `rate`
interruptions per hour each lose on average half a checkpoint interval of work (`lost`) plus a
restart. Where the provider bills bandwidth per byte (Vast's $/GB in and out) the job's traffic is added
(`bandwidth`): its download once per start (each interruption pulls the model, the inputs and the
checkpoint again), a checkpoint pushed per checkpoint interval, its outputs once. Disk billed apart from the
GPU price (RunPod's container disk, $/GB-month) is added to p for the job's disk (`disk`). Rates start from a
prior per provider and tier (its entry in pricing.providers.registry, per hour) and are updated by our own
attempts on that provider and tier (a gamma-Poisson mean: (prior events + interruptions) / (prior hours +
hours run)). The worst case reserved against budgets is WORST_CASE_FACTOR times the
expected cost: the supervisor stops a job before it passes its own budget, so that bound holds.

h uses every GPU of an offer for a data-parallel job (train-bag under torchrun): N GPUs at
efficiency e x dp_scaling(N) each. Efficiency e is what finished attempts of the same job kind and
method measured on that GPU model (the median of achieved TFLOP/s per GPU / peak, at that GPU count
when measured there, else the one-GPU figure scaled), else the kind's prior (planner.plan.kinds).
A caller without a session (a simulator, a what-if) hands choose its own measurements instead:
`efficiency(gpu_model, gpus) -> achieved / peak per GPU`, e.g. built with `efficiency_from`.
"""
from __future__ import annotations

import enum
import functools
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.protocol import CHECKPOINT_MINUTES
from planner.plan import memory
from planner.plan.billing import BYTES_PER_GB
from planner.plan.estimate import MIN_CHUNK, VRAM_USABLE, Needs, suggestions
from pricing import gpus
from pricing.offer import Offer
from pricing.providers import registry

PRIOR_HOURS = 20.0  # weight of the prior, in instance-hours
STARTUP_HOURS = 0.15  # image pull, dependency install, model download
RESTART_HOURS = 0.15
WORST_CASE_FACTOR = 2.0
HOURS_PER_MONTH = 720  # a GB-month of disk billed per hour: the 30-day month (the dearer reading of "per month")
LOCAL_RAM_USABLE = 0.8  # of this machine's RAM: the desktop, the supervisor and the page cache keep the rest
DP_SCALING_PER_DOUBLING = 0.92  # our prior: each doubling of data-parallel GPUs keeps 92 % per GPU (all-reduce
                                # and all-gather over PCIe on rented boxes); measured attempts replace it


def dp_scaling(gpus: int) -> float:
    return DP_SCALING_PER_DOUBLING ** math.log2(max(gpus, 1))


@dataclass(frozen=True)
class Limits:
    spot: str = "any"  # "spot" | "on-demand" | "any"
    max_usd_per_hour: float | None = None
    budget_left_usd: float | None = None
    max_price_age: timedelta = timedelta(hours=2)
    allow_stale: bool = False
    providers: frozenset[str] | None = None  # only these
    exclude_providers: frozenset[str] = frozenset()
    tiers: frozenset[str] | None = None
    regions: tuple[str, ...] = ()  # location substrings
    exclude_offer_keys: frozenset[str] = frozenset()
    gpu_models: frozenset[str] | None = None  # pinned hardware (`--gpu H100-SXM:2`): only these models
    gpu_count: int | None = None  # ... with exactly this many GPUs per instance
    checkpoint_hours: float = CHECKPOINT_MINUTES / 60  # the jobs' default; an interruption loses half of it
    max_local_hours: float | None = None  # this machine only for jobs it finishes within this (auto placement)
    local_forced: bool = False  # --backend local: obeyed even where the estimate says it does not fit
    compute_caps: tuple[float, float] | None = None  # what the job image has kernels for: (lowest, upper bound
                                                     # exclusive), gpus.image_compute_caps; None: not checked
    job_image: str = ""  # named in the reason an offer's GPU is out of compute_caps
    memory_failures: memory.Failures = memory.Failures()  # the job's earlier out-of-memory attempts: never again
    max_usd_per_gb: float | None = None  # bandwidth-price cap: an offer billing more per GB in or out is out


@dataclass(frozen=True)
class Candidate:
    offer: Offer
    spot: bool
    usd_per_hour: float  # whole instance, its separately billed disk included (what the attempt is recorded at)
    hours: float  # of work, before interruptions
    interruption_rate: float  # per hour
    expected_usd: float
    worst_case_usd: float
    breakdown: dict[str, float]
    expected_hours: float  # to finish: work, startup and rework
    why_lost: str = ""
    gpus_used: int = 1  # the job's ranks on this offer
    mini_batch: int | None = None  # the gradient-cache chunk chosen for this offer's GPUs
    vram_need_gb: float = 0.0  # the job's VRAM per GPU at that chunk (Needs.vram_at): never above the card's
    traffic: Traffic | None = None  # GB in and out one attempt moves, where the provider bills it


@dataclass(frozen=True)
class Traffic:
    """What one attempt moves over a network billed per byte, in GB of 1e9 bytes, at the offer's $/GB."""

    download_usd_per_gb: float
    upload_usd_per_gb: float
    download_gb: float  # pulled at the start: base model, inputs (and the checkpoint, when resuming)
    upload_gb: float  # pushed at the end: the outputs
    checkpoint_gb: float  # pushed every checkpoint interval, pulled again after an interruption

    @classmethod
    def of(cls, offer: Offer, needs: Needs) -> Traffic | None:
        down, up = offer.download_usd_per_gb or 0.0, offer.upload_usd_per_gb or 0.0
        if not down and not up:
            return None
        return cls(down, up, needs.download_bytes / BYTES_PER_GB, needs.upload_bytes / BYTES_PER_GB,
                   needs.checkpoint_bytes / BYTES_PER_GB)

    def expected_gb(self, hours: float, interruptions: float, checkpoint_hours: float) -> tuple[float, float]:
        """GB pulled and pushed over `hours` on the box (work, startup, rework) with `interruptions` restarts."""
        pulled = self.download_gb * (1 + interruptions) + self.checkpoint_gb * interruptions
        return pulled, self.upload_gb + self.checkpoint_gb * hours / checkpoint_hours

    def expected_usd(self, hours: float, interruptions: float, checkpoint_hours: float) -> float:
        pulled, pushed = self.expected_gb(hours, interruptions, checkpoint_hours)
        return self.download_usd_per_gb * pulled + self.upload_usd_per_gb * pushed

    @property
    def fixed_usd(self) -> float:
        """One attempt's download and outputs, whatever its length."""
        return self.download_usd_per_gb * self.download_gb + self.upload_usd_per_gb * self.upload_gb

    def usd_per_hour(self, checkpoint_hours: float) -> float:
        """The checkpoints' stream, per hour on the box."""
        return self.upload_usd_per_gb * self.checkpoint_gb / checkpoint_hours


class Rejection(enum.Enum):
    """Why an offer lost on a hard limit; the value is how plans count them ("3 too little VRAM")."""

    NOT_AVAILABLE = "not available"
    TOO_LITTLE_VRAM = "too little VRAM"
    TOO_LITTLE_VRAM_HERE = "too little VRAM here"  # this machine's GPU
    TOO_LITTLE_RAM_HERE = "too little RAM here"  # this machine
    RAN_OUT_OF_MEMORY = "ran out of memory before"  # this job, on this much memory (planner.plan.memory)
    TOO_LITTLE_RAM = "too little RAM"  # the instance's host memory (Offer.ram_gb) against Needs.ram_on
    TOO_FEW_GPUS = "too few GPUs"
    TOO_LITTLE_DISK = "too little disk"
    IMAGE_CANNOT_RUN = "GPU the job image cannot run"
    PROVIDER_EXCLUDED = "provider excluded"
    OTHER_GPU = "other GPU"  # pinned elsewhere (--gpu)
    OTHER_GPU_COUNT = "other GPU count"
    TIER_EXCLUDED = "tier excluded"
    REGION_EXCLUDED = "region excluded"
    COOLING_DOWN = "cooling down"
    STALE_PRICE = "stale price"
    UNKNOWN_GPU_SPEED = "unknown GPU speed"
    TOO_SLOW_HERE = "too slow here"
    OVER_PRICE_CAP = "over the price cap"
    OVER_BANDWIDTH_CAP = "over the bandwidth-price cap"
    OVER_BUDGET = "over the budget"


PIN_REJECTIONS = frozenset({Rejection.OTHER_GPU, Rejection.OTHER_GPU_COUNT, Rejection.PROVIDER_EXCLUDED})
MEMORY_REJECTIONS = frozenset({Rejection.TOO_LITTLE_VRAM, Rejection.TOO_LITTLE_VRAM_HERE, Rejection.TOO_LITTLE_RAM,
                               Rejection.TOO_LITTLE_RAM_HERE, Rejection.RAN_OUT_OF_MEMORY})


@dataclass(frozen=True)
class Rejected:
    offer: Offer
    spot: bool | None
    code: Rejection
    reason: str  # the code's words with this offer's numbers, for people


@dataclass
class Choice:
    needs: Needs
    ranked: list[Candidate]
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def winner(self) -> Candidate | None:
        return self.ranked[0] if self.ranked else None

    def explain_empty(self) -> str:
        """Why nothing qualified, with what would fit."""
        if not self.rejected:
            return "the price book is empty: run `planner prices refresh`"
        counts = self.rejection_counts()
        summary = ", ".join(f"{n} {code.value}" for code, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        if set(counts) <= {Rejection.TOO_LITTLE_VRAM, Rejection.TOO_LITTLE_VRAM_HERE}:
            largest = max(r.offer.vram_gb for r in self.rejected)
            short = self.needs.vram_gb - largest
            return (f"no GPU offered fits: the job needs {self.needs.vram_gb:.1f} GB of VRAM per GPU, "
                    f"{short:.1f} GB more than the largest offered; try " + "; or ".join(suggestions(self.needs, largest)))
        return f"no offer qualifies ({summary})"

    def rejection_counts(self) -> dict[Rejection, int]:
        """Offers that lost on a hard limit, counted by why, in the order first seen."""
        counts: dict[Rejection, int] = {}
        for item in self.rejected:
            counts[item.code] = counts.get(item.code, 0) + 1
        return counts

    def rejected_for(self, code: Rejection) -> bool:
        return any(item.code is code for item in self.rejected)


def interruption_rates(session: Session | None) -> dict[tuple[str, str, bool], tuple[float, float]]:
    """(provider, tier, spot) -> (interruptions, hours) observed in our own attempts."""
    if session is None:
        return {}
    from planner.records import Attempt

    rows = session.execute(
        select(Attempt.provider, Attempt.tier, Attempt.spot, Attempt.outcome, Attempt.launched_at, Attempt.ended_at)
        .where(Attempt.ended_at.is_not(None), Attempt.provider.in_(registry.NAMES))).all()
    observed: dict[tuple[str, str, bool], list[float]] = {}
    for provider, tier, spot, outcome, start, end in rows:
        events, hours = observed.setdefault((provider, tier or "", bool(spot)), [0.0, 0.0])
        observed[(provider, tier or "", bool(spot))] = [events + (outcome in ("preempted", "lost")),
                                                       hours + max((end - start).total_seconds(), 0) / 3600]
    return {key: (e, h) for key, (e, h) in observed.items()}


def learned_efficiency(session: Session | None, needs_kind: str, gpu_model: str, prior: float,
                       gpu_count: int = 1) -> float:
    """Achieved / peak FLOP/s per GPU for `needs_kind` (e.g. "train-bag/lora": the job kind and method)
    on `gpu_count` GPUs of `gpu_model`: the median our attempts measured at that count, else the
    one-GPU median x dp_scaling, else the prior x dp_scaling."""
    spec = gpus.by_model(gpu_model)
    measured = measured_efficiencies(session, needs_kind, gpu_model) if session is not None and spec else {}
    return efficiency_from(measured, prior, gpu_count)


def efficiency_from(measured: dict[int, list[float]], prior: float, gpu_count: int = 1) -> float:
    """The rule of learned_efficiency on measurements already in hand (GPU count -> achieved
    efficiencies on one GPU model): the median at `gpu_count`, else the one-GPU median x dp_scaling,
    else the prior x dp_scaling."""
    if measured.get(gpu_count):
        return _median(measured[gpu_count])
    one = _median(measured[1]) if measured.get(1) else prior
    return one * dp_scaling(gpu_count)


def measured_efficiencies(session: Session, needs_kind: str, gpu_model: str) -> dict[int, list[float]]:
    """GPU count -> achieved efficiencies of attempts whose job was sized as `needs_kind` (the Placer
    records it in Job.requirements) on `gpu_model`."""
    from planner.records import Attempt, Job

    peak = gpus.by_model(gpu_model).bf16_tflops
    rows = session.execute(
        select(Attempt.measured_tflops, Attempt.gpu_count, Job.requirements).join(Job, Job.id == Attempt.job_id)
        .where(Attempt.gpu_model == gpu_model, Attempt.measured_tflops.is_not(None),
               Job.kind == needs_kind.partition("/")[0])).all()
    out: dict[int, list[float]] = {}
    for tflops, count, requirements in rows:
        if json.loads(requirements or "{}").get("needs_kind", needs_kind) == needs_kind:
            out.setdefault(count or 1, []).append(min(1.0, tflops / peak))
    return out


def _median(values: list[float]) -> float:
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def rate_for(offer: Offer, spot: bool, observed: dict) -> float:
    prior = registry.prior_interruptions_per_hour(offer.provider, spot, offer.tier)
    events, hours = observed.get((offer.provider, offer.tier, spot), (0.0, 0.0))
    return (prior * PRIOR_HOURS + events) / (PRIOR_HOURS + hours)


def choose(needs: Needs, offers: Iterable[Offer], limits: Limits = Limits(), *, now: datetime,
           session: Session | None = None, efficiency_prior: float = 0.3,
           observed: dict[tuple[str, str, bool], tuple[float, float]] | None = None,
           efficiency: Callable[[str, int], float] | None = None,
           memory_correction: Callable[[str], float] | None = None) -> Choice:
    """Rank the offers by expected dollars to finish. Interruption rates learn from `observed`
    ((provider, tier, spot) -> (interruptions, hours)), by default our attempts in `session`; the
    efficiency per GPU on N GPUs of a model is `efficiency(gpu_model, N)` when given (data-parallel
    losses included), else learned_efficiency from `session` and `efficiency_prior`. The job's VRAM on
    a GPU model is scaled by `memory_correction(gpu_model)` (measured / planned), by default what our
    attempts on that model measured (planner.plan.memory.correction)."""
    if observed is None:
        observed = interruption_rates(session)
    planned = needs
    if memory_correction is None:
        memory_correction = functools.cache(lambda gpu_model: memory.correction(session, planned.kind, gpu_model))
    ranked: list[Candidate] = []
    rejected: list[Rejected] = []
    efficiency_cache: dict[tuple[str, int], float] = {}
    for offer in offers:
        needs = planned.scaled(memory_correction(offer.gpu_model))
        problem = _offer_problem(offer, needs, limits, now)
        if problem:
            rejected.append(Rejected(offer, None, *problem))
            continue
        spec = gpus.by_model(offer.gpu_model)
        if spec is None and not needs.io_bound and offer.provider != "local":
            rejected.append(Rejected(offer, None, Rejection.UNKNOWN_GPU_SPEED,
                                     f"unknown GPU speed: {offer.gpu_name_raw} is not in the GPU table"))
            continue
        ranks = needs.gpus_used(offer.gpu_count)
        mini_batch = needs.mini_batch_on(offer.vram_gb, ranks)
        if needs.sequences_per_step and mini_batch is None and offer.provider != "local":
            rejected.append(Rejected(offer, None, Rejection.TOO_LITTLE_VRAM,
                                     f"too little VRAM: {offer.vram_gb:.0f} GB < {needs.vram_gb:.1f} GB"))
            continue
        mini_batch, ran_out = _clear_of_memory_failures(limits.memory_failures, offer, mini_batch)
        if ran_out:
            rejected.append(Rejected(offer, None, Rejection.RAN_OUT_OF_MEMORY, ran_out))
            continue
        key = (offer.gpu_model, ranks)
        if key not in efficiency_cache:
            efficiency_cache[key] = (efficiency(offer.gpu_model, ranks) if efficiency is not None else
                                     learned_efficiency(session, needs.kind, offer.gpu_model, efficiency_prior, ranks))
        peak = spec.bf16_tflops if spec else (offer.tflops or 0.5)  # a CPU box: measured (local_offer)
        hours = needs.hours_on(peak, efficiency_cache[key], ranks, needs.flops_on(offer.vram_gb, ranks))
        if (offer.provider == "local" and not limits.local_forced and limits.max_local_hours is not None
                and hours > limits.max_local_hours):
            rejected.append(Rejected(offer, None, Rejection.TOO_SLOW_HERE,
                                     f"too slow here: about {hours:,.0f} h on this machine "
                                     f"({local_description(offer)}), over PLANNER_LOCAL_MAX_HOURS = "
                                     f"{limits.max_local_hours:g} h"))
            continue
        # a provider without spot has no spot price on any Offer (pricing.offer drops it)
        for spot, per_gpu in ((False, offer.on_demand_usd_per_gpu_hour), (True, offer.spot_usd_per_gpu_hour)):
            if per_gpu is None or (limits.spot == "spot" and not spot) or (limits.spot == "on-demand" and spot):
                continue
            price = per_gpu * offer.gpu_count
            disk = needs.disk_gb * (offer.disk_usd_per_gb_month or 0.0) / HOURS_PER_MONTH  # $/h, the whole box
            if limits.max_usd_per_hour is not None and price > limits.max_usd_per_hour:
                rejected.append(Rejected(offer, spot, Rejection.OVER_PRICE_CAP, f"over the price cap: ${price:.3f}/h > "
                                                                                f"${limits.max_usd_per_hour:.3f}/h"))
                continue
            rate = rate_for(offer, spot, observed) if offer.provider != "local" else 0.0
            interruptions = rate * hours
            rework_hours = interruptions * (limits.checkpoint_hours / 2 + RESTART_HOURS)
            breakdown = {"work": price * hours, "startup": price * STARTUP_HOURS, "expected rework": price * rework_hours}
            if disk:
                breakdown["disk"] = disk * (hours + STARTUP_HOURS + rework_hours)
            traffic = Traffic.of(offer, needs)
            if traffic is not None:
                breakdown["bandwidth"] = traffic.expected_usd(hours + STARTUP_HOURS + rework_hours, interruptions,
                                                              limits.checkpoint_hours)
            expected = sum(breakdown.values())
            worst = WORST_CASE_FACTOR * expected
            if limits.budget_left_usd is not None and worst > limits.budget_left_usd:
                rejected.append(Rejected(offer, spot, Rejection.OVER_BUDGET, f"over the budget: worst case ${worst:.2f} > "
                                                                             f"${limits.budget_left_usd:.2f} left"))
                continue
            ranked.append(Candidate(offer, spot, price + disk, hours, rate, expected, worst, breakdown,
                                    hours + STARTUP_HOURS + rework_hours, gpus_used=ranks, mini_batch=mini_batch,
                                    vram_need_gb=needs.vram_at(mini_batch), traffic=traffic))
    ranked.sort(key=lambda c: (c.expected_usd, c.hours, c.offer.provider, c.offer.offer_key, c.spot))
    if ranked:
        best = ranked[0]
        ranked = [best] + [_with_reason(c, best) for c in ranked[1:]]
    return Choice(planned, ranked, rejected)


def _clear_of_memory_failures(failed: memory.Failures, offer: Offer, chunk: int | None) -> tuple[int | None, str | None]:
    """The chunk to run on `offer` after the job's out-of-memory attempts (halved until clear of them),
    or why the offer is out: the same memory ran out before."""
    if failed.host_ram_gb is not None and (offer.ram_gb or 0.0) <= failed.host_ram_gb:
        return chunk, (f"ran out of memory before: the host's OOM killer ended the job on {failed.host_ram_gb:.0f} GB "
                       f"of RAM, this one has {offer.ram_gb or 0:.0f} GB")
    while memory.ran_out_before(failed, offer.vram_gb, chunk):
        if chunk is None or chunk // 2 < MIN_CHUNK:
            return chunk, (f"ran out of memory before: out of GPU memory on a {offer.vram_gb:.0f} GB card at "
                           + (f"chunk {chunk}" if chunk is not None else "the job's batch"))
        chunk //= 2
    return chunk, None


def _offer_problem(offer: Offer, needs: Needs, limits: Limits, now: datetime) -> tuple[Rejection, str] | None:
    if not offer.available:
        return Rejection.NOT_AVAILABLE, "not available: out of stock"
    if offer.provider == "local":
        if not limits.local_forced and (problem := local_memory_problem(offer, needs)):
            return (Rejection.TOO_LITTLE_RAM_HERE if "RAM" in problem else Rejection.TOO_LITTLE_VRAM_HERE), problem
    elif offer.vram_gb * VRAM_USABLE < needs.vram_gb:
        return Rejection.TOO_LITTLE_VRAM, (f"too little VRAM: {offer.vram_gb:.0f} GB ({VRAM_USABLE:.0%} usable) < "
                                           f"{needs.vram_gb:.1f} GB")
    elif offer.ram_gb and offer.ram_gb < needs.ram_on(offer.gpu_count):  # unknown RAM (None) is not held against it
        return Rejection.TOO_LITTLE_RAM, (f"too little RAM: {offer.ram_gb:.0f} GB < {needs.ram_on(offer.gpu_count):.1f} GB "
                                          f"({', '.join(needs.ram_breakdown) or 'the job'} on the host)")
    if offer.gpu_count < needs.gpu_count:
        return Rejection.TOO_FEW_GPUS, f"too few GPUs: {offer.gpu_count} < {needs.gpu_count}"
    if offer.disk_gb is not None and offer.disk_gb and offer.disk_gb < needs.disk_gb:
        return Rejection.TOO_LITTLE_DISK, f"too little disk: {offer.disk_gb:.0f} GB < {needs.disk_gb:.0f} GB"
    if limits.compute_caps is not None and offer.provider != "local" and (problem := image_problem(offer, limits)):
        return Rejection.IMAGE_CANNOT_RUN, problem
    if limits.providers is not None and offer.provider not in limits.providers:
        return (Rejection.PROVIDER_EXCLUDED,
                f"provider excluded: {offer.provider} (pinned to {', '.join(sorted(limits.providers))})")
    if limits.gpu_models is not None and offer.gpu_model not in limits.gpu_models:
        return Rejection.OTHER_GPU, f"other GPU: {offer.gpu_model} (pinned to {', '.join(sorted(limits.gpu_models))})"
    if limits.gpu_count is not None and offer.gpu_count != limits.gpu_count:
        return Rejection.OTHER_GPU_COUNT, f"other GPU count: {offer.gpu_count} (pinned to {limits.gpu_count})"
    if offer.provider in limits.exclude_providers:
        return Rejection.PROVIDER_EXCLUDED, f"provider excluded: {offer.provider}"
    if limits.tiers is not None and offer.tier not in limits.tiers:
        return Rejection.TIER_EXCLUDED, f"tier excluded: {offer.tier}"
    if limits.regions and not any(r.lower() in (offer.location or "").lower() for r in limits.regions):
        return Rejection.REGION_EXCLUDED, f"region excluded: {offer.location}"
    if offer.offer_key in limits.exclude_offer_keys and offer.provider != "local":  # our own box has no market
        return Rejection.COOLING_DOWN, "cooling down: interrupted recently"
    if limits.max_usd_per_gb is not None and max(offer.download_usd_per_gb or 0.0,
                                                 offer.upload_usd_per_gb or 0.0) > limits.max_usd_per_gb:
        return Rejection.OVER_BANDWIDTH_CAP, (
            f"over the bandwidth-price cap: ${offer.download_usd_per_gb or 0:.3f}/GB in, "
            f"${offer.upload_usd_per_gb or 0:.3f}/GB out > ${limits.max_usd_per_gb:.3f}/GB")
    age = now - offer.fetched_at
    if age > limits.max_price_age and not limits.allow_stale and offer.provider != "local":
        return Rejection.STALE_PRICE, f"stale price: {age.total_seconds() / 3600:.1f} h old (refresh, or --allow-stale)"
    return None


def image_problem(offer: Offer, limits: Limits) -> str | None:
    """Why the job image (limits.job_image, its kernels' compute capabilities limits.compute_caps) cannot
    run on the offer's GPU, or None. A GPU the table does not know is left to the speed check."""
    spec = gpus.by_model(offer.gpu_model)
    if spec is None or limits.compute_caps is None:
        return None
    image = f"the job image {limits.job_image}" if limits.job_image else "the job image"
    if spec.compute_cap is None:
        return (f"GPU the job image cannot run: {image} is a CUDA build and {spec.model} is an "
                f"{spec.vendor} GPU (PLANNER_JOB_IMAGE)")
    low, high = limits.compute_caps
    if low <= spec.compute_cap < high:
        return None
    hint = ("use a CUDA 12.8+ image" if spec.compute_cap >= high else
            "use an image with a CUDA 12.x build of PyTorch before 2.10")
    return (f"GPU the job image cannot run: {image} has no kernels for {spec.model} "
            f"(compute capability {spec.compute_cap:.1f}): {hint} (PLANNER_JOB_IMAGE)")


def local_description(offer: Offer) -> str:
    """This machine in words: its GPUs, or its CPU and RAM."""
    if offer.vram_gb > 0:
        return f"{offer.gpu_count}x {offer.gpu_model} {offer.vram_gb:.0f} GB"
    return (f"CPU only, {offer.vcpus or 0:.0f} cores at ~{(offer.tflops or 0.5) * 1000:.0f} GFLOP/s, "
            f"{offer.ram_gb or 0:.0f} GB RAM")


def local_memory_problem(offer: Offer, needs: Needs) -> str | None:
    """This machine's memory against the job's: VRAM per GPU with VRAM, RAM with the job's host RAM; on a
    CPU-only box the device memory (the model, its gradients and optimizer state) is RAM too."""
    if offer.vram_gb > 0 and offer.vram_gb < needs.vram_gb:
        return f"too little VRAM here: {offer.vram_gb:.0f} GB < {needs.vram_gb:.1f} GB"
    ram = needs.ram_on(offer.gpu_count) + (needs.vram_gb if offer.vram_gb <= 0 else 0.0)
    if offer.ram_gb is not None and offer.ram_gb * LOCAL_RAM_USABLE < ram:
        return f"too little RAM here: {offer.ram_gb:.0f} GB ({LOCAL_RAM_USABLE:.0%} usable) < {ram:.1f} GB"
    return None


def _with_reason(candidate: Candidate, best: Candidate) -> Candidate:
    more = candidate.expected_usd - best.expected_usd
    rework = candidate.breakdown["expected rework"]
    if (candidate.spot and candidate.interruption_rate > best.interruption_rate
            and rework > best.breakdown["expected rework"] and candidate.hours <= best.hours * 1.01):
        why = (f"${more:.2f} more: {candidate.interruption_rate:.2f} interruptions/h cost ${rework:.2f} of rework, "
               "more than the spot discount saves")
    elif (candidate.usd_per_hour < best.usd_per_hour and candidate.traffic is not None
          and (bandwidth := candidate.breakdown["bandwidth"]) > best.breakdown.get("bandwidth", 0.0)):
        why = (f"${more:.2f} more: cheaper per hour but its bandwidth costs ${bandwidth:.2f} "
               f"(${candidate.traffic.download_usd_per_gb:.3f}/GB in, ${candidate.traffic.upload_usd_per_gb:.3f}/GB out)")
    elif candidate.usd_per_hour < best.usd_per_hour:
        why = f"${more:.2f} more: cheaper per hour but {candidate.hours:.2f} h of work vs {best.hours:.2f} h"
    else:
        why = f"${more:.2f} more: ${candidate.usd_per_hour:.3f}/h vs ${best.usd_per_hour:.3f}/h"
    return replace(candidate, why_lost=why)
