"""`planner demo`: the product end to end on this machine, with no keys and no network.

Everything it makes goes into one directory: the database, the recorded price book it served to
the real provider code, and (as the pipeline grows) job outputs. Steps are plain functions so the
CLI renders them and tests call them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from planner import pricebook
from planner.config import Settings
from planner.replay import RECORDED_LABEL, ReplayServer
from pricing import db, store
from pricing.offer import Offer
from pricing.refresh import ProviderResult


@dataclass
class DemoResult:
    directory: Path
    source: str
    refresh: list[ProviderResult] = field(default_factory=list)
    cheapest: list[Offer] = field(default_factory=list)


def default_directory() -> Path:
    return Path.cwd() / f"planner-demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def demo_settings(directory: Path, provider_url: str) -> Settings:
    return Settings(db_url=f"sqlite:///{directory / 'planner.db'}", runpod_url=provider_url, vast_url=provider_url,
                    runpod_api_key=None, vast_api_key=None, vast_min_interval_s=0)


def run_price_book(directory: Path, min_vram_gb: float = 3, top: int = 10) -> DemoResult:
    """Serve the recorded book on 127.0.0.1, refresh through the real providers, list the cheapest offers."""
    directory.mkdir(parents=True, exist_ok=True)
    result = DemoResult(directory=directory, source=RECORDED_LABEL)
    with ReplayServer() as url:
        settings = demo_settings(directory, url)
        db.upgrade(settings.db_url)
        result.refresh = pricebook.refresh_book(settings)
    with pricebook.sessions_for(settings)() as session:
        result.cheapest = store.current_offers(session, store.OfferQuery(min_vram_gb=min_vram_gb, limit=top))
    return result
