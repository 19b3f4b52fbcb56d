"""The naive strategy, the yardstick the planner is measured against: rent the offer with the cheapest price
per GPU-hour (spot or on-demand) among those the job fits on, and pay for the whole instance.

bench/bench_market.py simulates it over moving markets; the campaign report (planner.run.report) prices
it on a campaign's own book. Both take the rule from here.
"""
from __future__ import annotations

from planner.plan.choose import Candidate, Choice
from planner.plan.estimate import Needs
from pricing.offer import Offer


def fits(needs: Needs, offer: Offer) -> bool:
    """Enough VRAM per GPU for the job (for a bag: for the smallest gradient-cache chunk on this many GPUs)."""
    return (offer.available and offer.vram_gb >= needs.vram_gb
            and (not needs.sequences_per_step or needs.mini_batch_on(offer.vram_gb, needs.gpus_used(offer.gpu_count))
                 is not None))


def order(offer: Offer, spot: bool, usd_per_instance_hour: float) -> tuple[float, str, bool]:
    """The naive preference, smallest first: price per GPU-hour, then a stable tie-break."""
    return usd_per_instance_hour / offer.gpu_count, offer.offer_key, spot


def pick(choice: Choice) -> Candidate | None:
    """The naive choice among a plan's qualifying offers, priced by the planner's model (its hours on that
    offer, startup and expected rework), so that it compares with the planner's own winner."""
    fitting = [c for c in choice.ranked if c.offer.provider != "local" and fits(choice.needs, c.offer)]
    return min(fitting, key=lambda c: order(c.offer, c.spot, c.usd_per_hour), default=None)
