"""Market simulator: the five-bag BOOM campaign plus its merge, 1,000 times per strategy, on moving markets.

    .venv/bin/python bench/bench_market.py [--runs 1000] [--seed 0 7 ...] [--markets recorded synthetic]

Strategies, each seeing the same price traces and drawing from the same fates (one seeded stream per
run, per offer and per attempt, shared by all strategies):
  ours       planner.plan.choose.choose (expected dollars to finish: speed from the GPU table, every GPU
             of an offer at the data-parallel scaling prior, the efficiency learned from the campaign's
             own attempts (the median achieved efficiency per GPU model and count, as
             choose.learned_efficiency; the kind's prior until one is measured), startup, expected
             rework at interruption rates that start from our prior and learn from the campaign's own
             attempts), the interrupted offer cooling down for an hour, and the budget ledger's rule:
             each attempt reserves its worst case before launch and is stopped when it has spent it,
             so a campaign never passes its budget;
  naive      the cheapest $/GPU-hour (spot or on-demand) that fits (VRAM for the recipe's smallest
             gradient-cache chunk), paying for the whole instance, relaunched the same way;
  on-demand  the same among on-demand prices only;
  ours+move  ours, and once an attempt has measured its throughput (its first checkpoint), it weighs
             moving as the supervisor does (planner.plan.moving: the expected dollars to finish there at
             the measured speed against the best other offer's, restart included, a 15 % margin, at
             most two moves per job, never back to an offer it left): a move checkpoints, ends the
             attempt and places the job again.
Every strategy checkpoints every 15 minutes of work, pays 0.15 h of startup per attempt, bids 5 %
over the current minimum for spot, and runs the bags in parallel, then the merge. A bag uses every
GPU of its instance (data parallel, the gradient-cache chunk chosen per card as the planner does);
the merge uses one process.

The world (unknown to every strategy): prices follow the book with a daily cycle (Vast interruptible
bids +-10 %, peaking in US working hours) and jumps (on average every 2 days, lognormal factor
sigma 0.25); a spot attempt ends when the market price passes its bid (outbid) or at a random
interruption, whose true rate per hour is vast verified 0.12, unverified 0.35 (RunPod rents no spot
pods: its offers are on-demand only in both books; on-demand hosts fail at runpod secure 0.002,
community 0.005, vast verified 0.01, unverified 0.03); a GPU's true efficiency is the job kind's
prior times a lognormal factor (sigma 0.25) drawn per GPU model and run; an instance's true
data-parallel scaling keeps s per doubling of GPUs, s drawn per offer and run from a normal
around the planner's prior (mean 0.92, sd 0.04, within 0.80..1.00). An attempt's achieved efficiency
(true efficiency x its scaling) is measured once it has saved its first checkpoint, as the
supervisor reads it from the progress file, and only ours uses it.

Markets: `recorded` is the recorded price book (pricing/data, refreshed through the real provider code),
`synthetic` a book drawn from the seed: 31 GPU models x RunPod secure/community (one GPU per pod, as
RunPod's reader lists them) and Vast verified/unverified offers at list-like prices with a 25 %
spread; Vast has two 1-GPU offers per model and tier and, often, 2x/4x/8x instances (present with
probability 0.8/0.7/0.5) at 0.80-1.00x the 1-GPU price per GPU. The job: Qwen3-4B bags as the BOOM
recipe sizes them (train_needs with method None: LoRA, 128 queries per step, each with a group of 2
documents: the positive and the record's one hard negative, as these stated corpus statistics give it
(a measured corpus sized for FlagEmbedding's sampler would fill the group to 8 with copies); the
gradient-cache chunk chosen per card and its cached first pass priced), a 500k-record corpus of 350
tokens a record, bags of 20/40/60/80/100 %; deadline one week. The budget of a campaign is
1.25 x the expected cost of the on-demand plan at the start (what a lab would budget from on-demand
quotes). Reported per market and strategy: mean and median dollars, median hours to finish,
the share finished (all six jobs done within the week), completion rate (finished without passing the
budget), budget overruns (spend above the budget: only strategies without a ledger can have them);
then one summary row per seed and market, with ours / naive also over only the runs both finished
(naive's mean counts a campaign that missed the week at what it had spent).
"""
from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.plan import moving, naive  # noqa: E402
from planner.plan.choose import RESTART_HOURS, STARTUP_HOURS, Limits, choose, efficiency_from  # noqa: E402
from planner.plan.estimate import QWEN3, CorpusStats, merge_needs, train_needs  # noqa: E402
from planner.plan.kinds import efficiency_prior  # noqa: E402
from pricing import gpus  # noqa: E402
from pricing.offer import Offer  # noqa: E402

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
CHECKPOINT_HOURS = Limits().checkpoint_hours  # the jobs' default interval (jobs.protocol), as the planner prices it
BID_MARGIN = 0.05
DEADLINE_HOURS = 168.0
COOLDOWN_HOURS = 1.0
RETRY_HOURS = 0.25  # a supervisor tick for a job that found no placement
TRUE_SPOT_RATE = {("vast", "verified"): 0.12, ("vast", "unverified"): 0.35}  # RunPod: no spot pods
TRUE_ON_DEMAND_RATE = {("runpod", "secure"): 0.002, ("runpod", "community"): 0.005, ("vast", "verified"): 0.01,
                       ("vast", "unverified"): 0.03}
