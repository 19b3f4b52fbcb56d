"""`prices show` and `prices history` on a big book: a year of hourly aggregates and 14 days of
full rows at 5,000 offers an hour (about 1.7 M offer rows), in SQLite.

    .venv/bin/python bench/bench_pricebook_queries.py [--db bench/out/big.db] [--repeat 20]

Builds the database once (minutes), then times the same store queries the CLI commands run,
in-process (interpreter start-up is not the query). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

from planner.config import Settings
from planner.run.pricebook import stale_providers
from pricing import db, store

OFFERS_PER_HOUR = 5000
FULL_DAYS = 14
AGG_DAYS = 365
GPUS = [("RTX4090", 24, 0.35), ("RTX3090", 24, 0.22), ("A100-80GB", 80, 1.3), ("H100-SXM", 80, 2.2),
        ("L40S", 48, 0.8), ("RTX A6000", 48, 0.5), ("A40", 48, 0.4), ("RTX5090", 32, 0.6), ("H200", 141, 3.2),
        ("L4", 24, 0.3), ("RTX 4000 Ada", 20, 0.2), ("A10", 24, 0.3), ("RTX3070", 8, 0.1), ("V100", 16, 0.25)]


def build(url: str) -> None:
    db.upgrade(url)
    engine = db.engine_for(url)
    rng = random.Random(0)
    now = store.utcnow().replace(minute=0, second=0, microsecond=0)
    with engine.begin() as conn:
        for h in range(FULL_DAYS * 24, 0, -1):
            at = now - timedelta(hours=h) + timedelta(minutes=5)
            provider = "vast" if h % 2 else "runpod"
            sid = conn.execute(insert(store.Snapshot).values(
                provider=provider, started_at=at, finished_at=at, status="ok", offer_count=OFFERS_PER_HOUR)
            ).inserted_primary_key[0]
            rows = []
            for i in range(OFFERS_PER_HOUR):
                gpu, vram, base = GPUS[i % len(GPUS)]
                od = round(base * rng.uniform(0.8, 1.6), 4)
                rows.append(dict(snapshot_id=sid, provider=provider, offer_key=f"{h}-{i}", gpu_model=gpu,
                                 gpu_name_raw=gpu, known_gpu=True, vram_gb=vram, gpu_count=rng.choice([1, 1, 2, 4, 8]),
                                 on_demand_usd_per_gpu_hour=od, spot_usd_per_gpu_hour=round(od * 0.5, 4) if i % 3 else None,
                                 tier=rng.choice(["verified", "unverified"]), location="US", available=True,
                                 reliability=0.99, vcpus=16, ram_gb=64, disk_gb=500, stock=None, fetched_at=at))
            conn.execute(insert(store.OfferRow), rows)
        aggregates = []
        for h in range(AGG_DAYS * 24):
            hour = now - timedelta(hours=h)
            for provider in ("runpod", "vast"):
                for gpu, _, base in GPUS:
                    for tier in ("secure", "community") if provider == "runpod" else ("verified", "unverified"):
                        for spot in (False, True):
                            low = base * rng.uniform(0.5, 1.0) * (0.5 if spot else 1)
                            aggregates.append(dict(provider=provider, gpu_model=gpu, tier=tier, spot=spot, hour=hour,
                                                   min_usd=low, median_usd=low * 1.3, offer_count=50))
            if len(aggregates) > 50_000:
                conn.execute(insert(store.PriceHourly), aggregates)
                aggregates.clear()
        if aggregates:
            conn.execute(insert(store.PriceHourly), aggregates)
    with db.session_factory(url)() as session:
        store.rebuild_daily(session)  # refreshes keep it in step; rows inserted directly need a roll-up


def timed(fn, repeat: int) -> float:
    fn()  # warm the page cache and statement cache
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", type=Path, default=Path("bench/out/big.db"))
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    url = f"sqlite:///{args.db}"
    if not args.db.exists():
        args.db.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        build(url)
        print(f"built {args.db} in {time.perf_counter() - start:.0f} s")
    sessions = db.session_factory(url)
    settings = Settings(db_url=url)
    with sessions() as session:
        offers = session.scalar(select(func.count(store.OfferRow.id)))
        aggregates = session.scalar(select(func.count()).select_from(store.PriceHourly))

    def show():
        with sessions() as session:
            store.current_offers(session, store.OfferQuery(min_vram_gb=3, limit=20))
        stale_providers(settings, sessions)

    def show_filtered():
        with sessions() as session:
            store.current_offers(session, store.OfferQuery(min_vram_gb=40, spot=True, gpu="H100-SXM", limit=20))

    def history():
        with sessions() as session:
            store.price_history(session, "RTX4090", store.utcnow() - timedelta(days=7))

    def history_year():
        with sessions() as session:
            store.price_history(session, "RTX4090", store.utcnow() - timedelta(days=365), daily=True)

    print(f"\n{offers:,} offer rows, {aggregates:,} hourly aggregate rows\n")
    print("| query | median ms | target |\n|---|---:|---:|")
    for name, fn in [("prices show --min-vram 3 (+ staleness check)", show),
                     ("prices show --gpu H100-SXM --spot --min-vram 40", show_filtered),
                     ("prices history --gpu RTX4090 --days 7", history),
                     ("prices history --gpu RTX4090 --days 365", history_year)]:
        print(f"| {name} | {timed(fn, args.repeat):.1f} | 50 |")


if __name__ == "__main__":
    main()
