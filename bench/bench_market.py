"""Market simulator: the five-bag BOOM campaign plus its merge, 1,000 times per strategy, on moving markets.

    .venv/bin/python bench/bench_market.py [--runs 1000] [--seed 0] [--markets recorded synthetic]

Strategies, each seeing the same price traces and drawing from the same fates (one seeded stream per
run, per offer and per attempt, shared by all strategies):
  ours       planner.plan.choose.choose (expected dollars to finish: speed from the GPU table and the prior
             efficiency, startup, expected rework at interruption rates that start from our prior and
             learn from the campaign's own attempts), the interrupted offer cooling down for an hour,
             and the budget ledger's rule: each attempt reserves its worst case before launch and is
             stopped when it has spent it, so a campaign never passes its budget;
  naive      the cheapest $/hour (spot or on-demand) with enough VRAM, relaunched the same way;
  on-demand  the cheapest on-demand $/hour with enough VRAM.
Every strategy checkpoints every 15 minutes of work, pays 0.15 h of startup per attempt, bids 5 %
over the current minimum for spot, and runs the bags in parallel, then the merge.

The world (unknown to every strategy): prices follow the book with a daily cycle (Vast interruptible
bids +-10 %, peaking in US working hours) and jumps (on average every 2 days, lognormal factor
sigma 0.25); a spot attempt ends when the market price passes its bid (outbid) or at a random
interruption, whose true rate per hour is runpod secure 0.04, community 0.10, vast verified 0.12,
unverified 0.35 (on-demand hosts fail at 0.002 / 0.005 / 0.01 / 0.03); a GPU's true efficiency is
the job kind's prior times a lognormal factor (sigma 0.25) drawn per GPU model and run.

Markets: `recorded` is the recorded price book (pricing/data, refreshed through the real provider code),
`synthetic` a book of 31 GPU models x RunPod secure/community and Vast verified/unverified offers at
list-like prices with a 25 % spread. The job: Qwen3-4B, LoRA, a 500k-record corpus of 350 tokens a
record, one hard negative, bags of 20/40/60/80/100 %; deadline one week. The budget of a campaign is
1.25 x the expected cost of the on-demand plan at the start (what a lab would budget from on-demand
quotes). Reported per market and strategy: mean and median dollars, median hours to finish,
the share finished (all six jobs done within the week), completion rate (finished without passing the
budget), budget overruns (spend above the budget: only strategies without a ledger can have them).
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

from planner.plan.choose import RESTART_HOURS, STARTUP_HOURS, Limits, choose  # noqa: E402
from planner.plan.kinds import efficiency_prior  # noqa: E402
from planner.plan.estimate import QWEN3, CorpusStats, merge_needs, train_needs  # noqa: E402
from pricing import gpus  # noqa: E402
from pricing.offer import Offer  # noqa: E402

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
CHECKPOINT_HOURS = 0.25
BID_MARGIN = 0.05
DEADLINE_HOURS = 168.0
COOLDOWN_HOURS = 1.0
RETRY_HOURS = 0.25  # a supervisor tick for a job that found no placement
TRUE_SPOT_RATE = {("runpod", "secure"): 0.04, ("runpod", "community"): 0.10, ("vast", "verified"): 0.12,
                  ("vast", "unverified"): 0.35}
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


# --- the markets ---------------------------------------------------------------------------------

def recorded_book() -> list[Offer]:
    from planner.run import pricebook
    from planner.run.demo import demo_settings, run_price_book
    from pricing import store

    directory = Path(tempfile.mkdtemp(prefix="bench-market-")) / "book"
    run_price_book(directory)
    with pricebook.sessions_for(demo_settings(directory, "http://127.0.0.1:9"))() as session:
        return store.current_offers(session, store.OfferQuery(limit=None))


def synthetic_book(seed: int) -> list[Offer]:
    from pricing.db import utcnow

    rng = random.Random(seed)
    now, offers = utcnow(), []
    for model, price in SYNTHETIC_PRICES.items():
        spec = gpus.by_model(model)
        for provider, tier, markup, spot_share in (("runpod", "secure", 1.15, 0.55), ("runpod", "community", 1.0, 0.5),
                                                    ("vast", "verified", 0.9, 0.45), ("vast", "unverified", 0.75, 0.4)):
            for n in range(2 if provider == "vast" else 1):
                on_demand = price * markup * rng.uniform(0.75, 1.25)
                offers.append(Offer(provider=provider, offer_key=f"{model}|{tier}|{n}", gpu_model=model,
                                    gpu_name_raw=model, vram_gb=spec.vram_gb, gpu_count=1,
                                    on_demand_usd_per_gpu_hour=round(on_demand, 4),
                                    spot_usd_per_gpu_hour=round(on_demand * spot_share * rng.uniform(0.8, 1.2), 4),
                                    tier=tier, location="US", available=True, fetched_at=now))
    return offers


class Traces:
    """Each offer's price multiplier per hour of one run: daily cycle (Vast bids) and jumps."""

    def __init__(self, seed: int):
        self.seed = seed
        self.cache: dict[str, tuple[list[float], list[float]]] = {}

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
        return [dataclasses.replace(o, on_demand_usd_per_gpu_hour=_per_gpu(self.price(o, False, t), o),
                                    spot_usd_per_gpu_hour=_per_gpu(self.price(o, True, t), o)) for o in offers]