SYNTHETIC_PRICES = {  # on-demand $/GPU-hour, roughly the market's list prices
    "RTX3060": 0.07, "RTX3080": 0.12, "RTX3090": 0.22, "RTX4060Ti": 0.10, "RTX4070Ti": 0.16, "RTX4080": 0.22,
    "RTX4090": 0.34, "RTX5080": 0.30, "RTX5090": 0.69, "RTX-A4000": 0.17, "RTX-A4500": 0.19, "RTX-A5000": 0.22,
    "RTX-A6000": 0.49, "RTX4000-Ada": 0.20, "RTX5000-Ada": 0.45, "RTX6000-Ada": 0.77, "A10": 0.35, "A16": 0.12,
    "T4": 0.12, "L4": 0.43, "A40": 0.40, "L40": 0.69, "L40S": 0.86, "A100-40GB-PCIe": 0.89,
    "A100-80GB-PCIe": 1.19, "A100-80GB-SXM": 1.39, "H100-PCIe": 1.99, "H100-SXM": 2.69, "H200": 3.59,
    "V100": 0.19, "RTX-PRO-6000": 1.79,
}
MULTI_GPU_SHARE = {2: 0.8, 4: 0.7, 8: 0.5}  # Vast: how often a model and tier has an instance of that many GPUs
TRUE_SCALING = (0.92, 0.04, 0.80, 1.00)  # per doubling of data-parallel GPUs: mean, sd, floor, ceiling


# --- the markets ---------------------------------------------------------------------------------

def recorded_book() -> list[Offer]:
    from planner.run import pricebook
    from planner.run.demo import demo_settings, run_price_book
    from pricing import store

    directory = Path(tempfile.mkdtemp(prefix="bench-market-")) / "book"
    run_price_book(directory)
    with pricebook.sessions_for(demo_settings(directory, "http://127.0.0.1:9"))() as session:
        offers = store.current_offers(session, store.OfferQuery(limit=None))
    return [dataclasses.replace(o, spot_usd_per_gpu_hour=None) if o.provider == "runpod" else o for o in offers]


def synthetic_book(seed: int) -> list[Offer]:
    from pricing.db import utcnow

    rng = random.Random(seed)
    now, offers = utcnow(), []
    for model, price in SYNTHETIC_PRICES.items():
        spec = gpus.by_model(model)
        for provider, tier, markup, spot_share in (("runpod", "secure", 1.15, None), ("runpod", "community", 1.0, None),
                                                    ("vast", "verified", 0.9, 0.45), ("vast", "unverified", 0.75, 0.4)):
            counts = [1]
            if provider == "vast":
                counts += [1] + [n for n, share in MULTI_GPU_SHARE.items() if rng.random() < share]
            for i, count in enumerate(counts):
                bulk = 1.0 if count == 1 else rng.uniform(0.80, 1.00)
                on_demand = price * markup * bulk * rng.uniform(0.75, 1.25)
                spot = None if spot_share is None else round(on_demand * spot_share * rng.uniform(0.8, 1.2), 4)
                offers.append(Offer(provider=provider, offer_key=f"{model}|{tier}|{count}x|{i}", gpu_model=model,
                                    gpu_name_raw=model, vram_gb=spec.vram_gb, gpu_count=count,
                                    on_demand_usd_per_gpu_hour=round(on_demand, 4), spot_usd_per_gpu_hour=spot,
                                    tier=tier, location="US", available=True, fetched_at=now))
    return offers


