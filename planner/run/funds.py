"""Money checks before renting: both providers are prepaid, so a launch first asks each account it would
rent from for its balance and stops, before any create, where the balance cannot cover what the launch
reserves there (the worst case of the jobs whose best offer is on that provider).

Balances come from the providers' API clients: RunPod GraphQL `myself { clientBalance }`
(pricing.providers.runpod_api.RunPodAPI.balance), Vast.ai `GET /api/v0/users/current/`
(pricing.providers.vast_api.VastAPI.balance). A balance that cannot be read now (provider weather) is a
warning, not a stop: a provider's 402 at a create still holds the line (the supervisor then pauses that
provider for the run). The balance is read at launch only, not before each create.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from planner.plan.estimate import EstimateError
from planner.plan.plans import book_offers, plan_job
from pricing.db import utcnow
from pricing.providers.base import ProviderError

OVERRIDE_FLAG = "--ignore-balance"


@dataclass(frozen=True)
class Shortfall:
    provider: str
    balance_usd: float
    needed_usd: float
    jobs: int

    def message(self) -> str:
        return (f"the {self.provider} balance is ${self.balance_usd:.2f}, less than the ${self.needed_usd:.2f} this "
                f"launch reserves there (the worst case of {self.jobs} job(s)); nothing was rented: top the account "
                f"up, or pass {OVERRIDE_FLAG} to launch anyway")


def needed_by_provider(session: Session, specs, limits_of, providers) -> dict[str, tuple[float, int]]:
    """provider -> (worst-case USD, jobs) for the jobs' best offers now among `providers` (where the launch
    may run); `limits_of(spec)` gives a job's planning limits. Jobs that cannot be placed now need nothing."""
    offers = [o for o in book_offers(session) if o.provider in providers and o.provider != "local"]
    needed: dict[str, tuple[float, int]] = {}
    for spec in specs:
        try:
            winner = plan_job(session, spec, limits_of(spec), offers, utcnow()).winner
        except EstimateError:
            continue
        if winner is None:
            continue
        usd, jobs = needed.get(winner.offer.provider, (0.0, 0))
        needed[winner.offer.provider] = (usd + winner.worst_case_usd, jobs + 1)
    return needed


def shortfalls(backends: dict, needed: dict[str, tuple[float, int]]) -> tuple[list[Shortfall], list[str]]:
    """The providers whose balance does not cover what is needed there, and warnings for balances that
    could not be read (the reason, never a key)."""
    short, warnings = [], []
    for provider, (usd, jobs) in sorted(needed.items()):
        backend = backends.get(provider)
        balance = getattr(getattr(backend, "api", None), "balance", None)
        if balance is None:
            continue
        try:
            available = balance()
        except ProviderError as exc:
            warnings.append(f"cannot read the {provider} balance now ({exc}); launching without that check")
            continue
        if available < usd:
            short.append(Shortfall(provider, available, usd, jobs))
    return short, warnings
