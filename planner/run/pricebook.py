"""The price book as the rest of planner sees it: providers built from settings, refresh, staleness."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import sessionmaker

from planner.config import Settings
from pricing import db, store
from pricing.providers.base import Provider
from pricing.refresh import ProviderResult, refresh

PROVIDERS = ("runpod", "vast")


def build_providers(settings: Settings, only: str | None = None) -> list[Provider]:
    from pricing.providers.http import RetryPolicy
    from pricing.providers.runpod import RunPodProvider
    from pricing.providers.vast import VastProvider

    retry = RetryPolicy(attempts=settings.http_retries, initial_wait_s=settings.http_retry_wait_s)
    built = {
        "runpod": lambda: RunPodProvider(settings.runpod_url, settings.runpod_api_key, timeout=settings.http_timeout,
                                         retry=retry),
        "vast": lambda: VastProvider(settings.vast_url, settings.vast_api_key, timeout=settings.http_timeout,
                                     disk_gb=settings.vast_disk_gb, limit=settings.vast_search_limit,
                                     min_interval_s=settings.vast_min_interval_s, retry=retry),
    }
    return [built[name]() for name in PROVIDERS if only in (None, name)]


def secrets_of(settings: Settings) -> tuple[str, ...]:
    return tuple(key.get_secret_value() for key in (settings.runpod_api_key, settings.vast_api_key) if key)


def sessions_for(settings: Settings) -> sessionmaker:
    """Sessions on the configured database, after checking its schema is current (SchemaBehind if not)."""
    db.require_current_schema(settings.db_url)
    return db.session_factory(settings.db_url)


def refresh_book(settings: Settings, only: str | None = None,
                 providers: list[Provider] | None = None) -> list[ProviderResult]:
    return refresh(sessions_for(settings), providers or build_providers(settings, only),
                   retention=timedelta(days=settings.retention_days), secrets=secrets_of(settings))


def book_age(sessions: sessionmaker) -> dict[str, datetime | None]:
    """When each provider's current snapshot was taken (None: it has none)."""
    with sessions() as session:
        return {provider: (snaps["current"].finished_at if snaps["current"] else None)
                for provider, snaps in store.latest_snapshots(session).items()}


def stale_providers(settings: Settings, sessions: sessionmaker) -> list[str]:
    """Providers whose current prices are older than PLANNER_MAX_PRICE_AGE or missing."""
    now = store.utcnow()
    ages = book_age(sessions)
    return [p for p in PROVIDERS if ages.get(p) is None or now - ages[p] > settings.max_price_age]