class Traces:
    """Each offer's price multiplier per hour of one run: daily cycle (Vast bids) and jumps."""

    def __init__(self, seed: int):
        self.seed = seed
        self.cache: dict[str, tuple[list[float], list[float]]] = {}
        self.books: dict[int, list[Offer]] = {}  # the whole book per hour: prices only move on hour boundaries
        self.cheapest: dict[tuple, tuple[float, str, bool, Offer, float] | None] = {}
        self.fitting: dict[tuple, list[Offer]] = {}

    def _series(self, offer: Offer) -> tuple[list[float], list[float]]:
        if offer.offer_key not in self.cache:
            rng = random.Random(f"{self.seed}/{offer.provider}/{offer.offer_key}")
            hours = int(DEADLINE_HOURS) + 2
            jump, factors = 1.0, []
            for _ in range(hours):
                if rng.random() < 1 / 48:
                    jump = min(3.0, max(0.4, jump * rng.lognormvariate(0, 0.25)))
                factors.append(jump)
            phase = rng.uniform(-2, 2)
            cycle = [1 + (0.10 * math.sin(2 * math.pi * (h - 9 + phase) / 24) if offer.provider == "vast" else 0)
                     for h in range(hours)]
            self.cache[offer.offer_key] = (factors, [f * c for f, c in zip(factors, cycle)])
        return self.cache[offer.offer_key]

    def price(self, offer: Offer, spot: bool, t: float) -> float | None:
        base = offer.spot_usd_per_gpu_hour if spot else offer.on_demand_usd_per_gpu_hour
        if base is None:
            return None
        on_demand, spot_factors = self._series(offer)
        return base * offer.gpu_count * (spot_factors if spot else on_demand)[min(int(t), len(on_demand) - 1)]

    def outbid_at(self, offer: Offer, bid: float, start: float, end: float) -> float | None:
        """The first hour boundary in (start, end) where the market's spot price passes the bid."""
        for h in range(int(start) + 1, int(math.ceil(end))):
            if self.price(offer, True, h) > bid:
                return float(h)
        return None

    def book_at(self, offers: list[Offer], t: float) -> list[Offer]:
        hour = int(t)
        if hour not in self.books:
            self.books[hour] = [_priced(o, _per_gpu(self.price(o, False, t), o), _per_gpu(self.price(o, True, t), o))
                                for o in offers]
        return self.books[hour]

    def cheapest_at(self, key, offers: list[Offer], spot_allowed: bool, t: float):
        """(per-GPU $/h, offer key, spot, offer, instance $/h) of the cheapest per GPU-hour among `offers`
        (named by `key`) at hour t, or None; the same for every strategy that asks in that hour."""
        slot = (key, spot_allowed, int(t))
        if slot not in self.cheapest:
            options = [(price / o.gpu_count, o.offer_key, spot, o, price) for o in offers
                       for spot in ((False, True) if spot_allowed else (False,))
                       if (price := self.price(o, spot, t)) is not None]
            self.cheapest[slot] = min(options, key=lambda x: naive.order(x[3], x[2], x[4])) if options else None
        return self.cheapest[slot]


def _per_gpu(price: float | None, offer: Offer) -> float | None:
    return None if price is None else price / offer.gpu_count


def _priced(offer: Offer, on_demand: float | None, spot: float | None) -> Offer:
    """The offer at other prices: dataclasses.replace without its per-call field walk (a book of 300
    offers is repriced for every hour a strategy launches in)."""
    copy = object.__new__(Offer)
    copy.__dict__.update(offer.__dict__, on_demand_usd_per_gpu_hour=on_demand, spot_usd_per_gpu_hour=spot)
    return copy


# --- the campaign --------------------------------------------------------------------------------

def campaign_needs():
    shape = QWEN3["Qwen/Qwen3-4B"]
    stats = CorpusStats(500_000, 350.0, 1.0, measured=False)
    bags = [train_needs(shape, stats, fraction=f, method=None) for f in FRACTIONS]  # the BOOM recipe: LoRA
    return bags, merge_needs(shape, len(FRACTIONS))


@dataclasses.dataclass
class Pick:
    offer: Offer
    spot: bool
    usd_per_hour: float
    reserve: float | None = None  # ours: the worst case reserved against the budget


