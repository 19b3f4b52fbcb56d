"""One refresh: fetch every provider, judge the result, and write each snapshot atomically.

Provider faults are normal weather. A fetch that fails, or whose result is implausible, is recorded
as a failed snapshot with a one-line reason, and the provider's last good snapshot stays current.
Overlapping refreshes (cron firing while the previous run is still going, two hosts on one database)
are serialized per provider by a lease in the database: the second one skips that provider. The lease
is short and renewed while its holder works, so a holder killed with -9 holds it for at most LEASE_TTL;
a holder on this host whose process is gone holds nothing at all.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.orm import sessionmaker

from pricing import store
from pricing.offer import MAX_USD_PER_GPU_HOUR, Offer
from pricing.providers.base import Provider, ProviderError

log = logging.getLogger("pricing.refresh")

LEASE_TTL = timedelta(seconds=90)  # renewed every third of it while the refresh works
COLLAPSE_MIN_PREVIOUS = 20  # below this many offers a drop to few is not suspicious
COLLAPSE_RATIO = 0.1  # fewer than 10 % of the previous count is a broken answer, not a market move


@dataclass
class ProviderResult:
    provider: str
    status: str  # "ok" | "failed" | "skipped"
    offers: int = 0
    duration_s: float = 0.0
    reason: str | None = None
    snapshot_id: int | None = None
    notes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"provider": self.provider, "status": self.status, "offers": self.offers,
                "duration_s": round(self.duration_s, 3), "reason": self.reason,
                "snapshot_id": self.snapshot_id, "notes": self.notes}


def implausibility(offers: list[Offer], previous_count: int) -> str | None:
    """Why a fetched book must not replace the current one, or None if it is believable."""
    if not offers and previous_count:
        return f"implausible: 0 offers where the current snapshot has {previous_count}"
    if previous_count >= COLLAPSE_MIN_PREVIOUS and len(offers) < COLLAPSE_RATIO * previous_count:
        return f"implausible: {len(offers)} offers where the current snapshot has {previous_count}"
    for offer in offers:
        for price in (offer.on_demand_usd_per_gpu_hour, offer.spot_usd_per_gpu_hour):
            if price is not None and not 0 < price <= MAX_USD_PER_GPU_HOUR:
                return f"implausible price ${price}/GPU-hour for {offer.gpu_name_raw} ({offer.offer_key})"
        if offer.vram_gb <= 0 or offer.gpu_count < 1:
            return f"implausible offer {offer.offer_key}: vram {offer.vram_gb} GB x {offer.gpu_count} GPUs"
    return None


# on_progress(provider, event, result): "fetching" when its fetch starts (from a worker thread),
# "fetched" when it returned, then "done" (or "skipped") with its ProviderResult.
ProgressFn = Callable[[str, str, "ProviderResult | None"], None]


def refresh(sessions: sessionmaker, providers: list[Provider], *, retention: timedelta,
            lease_ttl: timedelta = LEASE_TTL, secrets: tuple[str, ...] = (),
            on_progress: ProgressFn | None = None) -> list[ProviderResult]:
    """Refresh every provider (fetches run in parallel, writes one by one); never raises for a provider fault.
    `on_progress` hears about each provider as it goes (a plain callback: the caller draws it)."""
    notify = on_progress or (lambda provider, event, result: None)
    holder = f"{socket.gethostname()}:{os.getpid()}:{time.monotonic_ns()}"
    with sessions() as session:
        leased = [p for p in providers if store.acquire_lease(session, p.name, holder, lease_ttl, dead=holder_dead)]
    renewing = threading.Event()
    renewer = threading.Thread(target=_renew, args=(sessions, [p.name for p in leased], holder, lease_ttl, renewing),
                               name="refresh-lease", daemon=True)
    renewer.start()
    results = {p.name: ProviderResult(p.name, "skipped", reason="another refresh of this provider is running")
               for p in providers if p not in leased}
    for name, result in results.items():
        notify(name, "skipped", result)

    def fetch(provider: Provider):
        notify(provider.name, "fetching", None)
        fetched = _fetch(provider, secrets)
        notify(provider.name, "fetched", None)
        return fetched

    try:
        with ThreadPoolExecutor(max_workers=max(1, len(leased))) as pool:
            fetched = list(pool.map(fetch, leased))
        for provider, (started, duration, offers, reason) in zip(leased, fetched):
            results[provider.name] = _record(sessions, provider, started, duration, offers, reason, retention)
            notify(provider.name, "done", results[provider.name])
    finally:
        renewing.set()
        renewer.join()
        with sessions() as session:
            for provider in leased:
                store.release_lease(session, provider.name, holder)
    return [results[p.name] for p in providers]


def _renew(sessions: sessionmaker, names: list[str], holder: str, ttl: timedelta, stop: threading.Event) -> None:
    while not stop.wait(ttl.total_seconds() / 3):
        try:
            with sessions() as session:
                for name in names:
                    store.renew_lease(session, name, holder, ttl)
        except Exception as exc:  # noqa: BLE001 (the database briefly away: the next renewal tries again)
            log.warning("cannot renew the refresh lease (%s)", type(exc).__name__)


def holder_dead(holder: str) -> bool:
    """Whether a lease holder ("host:pid:nonce") is a process of this host that no longer runs (another
    host's holder cannot be checked from here: its short lease expires instead)."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False


def _fetch(provider: Provider, secrets: tuple[str, ...]):
    started, clock = store.utcnow(), time.monotonic()
    try:
        return started, time.monotonic() - clock, provider.fetch(), None
    except ProviderError as exc:
        reason = str(exc)
    except Exception as exc:  # a bug or an unforeseen library error must not stop the other providers
        log.exception("unexpected error fetching %s", provider.name)
        reason = f"unexpected {type(exc).__name__}: {exc}"
    return started, time.monotonic() - clock, None, redact(reason, secrets)


def _record(sessions, provider, started, duration, offers, reason, retention) -> ProviderResult:
    notes = dict(getattr(provider, "last_report", None) or {})
    with sessions() as session:
        if offers is not None:
            reason = implausibility(offers, store.offers_in_current_book(session, provider.name))
        if reason is not None:
            snapshot = store.record_failure(session, provider.name, started, reason)
            log.warning("%s refresh failed: %s", provider.name, reason)
            return ProviderResult(provider.name, "failed", 0, duration, reason, snapshot.id, notes)
        snapshot = store.write_snapshot(session, provider.name, started, offers)
        store.prune(session, retention)
    log.info("%s refresh ok: %d offers in %.2fs", provider.name, len(offers), duration)
    return ProviderResult(provider.name, "ok", len(offers), duration, None, snapshot.id, notes)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """Replace every secret value in `text` (defence in depth; providers never put keys in messages)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return " ".join(text.split())