def _per_gpu(price: float | None, offer: Offer) -> float | None:
    return None if price is None else price / offer.gpu_count


# --- the campaign --------------------------------------------------------------------------------

def campaign_needs():
    shape = QWEN3["Qwen/Qwen3-4B"]
    stats = CorpusStats(500_000, 350.0, 1.0, measured=False)
    bags = [train_needs(shape, stats, fraction=f, method="lora") for f in FRACTIONS]
    return bags, merge_needs(shape, len(FRACTIONS))


@dataclasses.dataclass
class Pick:
    offer: Offer
    spot: bool
    usd_per_hour: float
    reserve: float | None = None  # ours: the worst case reserved against the budget


def pick_ours(needs, book, t, state) -> Pick | None:
    limits = Limits(budget_left_usd=state.budget - state.committed(), checkpoint_hours=CHECKPOINT_HOURS,
                    exclude_offer_keys=frozenset(k for k, until in state.cooling.items() if until > t))
    winner = choose(needs, book, limits, now=book[0].fetched_at, observed=state.observed,
                    efficiency_prior=efficiency_prior(needs.kind.partition("/")[0], needs.kind)).winner
    if winner is None:
        return None
    return Pick(winner.offer, winner.spot, winner.usd_per_hour, winner.worst_case_usd)


def pick_cheapest(needs, book, t, state, spot_allowed: bool) -> Pick | None:
    options = [(price * o.gpu_count, spot, o) for o in book if o.vram_gb >= needs.vram_gb and o.available
               for spot, price in ((False, o.on_demand_usd_per_gpu_hour), (True, o.spot_usd_per_gpu_hour))
               if price is not None and (spot_allowed or not spot)]
    if not options:
        return None
    price, spot, offer = min(options, key=lambda x: (x[0], x[2].offer_key, x[1]))
    return Pick(offer, spot, price)


STRATEGIES = {
    "ours": pick_ours,
    "naive": lambda needs, book, t, state: pick_cheapest(needs, book, t, state, True),
    "on-demand": lambda needs, book, t, state: pick_cheapest(needs, book, t, state, False),
}


class RunState:
    def __init__(self, budget: float):
        self.budget = budget
        self.settled = 0.0
        self.reserved: dict[int, float] = {}  # job -> reservation of its running attempt
        self.observed: dict[tuple[str, str, bool], tuple[float, float]] = {}
        self.cooling: dict[str, float] = {}

    def committed(self) -> float:
        return self.settled + sum(self.reserved.values())


def true_hours(needs, offer: Offer, efficiency: dict[str, float]) -> float:
    spec = gpus.by_model(offer.gpu_model)
    peak = spec.bf16_tflops if spec else 0.5  # the jobs use one GPU: a 2-GPU offer is paid for, not faster
    return needs.hours_on(peak, efficiency[offer.gpu_model] if needs.kind != "merge" else 1.0)