def best_ours(needs, book, t, state, left: frozenset[str] = frozenset(), committed: float | None = None):
    """choose's winner for ours at time t, the offers in `left` (moved off) excluded; the budget left is
    the budget less `committed` (by default what is settled and reserved)."""
    limits = Limits(budget_left_usd=state.budget - (state.committed() if committed is None else committed),
                    checkpoint_hours=CHECKPOINT_HOURS,
                    exclude_offer_keys=frozenset(k for k, until in state.cooling.items() if until > t) | left)
    prior = efficiency_prior(needs.kind.partition("/")[0], needs.kind)
    measured = state.measured_at(needs.kind, t)
    return choose(needs, book, limits, now=book[0].fetched_at, observed=state.observed, efficiency_prior=prior,
                  efficiency=lambda model, count: efficiency_from(measured.get(model, {}), prior, count)).winner


def pick_ours(needs, book, t, state, left: frozenset[str] = frozenset()) -> Pick | None:
    winner = best_ours(needs, book, t, state, left)
    if winner is None:
        return None
    return Pick(winner.offer, winner.spot, winner.usd_per_hour, winner.worst_case_usd)


def pick_cheapest(needs, offers, t, state, spot_allowed: bool, traces) -> Pick | None:
    """The cheapest $/GPU-hour that fits; the whole instance is paid for (the rule: planner.plan.naive)."""
    key = (needs.vram_gb, needs.sequences_per_step)  # what `fits` depends on (one book per run's traces)
    if key not in traces.fitting:
        traces.fitting[key] = [o for o in offers if naive.fits(needs, o)]
    best = traces.cheapest_at(key, traces.fitting[key], spot_allowed, t)
    if best is None:
        return None
    _, _, spot, offer, price = best
    return Pick(offer, spot, price)


STRATEGIES = {
    "ours": lambda needs, offers, t, state, traces: pick_ours(needs, traces.book_at(offers, t), t, state),
    "naive": lambda needs, offers, t, state, traces: pick_cheapest(needs, offers, t, state, True, traces),
    "on-demand": lambda needs, offers, t, state, traces: pick_cheapest(needs, offers, t, state, False, traces),
    "ours+move": lambda needs, offers, t, state, traces, left=frozenset(): pick_ours(needs, traces.book_at(offers, t),
                                                                                   t, state, left),
}
MOVING = {"ours+move"}  # strategies that weigh moving an attempt once it has measured its throughput


class RunState:
    def __init__(self, budget: float):
        self.budget = budget
        self.settled = 0.0
        self.reserved: dict[int, float] = {}  # job -> reservation of its running attempt
        self.observed: dict[tuple[str, str, bool], tuple[float, float]] = {}
        self.cooling: dict[str, float] = {}
        self.measurements: list[tuple[float, str, str, int, float]] = []  # (known from, kind, model, GPUs, eff.)

    def committed(self) -> float:
        return self.settled + sum(self.reserved.values())

    def measured_at(self, kind: str, t: float) -> dict[str, dict[int, list[float]]]:
        """GPU model -> GPU count -> achieved efficiencies of `kind` measured by time t."""
        out: dict[str, dict[int, list[float]]] = {}
        for known, k, model, count, eff in self.measurements:
            if known <= t and k == kind:
                out.setdefault(model, {}).setdefault(count, []).append(eff)
        return out


class World:
    """What no strategy knows: each GPU model's true efficiency and each instance's data-parallel scaling."""

    def __init__(self, seed: int, offers: list[Offer]):
        self.seed = seed
        fate = random.Random(f"{seed}/efficiency")
        self.efficiency = {m: efficiency_prior("train-bag", "train-bag/lora") * fate.lognormvariate(0, 0.25)
                           for m in sorted({o.gpu_model for o in offers})}
        self.scaling: dict[str, float] = {}

    def per_doubling(self, offer: Offer) -> float:
        if offer.offer_key not in self.scaling:
            mean, sd, low, high = TRUE_SCALING
            rng = random.Random(f"{self.seed}/scaling/{offer.provider}/{offer.offer_key}")
            self.scaling[offer.offer_key] = min(high, max(low, rng.gauss(mean, sd)))
        return self.scaling[offer.offer_key]

    def achieved(self, needs, offer: Offer) -> float:
        """Achieved / peak per GPU of a bag on this instance, its data-parallel losses included."""
        return self.efficiency[offer.gpu_model] * self.per_doubling(offer) ** math.log2(needs.gpus_used(offer.gpu_count))

    def hours(self, needs, offer: Offer) -> float:
        if needs.kind == "merge":
            return needs.hours_on(0.0, 1.0)
        spec = gpus.by_model(offer.gpu_model)
        ranks = needs.gpus_used(offer.gpu_count)
        return needs.hours_on(spec.bf16_tflops if spec else 0.5, self.achieved(needs, offer), ranks,
                              needs.flops_on(offer.vram_gb, ranks))


