"""The price book as the rest of planner sees it: providers built from settings, refresh, staleness."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import sessionmaker

from planner.config import Settings
from pricing import db, store
from pricing.providers import registry
from pricing.providers.base import Provider
from pricing.providers.http import RetryPolicy, secret_value
from pricing.refresh import ProgressFn, ProviderResult, refresh

PROVIDERS = registry.NAMES


def build_providers(settings: Settings, only: str | None = None) -> list[Provider]:
    """Every registered provider (pricing.providers.registry), or `only` that one, with one RetryPolicy."""
    retry = RetryPolicy.from_settings(settings)
    return [registry.load(entry.prices).from_settings(settings, retry)
            for name, entry in registry.PROVIDERS.items() if only in (None, name)]


def secrets_of(settings: Settings) -> tuple[str, ...]:
    return tuple(value for value in (secret_value(p.api_key) for p in settings.providers.values()) if value)


def sessions_for(settings: Settings) -> sessionmaker:
    """Sessions on the configured database, after checking its schema is current (SchemaBehind if not)."""
    db.require_current_schema(settings.db_url)
    return db.session_factory(settings.db_url)


def refresh_book(settings: Settings, only: str | None = None, providers: list[Provider] | None = None,
                 on_progress: ProgressFn | None = None) -> list[ProviderResult]:
    return refresh(sessions_for(settings), providers or build_providers(settings, only),
                   retention=timedelta(days=settings.retention_days), secrets=secrets_of(settings),
                   on_progress=on_progress)


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