def simulate(strategy: str, offers: list[Offer], needs_list, merge, budget: float, seed: int) -> dict:
    """One campaign: bags in parallel, then the merge; returns dollars, hours, completed, overrun."""
    pick = STRATEGIES[strategy]
    traces = Traces(seed)
    fate = random.Random(f"{seed}/efficiency")
    efficiency = {m: efficiency_prior("train-bag", "train-bag/lora") * fate.lognormvariate(0, 0.25)
                  for m in sorted({o.gpu_model for o in offers})}
    state = RunState(budget)
    merge_job = len(needs_list)
    progress = {j: 0.0 for j in range(merge_job + 1)}  # fraction of each job checkpointed
    attempts = {j: 0 for j in progress}
    events: list[tuple[float, int, str]] = []  # (time, job, "end" of its attempt | "retry" a placement)
    running: dict[int, tuple] = {}
    done_at: dict[int, float] = {}

    def launch(job: int, t: float) -> bool:
        needs = merge if job == merge_job else needs_list[job]
        left = 1 - progress[job]  # as the supervisor does: plan the work that remains after the checkpoint
        remaining = dataclasses.replace(needs, flops=needs.flops * left, io_bytes=needs.io_bytes * left)
        chosen = pick(remaining, traces.book_at(offers, t), t, state) if t < DEADLINE_HOURS else None
        if chosen is None:
            return False
        attempts[job] += 1
        rng = random.Random(f"{seed}/{job}/{attempts[job]}")
        price = chosen.usd_per_hour * (1 + BID_MARGIN if chosen.spot else 1)
        hazard = (TRUE_SPOT_RATE if chosen.spot else TRUE_ON_DEMAND_RATE).get(
            (chosen.offer.provider, chosen.offer.tier), 0.05)
        total = true_hours(needs, chosen.offer, efficiency)
        end, how = t + STARTUP_HOURS + (1 - progress[job]) * total, "done"
        if (interrupted := t + rng.expovariate(hazard)) < end:
            end, how = interrupted, "interrupted"
        if chosen.spot and (outbid := traces.outbid_at(chosen.offer, price, t, end)) is not None and outbid < end:
            end, how = outbid, "interrupted"
        if chosen.reserve is not None:  # the ledger: spend no more than the reservation, then re-plan
            state.reserved[job] = chosen.reserve
            if (spent_out := t + chosen.reserve / price) < end:
                end, how = spent_out, "reservation spent"
        heapq.heappush(events, (end, job, "end"))
        running[job] = (t, price, chosen, total, how)
        return True

    def launch_or_wait(job: int, t: float) -> None:
        """As the supervisor does: no placement now (every fitting offer cooling down, or the budget held by
        running jobs' reservations) means try again at the next tick, until the deadline."""
        if not launch(job, t) and t < DEADLINE_HOURS:
            heapq.heappush(events, (t + RETRY_HOURS, job, "retry"))

    for job in range(merge_job):
        launch_or_wait(job, 0.0)
    while events:
        t, job, what = heapq.heappop(events)
        if what == "retry":
            launch_or_wait(job, t)
            continue
        start, price, chosen, total, how = running.pop(job)
        state.settled += price * (t - start)
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
            progress[job] = min(1.0, progress[job] + math.floor(worked / CHECKPOINT_HOURS) * CHECKPOINT_HOURS / total)
            if how == "interrupted":
                state.cooling[chosen.offer.offer_key] = t + COOLDOWN_HOURS
            launch_or_wait(job, t + RESTART_HOURS)
    finished = merge_job in done_at and done_at[merge_job] <= DEADLINE_HOURS
    overrun = state.settled > budget + 1e-9
    return {"usd": state.settled, "hours": done_at[merge_job] if finished else None, "finished": finished,
            "completed": finished and not overrun, "overrun": overrun, "attempts": sum(attempts.values())}


def on_demand_budget(offers, needs_list, merge) -> float:
    """1.25 x the expected cost of the cheapest-to-finish on-demand plan at the start."""
    total = 0.0
    for needs in (*needs_list, merge):
        winner = choose(needs, offers, Limits(spot="on-demand", checkpoint_hours=CHECKPOINT_HOURS),
                        now=offers[0].fetched_at, efficiency_prior=efficiency_prior(needs.kind.partition("/")[0], needs.kind)).winner
        total += winner.expected_usd
    return 1.25 * total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markets", nargs="+", choices=["recorded", "synthetic"], default=["recorded", "synthetic"])
    args = parser.parse_args()
    needs_list, merge = campaign_needs()
    print(f"campaign: Qwen3-4B LoRA bags {', '.join(f'{f:g}' for f in FRACTIONS)} + merge; VRAM "
          f"{needs_list[0].vram_gb:.1f} GB per bag; work {needs_list[-1].flops / 1e15:,.0f} PFLOP for the 100 % bag; "
          f"{args.runs} runs per strategy and market, seed {args.seed}\n")
    print("| market | strategy | mean $ | median $ | median hours to finish | finished | completion (within "
          "budget) | overruns | attempts per run | $ vs naive |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for market in args.markets:
        offers = recorded_book() if market == "recorded" else synthetic_book(args.seed)
        offers = [dataclasses.replace(o, fetched_at=max(x.fetched_at for x in offers)) for o in offers]
        budget = on_demand_budget(offers, needs_list, merge)
        results = {}
        started = time.perf_counter()
        for strategy in STRATEGIES:
            results[strategy] = [simulate(strategy, offers, needs_list, merge, budget, args.seed * 100_000 + run)
                                 for run in range(args.runs)]
        elapsed = time.perf_counter() - started
        naive_mean = statistics.fmean(r["usd"] for r in results["naive"])
        for strategy, runs in results.items():
            usd = [r["usd"] for r in runs]
            hours = [r["hours"] for r in runs if r["finished"]]
            print(f"| {market} ({len(offers)} offers, budget ${budget:,.0f}) | {strategy} | {statistics.fmean(usd):,.2f} | "
                  f"{statistics.median(usd):,.2f} | {statistics.median(hours) if hours else float('nan'):,.1f} | "
                  f"{sum(r['finished'] for r in runs) / len(runs):.1%} | {sum(r['completed'] for r in runs) / len(runs):.1%} | {sum(r['overrun'] for r in runs)} | "
                  f"{statistics.fmean(r['attempts'] for r in runs):.1f} | {statistics.fmean(usd) / naive_mean:.2f}x |")
        print(f"<!-- {market}: {elapsed:.0f} s for {3 * args.runs} campaigns -->", file=sys.stderr)


if __name__ == "__main__":
    main()