def simulate(strategy: str, offers: list[Offer], needs_list, merge, budget: float, seed: int,
             traces: Traces | None = None, world: World | None = None, log: list | None = None) -> dict:
    """One campaign: bags in parallel, then the merge; returns dollars, hours, completed, overrun.
    `traces` and `world` (drawn from `seed` when not given) may be shared by the strategies of one run;
    `log` collects every settled attempt (job, offer, spot, dollars, hours, how it ended)."""
    pick = STRATEGIES[strategy]
    traces = traces or Traces(seed)
    world = world or World(seed, offers)
    state = RunState(budget)
    merge_job = len(needs_list)
    progress = {j: 0.0 for j in range(merge_job + 1)}  # fraction of each job checkpointed
    attempts = {j: 0 for j in progress}
    events: list[tuple[float, int, str, int]] = []  # (time, job, "end" | "check" of attempt n | "retry", n)
    running: dict[int, tuple] = {}
    done_at: dict[int, float] = {}
    left: dict[int, set[str]] = {j: set() for j in progress}  # offers each job moved off (ours+move)
    moves = {j: 0 for j in progress}

    def launch(job: int, t: float) -> bool:
        needs = merge if job == merge_job else needs_list[job]
        remaining = needs.remaining(1 - progress[job])  # as the supervisor does: the work left after the checkpoint
        chosen = None
        if t < DEADLINE_HOURS:
            chosen = (pick(remaining, offers, t, state, traces, frozenset(left[job])) if strategy in MOVING
                      else pick(remaining, offers, t, state, traces))
        if chosen is None:
            return False
        attempts[job] += 1
        rng = random.Random(f"{seed}/{job}/{attempts[job]}")
        price = chosen.usd_per_hour * (1 + BID_MARGIN if chosen.spot else 1)
        hazard = (TRUE_SPOT_RATE if chosen.spot else TRUE_ON_DEMAND_RATE).get(
            (chosen.offer.provider, chosen.offer.tier), 0.05)
        total = world.hours(needs, chosen.offer)
        end, how = t + STARTUP_HOURS + (1 - progress[job]) * total, "done"
        if (interrupted := t + rng.expovariate(hazard)) < end:
            end, how = interrupted, "interrupted"
        if chosen.spot and (outbid := traces.outbid_at(chosen.offer, price, t, end)) is not None and outbid < end:
            end, how = outbid, "interrupted"
        if chosen.reserve is not None:  # the ledger: spend no more than the reservation, then re-plan
            state.reserved[job] = chosen.reserve
            if (spent_out := t + chosen.reserve / price) < end:
                end, how = spent_out, "reservation spent"
        measured_at = t + STARTUP_HOURS + CHECKPOINT_HOURS
        if needs.kind != "merge" and end >= measured_at:  # its progress file says
            state.measurements.append((measured_at, needs.kind, chosen.offer.gpu_model,
                                       needs.gpus_used(chosen.offer.gpu_count), world.achieved(needs, chosen.offer)))
            if strategy in MOVING and end > measured_at:
                heapq.heappush(events, (measured_at, job, "check", attempts[job]))
        heapq.heappush(events, (end, job, "end", attempts[job]))
        running[job] = (t, price, chosen, total, how, attempts[job])
        return True

    def move_decision(job: int, t: float) -> moving.Move | None:
        """At the attempt's first checkpoint, with its throughput measured: the supervisor's rule."""
        start, price, chosen, total, _, _ = running[job]
        needs = needs_list[job]
        done = progress[job] + (t - start - STARTUP_HOURS) / total  # just checkpointed: nothing since
        remaining, book = needs.remaining(1 - done), traces.book_at(offers, t)
        stay = moving.staying(remaining, chosen.offer, chosen.spot, price, world.achieved(needs, chosen.offer),
                              now=book[0].fetched_at, observed=state.observed, checkpoint_hours=CHECKPOINT_HOURS)
        here_spent = price * (t - start)  # the move settles this attempt; its reservation goes back
        committed = state.settled + here_spent + sum(v for j, v in state.reserved.items() if j != job)
        elsewhere = best_ours(remaining, book, t, state, frozenset(left[job] | {chosen.offer.offer_key}), committed)
        return None if stay is None else moving.decide(stay, elsewhere, moves=moves[job])

    def launch_or_wait(job: int, t: float) -> None:
        """As the supervisor does: no placement now (every fitting offer cooling down, or the budget held by
        running jobs' reservations) means try again at the next tick, until the deadline."""
        if not launch(job, t) and t < DEADLINE_HOURS:
            heapq.heappush(events, (t + RETRY_HOURS, job, "retry", 0))

    for job in range(merge_job):
        launch_or_wait(job, 0.0)
    while events:
        t, job, what, number = heapq.heappop(events)
        if what == "retry":
            launch_or_wait(job, t)
            continue
        if job not in running or running[job][5] != number:
            continue  # an attempt that has moved: its end or check is void
        if what == "check":
            if move_decision(job, t) is None:
                continue
            moves[job] += 1
            left[job].add(running[job][2].offer.offer_key)
            running[job] = (*running[job][:4], "moved", number)
        start, price, chosen, total, how, _ = running.pop(job)
        state.settled += price * (t - start)
        if log is not None:
            log.append((job, chosen.offer, chosen.spot, price * (t - start), t - start, how))
        state.reserved.pop(job, None)
        key = (chosen.offer.provider, chosen.offer.tier, chosen.spot)
        seen, hours = state.observed.get(key, (0.0, 0.0))
        state.observed[key] = (seen + (how == "interrupted"), hours + t - start)
        if how == "done":
            progress[job], done_at[job] = 1.0, t
            if job != merge_job and len(done_at) == merge_job:
                launch_or_wait(merge_job, t)
        else:
            worked = max(0.0, t - start - STARTUP_HOURS)
            saved = math.floor(worked / CHECKPOINT_HOURS + 1e-9)  # a move ends just after a checkpoint
            progress[job] = min(1.0, progress[job] + saved * CHECKPOINT_HOURS / total)
            if how == "interrupted":
                state.cooling[chosen.offer.offer_key] = t + COOLDOWN_HOURS
            launch_or_wait(job, t + RESTART_HOURS)
    finished = merge_job in done_at and done_at[merge_job] <= DEADLINE_HOURS
    overrun = state.settled > budget + 1e-9
    return {"usd": state.settled, "hours": done_at[merge_job] if finished else None, "finished": finished,
            "completed": finished and not overrun, "overrun": overrun, "attempts": sum(attempts.values()),
            "moves": sum(moves.values())}


