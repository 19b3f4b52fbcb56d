"""The price book store and one refresh, on SQLite and (when configured) PostgreSQL."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from pricing import db, store
from pricing.offer import Offer
from pricing.providers.base import Provider, ProviderError
from pricing.refresh import refresh


def offer(key: str, gpu: str = "RTX4090", od: float | None = 0.40, spot: float | None = 0.20, vram: float = 24,
          provider: str = "vast", tier: str = "verified", count: int = 1) -> Offer:
    return Offer(provider=provider, offer_key=key, gpu_model=gpu, gpu_name_raw=gpu, vram_gb=vram, gpu_count=count,
                 on_demand_usd_per_gpu_hour=od, spot_usd_per_gpu_hour=spot, tier=tier, location="US",
                 available=True, fetched_at=store.utcnow())


class StaticProvider(Provider):
    """A provider whose next answer the test sets: a list of offers or an exception."""

    def __init__(self, name: str, answer):
        self.name, self.answer, self.calls = name, answer, 0
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def fetch(self):
        self.calls += 1
        self.started.set()
        self.release.wait(10)
        if isinstance(self.answer, Exception):
            raise self.answer
        return list(self.answer)


def book(url):
    sessions = db.session_factory(url)
    with sessions() as session:
        return store.current_offers(session)


def run(url, *providers):
    return refresh(db.session_factory(url), list(providers), retention=timedelta(days=14))


def test_refresh_writes_snapshot_and_current_book(db_url):
    offers = [offer(f"a{i}", od=0.3 + i / 100) for i in range(30)] + [offer("r1", "H100-SXM", 2.5, None, 80, "runpod", "secure")]
    results = run(db_url, StaticProvider("vast", offers[:30]), StaticProvider("runpod", offers[30:]))
    assert [r.status for r in results] == ["ok", "ok"]
    current = book(db_url)
    assert len(current) == 31
    assert current[0].offer_key == "a0" and current[0].spot_usd_per_gpu_hour == 0.20
    assert current[-1].provider == "runpod" and current[-1].spot_usd_per_gpu_hour is None
    assert current[0].fetched_at.tzinfo is not None


GOOD = [offer(f"a{i}") for i in range(30)]


@pytest.mark.parametrize("fault, reason", [
    (ProviderError("HTTP 500 after 4 attempts"), "HTTP 500"),
    ([], "0 offers where the current snapshot has 30"),
    (GOOD + [offer("x", od=0.0)], "implausible price"),
    (GOOD + [offer("x", od=5000.0)], "implausible price"),
    (GOOD + [offer("x", vram=0)], "implausible offer x"),
    (RuntimeError("boom"), "unexpected RuntimeError"),
])
def test_fault_keeps_last_good_snapshot(db_url, fault, reason):
    good = GOOD
    run(db_url, StaticProvider("vast", good))
    [result] = run(db_url, StaticProvider("vast", fault))
    assert result.status == "failed" and reason in result.reason
    assert len(book(db_url)) == 30
    with db.session_factory(db_url)() as session:
        latest = store.latest_snapshots(session)["vast"]
    assert latest["latest"].status == "failed" and reason in latest["latest"].reason
    assert latest["current"].status == "ok" and latest["current"].offer_count == 30


def test_collapse_to_a_few_offers_is_rejected(db_url):
    run(db_url, StaticProvider("vast", [offer(f"a{i}") for i in range(200)]))
    [result] = run(db_url, StaticProvider("vast", [offer("only")]))
    assert result.status == "failed" and "1 offers where the current snapshot has 200" in result.reason


def test_snapshot_is_all_or_nothing(db_url, monkeypatch):
    run(db_url, StaticProvider("vast", [offer("old")]))

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "_merge_hourly", explode)
    with pytest.raises(RuntimeError):
        run(db_url, StaticProvider("vast", [offer(f"n{i}") for i in range(5)]))
    with db.session_factory(db_url)() as session:
        assert session.scalar(select(func.count(store.OfferRow.id))) == 1
        assert session.scalar(select(func.count(store.Snapshot.id))) == 1
    assert [o.offer_key for o in book(db_url)] == ["old"]


def test_overlapping_refreshes_do_not_double_write(db_url):
    slow = StaticProvider("vast", [offer("a")])
    slow.release.clear()
    first = threading.Thread(target=run, args=(db_url, slow))
    first.start()
    assert slow.started.wait(10)
    [second] = run(db_url, StaticProvider("vast", [offer("b")]))
    slow.release.set()
    first.join(10)
    assert second.status == "skipped" and "another refresh" in second.reason
    with db.session_factory(db_url)() as session:
        assert session.scalar(select(func.count(store.Snapshot.id))) == 1
    [third] = run(db_url, StaticProvider("vast", [offer("c")]))  # the lease was released
    assert third.status == "ok"


def test_expired_lease_is_taken_over(db_url):
    sessions = db.session_factory(db_url)
    with sessions() as session:
        assert store.acquire_lease(session, "vast", "crashed-host", timedelta(seconds=-1))
        assert store.acquire_lease(session, "vast", "me", timedelta(minutes=5))
        assert not store.acquire_lease(session, "vast", "other", timedelta(minutes=5))


def test_hourly_aggregates_min_and_median(db_url):
    run(db_url, StaticProvider("vast", [offer("a", od=0.5, spot=None), offer("b", od=0.3, spot=0.1),
                                        offer("c", od=0.4, spot=None)]))
    run(db_url, StaticProvider("vast", [offer("a", od=0.6, spot=None), offer("b", od=0.35, spot=None)]))
    with db.session_factory(db_url)() as session:
        rows = store.price_history(session, "RTX4090", store.utcnow() - timedelta(days=1))
    by_kind = {r.spot: r for r in rows}
    assert by_kind[False].min_usd == pytest.approx(0.3)  # the hour's min across both snapshots
    assert by_kind[False].median_usd == pytest.approx(0.475)  # the latest snapshot's median
    assert by_kind[True].min_usd == pytest.approx(0.1)


def test_prune_keeps_current_snapshot(db_url, monkeypatch):
    run(db_url, StaticProvider("vast", [offer("a")]))
    sessions = db.session_factory(db_url)
    with sessions() as session:
        assert store.prune(session, timedelta(seconds=-1)) == 0  # the only snapshot is current
    run(db_url, StaticProvider("vast", [offer("b")]))
    with sessions() as session:
        assert store.prune(session, timedelta(seconds=-1)) == 1
    assert [o.offer_key for o in book(db_url)] == ["b"]


def test_queries_filter_and_sort(db_url):
    run(db_url, StaticProvider("vast", [offer("cheap-spot", od=0.5, spot=0.1), offer("cheap-od", od=0.2, spot=None),
                                        offer("small", "RTX3070", od=0.05, spot=None, vram=8)]))
    with db.session_factory(db_url)() as session:
        q = store.OfferQuery
        assert [o.offer_key for o in store.current_offers(session, q(min_vram_gb=16))] == ["cheap-spot", "cheap-od"]
        assert [o.offer_key for o in store.current_offers(session, q(spot=False, min_vram_gb=16))] == ["cheap-od",
                                                                                                        "cheap-spot"]
        assert [o.offer_key for o in store.current_offers(session, q(spot=True))] == ["cheap-spot"]
        assert [o.offer_key for o in store.current_offers(session, q(gpu="rtx3070"))] == ["small"]
        assert store.current_offers(session, q(provider="runpod")) == []


def test_schema_check_names_the_fix(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(db.SchemaBehind, match="run: planner db upgrade"):
        db.require_current_schema(url)
    db.upgrade(url)
    db.require_current_schema(url)


def test_daily_history_rolls_up_hours(db_url):
    sessions = db.session_factory(db_url)
    day = store.utcnow().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    with sessions() as session:
        for h, (low, median) in enumerate([(0.3, 0.5), (0.2, 0.7), (0.4, 0.6)]):
            session.add(store.PriceHourly(provider="vast", gpu_model="RTX4090", tier="verified", spot=False,
                                          hour=day + timedelta(hours=h), min_usd=low, median_usd=median, offer_count=9))
        session.commit()
        assert store.rebuild_daily(session) == 1  # hourly rows written directly: roll them up
        [row] = store.price_history(session, "RTX4090", day - timedelta(days=1), daily=True)
        hourly = store.price_history(session, "RTX4090", day - timedelta(days=1))
    assert row.hour == day and row.min_usd == pytest.approx(0.2) and row.median_usd == pytest.approx(0.6)
    assert len(hourly) == 3 and hourly[0].hour == day


def test_refreshes_keep_the_daily_rollup_equal_to_a_rebuild(db_url, monkeypatch):
    """write_snapshot folds each snapshot into its hour and its day; a rebuild from the hours agrees."""
    sessions = db.session_factory(db_url)
    start = store.utcnow().replace(hour=22, minute=10, second=0, microsecond=0) - timedelta(days=1)
    with sessions() as session:
        for n, price in enumerate([0.50, 0.40, 0.45, 0.70, 0.30]):  # two in one hour, then hourly, across midnight
            at = start + timedelta(minutes=20 * (n > 0) + 60 * max(0, n - 1))
            offers = [Offer(provider="vast", offer_key=str(i), gpu_model="RTX4090", gpu_name_raw="RTX 4090",
                            vram_gb=24, gpu_count=1, on_demand_usd_per_gpu_hour=price + 0.1 * i,
                            spot_usd_per_gpu_hour=None, tier="verified", location="US", available=True,
                            fetched_at=at) for i in range(3)]
            monkeypatch.setattr(store, "utcnow", lambda at=at: at)  # the snapshot finishes at `at`
            store.write_snapshot(session, "vast", at, offers)
        since = start - timedelta(days=1)
        incremental = store.price_history(session, "RTX4090", since, daily=True)
        store.rebuild_daily(session)
        rebuilt = store.price_history(session, "RTX4090", since, daily=True)
    assert len(incremental) == 2  # the snapshots span midnight
    for ours, theirs in zip(incremental, rebuilt, strict=True):
        assert (ours.hour, ours.min_usd, ours.offer_count) == (theirs.hour, theirs.min_usd, theirs.offer_count)
        assert ours.median_usd == pytest.approx(theirs.median_usd)
    # day one: the 22:00 hour's median is its latest snapshot's (0.5), then 23:00 (0.55); min over both hours
    assert incremental[0].min_usd == pytest.approx(0.40) and incremental[0].median_usd == pytest.approx(0.525)