def on_demand_budget(offers, needs_list, merge) -> float:
    """1.25 x the expected cost of the cheapest-to-finish on-demand plan at the start."""
    total = 0.0
    for needs in (*needs_list, merge):
        winner = choose(needs, offers, Limits(spot="on-demand", checkpoint_hours=CHECKPOINT_HOURS),
                        now=offers[0].fetched_at, efficiency_prior=efficiency_prior(needs.kind.partition("/")[0], needs.kind)).winner
        total += winner.expected_usd
    return 1.25 * total


def run_market(market: str, seed: int, runs: int, needs_list, merge) -> tuple[list[Offer], float, dict, float]:
    offers = recorded_book() if market == "recorded" else synthetic_book(seed)
    offers = [dataclasses.replace(o, fetched_at=max(x.fetched_at for x in offers)) for o in offers]
    budget = on_demand_budget(offers, needs_list, merge)
    results: dict[str, list[dict]] = {strategy: [] for strategy in STRATEGIES}
    started = time.perf_counter()
    for run in range(runs):
        run_seed = seed * 100_000 + run
        traces, world = Traces(run_seed), World(run_seed, offers)  # the same market and fates for every strategy
        for strategy in STRATEGIES:
            results[strategy].append(simulate(strategy, offers, needs_list, merge, budget, run_seed, traces, world))
    return offers, budget, results, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds (each draws its own "
                        "synthetic book and the runs' fates)")
    parser.add_argument("--markets", nargs="+", choices=["recorded", "synthetic"], default=["recorded", "synthetic"])
    args = parser.parse_args()
    needs_list, merge = campaign_needs()
    print(f"campaign: Qwen3-4B BOOM-recipe bags ({needs_list[0].notes[-1]}) {', '.join(f'{f:g}' for f in FRACTIONS)} "
          f"+ merge; VRAM {needs_list[0].vram_gb:.1f} GB per bag at the smallest chunk; work "
          f"{needs_list[-1].flops / 1e15:,.0f} PFLOP (+{needs_list[-1].cache_flops / 1e15:,.0f} for the cache pass when "
          f"chunked) for the 100 % bag; {args.runs} runs per strategy and market, seeds "
          f"{', '.join(map(str, args.seed))}\n")
    summary = []
    for seed in args.seed:
        print(f"seed {seed}\n\n| market | strategy | mean $ | median $ | median hours to finish | finished | completion "
              "(within budget) | overruns | attempts per run | $ vs naive |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for market in args.markets:
            offers, budget, results, elapsed = run_market(market, seed, args.runs, needs_list, merge)
            naive_mean = statistics.fmean(r["usd"] for r in results["naive"])
            row = {"seed": seed, "market": market, "offers": len(offers), "budget": budget}
            for strategy, runs in results.items():
                usd = [r["usd"] for r in runs]
                hours = [r["hours"] for r in runs if r["finished"]]
                median_hours = statistics.median(hours) if hours else float("nan")
                completion = sum(r["completed"] for r in runs) / len(runs)
                overruns = sum(r["overrun"] for r in runs)
                print(f"| {market} ({len(offers)} offers, budget ${budget:,.0f}) | {strategy} | {statistics.fmean(usd):,.2f} | "
                      f"{statistics.median(usd):,.2f} | {median_hours:,.1f} | "
                      f"{sum(r['finished'] for r in runs) / len(runs):.1%} | {completion:.1%} | {overruns} | "
                      f"{statistics.fmean(r['attempts'] for r in runs):.1f} | {statistics.fmean(usd) / naive_mean:.2f}x |",
                      flush=True)
                row[strategy] = {"ratio": statistics.fmean(usd) / naive_mean, "completion": completion,
                                 "overruns": overruns, "hours": median_hours,
                                 "moves": statistics.fmean(r["moves"] for r in runs)}
            for strategy in ("ours", "ours+move"):
                both = [(o["usd"], n["usd"]) for o, n in zip(results[strategy], results["naive"])
                        if o["finished"] and n["finished"]]
                row[strategy]["both"] = (statistics.fmean(o for o, _ in both) / statistics.fmean(n for _, n in both),
                                         len(both)) if both else (float("nan"), 0)
                print(f"\n{strategy} / naive over the {row[strategy]['both'][1]} runs both finished: "
                      f"{row[strategy]['both'][0]:.2f}x")
            summary.append(row)
            print(f"<!-- seed {seed} {market}: {elapsed:.0f} s for {len(STRATEGIES) * args.runs} campaigns -->",
                  file=sys.stderr, flush=True)
        print()
    names = " / ".join(STRATEGIES)
    print(f"| seed | book | runs | ours $ / naive $ | ours+move $ / naive $ | ours+move / naive, runs both finished | "
          f"moves per run | completion within budget: {names} | overruns: {names} | median hours: {names} |\n"
          "|---:|---|---:|---:|---:|---:|---:|---|---|---|")
    for row in summary:
        cells = [row[s] for s in STRATEGIES]
        completion = " / ".join(f"{c['completion']:.1%}" for c in cells)
        overruns = " / ".join(str(c["overruns"]) for c in cells)
        hours = " / ".join(f"{c['hours']:.1f}" for c in cells)
        moved = row["ours+move"]
        print(f"| {row['seed']} | {row['market']} ({row['offers']} offers, budget ${row['budget']:,.0f}) | {args.runs:,} | "
              f"{row['ours']['ratio']:.2f}x | **{moved['ratio']:.2f}x** | {moved['both'][0]:.2f}x ({moved['both'][1]}) | "
              f"{moved['moves']:.2f} | {completion} | {overruns} | {hours} |")
    for market in args.markets:
        for strategy in ("ours", "ours+move"):
            worst = max((r for r in summary if r["market"] == market), key=lambda r: r[strategy]["ratio"])
            print(f"\nworst seed, {market}, {strategy}: {worst['seed']} at {worst[strategy]['ratio']:.2f}x naive")


if __name__ == "__main__":
    main()
