"""Price-book tables and the queries on them.

snapshots      one row per provider fetch, ok or failed (with its reason)
offers         the full normalized rows of ok snapshots, kept for a retention window
price_hourly   min / median price per (provider, GPU model, tier, spot) and hour, kept for ever
refresh_leases one row per provider: who is refreshing it until when (overlap guard)

The current book of a provider is its newest ok snapshot; a failed fetch never replaces it.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import (
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from pricing.db import Base, UTCDateTime, database_now, utcnow
from pricing.offer import Offer


class Snapshot(Base):
    __tablename__ = "snapshots"
    __table_args__ = (Index("ix_snapshots_provider_status_id", "provider", "status", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))  # "ok" | "failed"
    offer_count: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class OfferRow(Base):
    __tablename__ = "offers"
    __table_args__ = (Index("ix_offers_snapshot_price", "snapshot_id", "gpu_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("snapshots.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(32))
    offer_key: Mapped[str] = mapped_column(String(200))
    gpu_model: Mapped[str] = mapped_column(String(100))
    gpu_name_raw: Mapped[str] = mapped_column(String(200))
    known_gpu: Mapped[bool] = mapped_column(Boolean)
    vram_gb: Mapped[float] = mapped_column(Float)
    gpu_count: Mapped[int] = mapped_column(Integer)
    on_demand_usd_per_gpu_hour: Mapped[float | None] = mapped_column(Float, nullable=True)
    spot_usd_per_gpu_hour: Mapped[float | None] = mapped_column(Float, nullable=True)
    tier: Mapped[str] = mapped_column(String(32))
    location: Mapped[str | None] = mapped_column(String(200), nullable=True)
    available: Mapped[bool] = mapped_column(Boolean)
    reliability: Mapped[float | None] = mapped_column(Float, nullable=True)
    vcpus: Mapped[float | None] = mapped_column(Float, nullable=True)
    ram_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    stock: Mapped[str | None] = mapped_column(String(32), nullable=True)
    download_usd_per_gb: Mapped[float | None] = mapped_column(Float, nullable=True)  # migration 0010
    upload_usd_per_gb: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_usd_per_gb_month: Mapped[float | None] = mapped_column(Float, nullable=True)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime)

    def to_offer(self) -> Offer:
        return Offer(**{field: getattr(self, field) for field in Offer.__dataclass_fields__ if hasattr(self, field)})


class PriceHourly(Base):
    __tablename__ = "price_hourly"
    __table_args__ = (Index("ix_price_hourly_gpu_hour", "gpu_model", "hour"),)

    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    gpu_model: Mapped[str] = mapped_column(String(100), primary_key=True)
    tier: Mapped[str] = mapped_column(String(32), primary_key=True)
    spot: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    min_usd: Mapped[float] = mapped_column(Float)
    median_usd: Mapped[float] = mapped_column(Float)
    offer_count: Mapped[int] = mapped_column(Integer)


class PriceDaily(Base):
    """price_hourly rolled up per UTC day, kept in step by _merge_hourly, so a year of history is 365
    rows per series to read instead of 8,760 to group. The day's median is median_sum / hours: the
    mean of its hourly medians (a median of medians is not computable in portable SQL)."""

    __tablename__ = "price_daily"
    __table_args__ = (Index("ix_price_daily_gpu_day", "gpu_model", "day"),)

    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    gpu_model: Mapped[str] = mapped_column(String(100), primary_key=True)
    tier: Mapped[str] = mapped_column(String(32), primary_key=True)
    spot: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    day: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    min_usd: Mapped[float] = mapped_column(Float)
    median_sum: Mapped[float] = mapped_column(Float)
    hours: Mapped[int] = mapped_column(Integer)
    offer_count: Mapped[int] = mapped_column(Integer)  # the day's largest hourly count


class RefreshLease(Base):
    __tablename__ = "refresh_leases"

    provider: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(100), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


# ---------------------------------------------------------------- writes

def acquire_lease(session: Session, provider: str, holder: str, ttl: timedelta,
                  dead: Callable[[str], bool] = lambda holder: False) -> bool:
    """Take the provider's refresh lease unless another holder has an unexpired one (atomic UPDATE), on the
    database's clock. A holder `dead` says has died (a process of this host that is gone) holds nothing."""
    now = database_now(session)
    try:
        with session.begin_nested():
            session.execute(insert(RefreshLease).values(provider=provider, holder=None, expires_at=None))
    except IntegrityError:
        pass  # the row exists already
    current = session.scalar(select(RefreshLease.holder).where(RefreshLease.provider == provider))
    free = (RefreshLease.holder.is_(None)) | (RefreshLease.expires_at < now) | (RefreshLease.holder == holder)
    if current is not None and current != holder and dead(current):
        free = free | (RefreshLease.holder == current)  # compared in the UPDATE: a live taker in between wins
    taken = session.execute(
        update(RefreshLease).where(RefreshLease.provider == provider).where(free)
        .values(holder=holder, expires_at=now + ttl)
    ).rowcount
    session.commit()
    return taken == 1


def renew_lease(session: Session, provider: str, holder: str, ttl: timedelta) -> None:
    session.execute(update(RefreshLease).where(RefreshLease.provider == provider, RefreshLease.holder == holder)
                    .values(expires_at=database_now(session) + ttl))
    session.commit()


def release_lease(session: Session, provider: str, holder: str) -> None:
    session.execute(
        update(RefreshLease).where(RefreshLease.provider == provider, RefreshLease.holder == holder)
        .values(holder=None, expires_at=None)
    )
    session.commit()


def record_failure(session: Session, provider: str, started_at: datetime, reason: str) -> Snapshot:
    snapshot = Snapshot(provider=provider, started_at=started_at, finished_at=utcnow(), status="failed",
                        offer_count=0, reason=reason[:2000])
    session.add(snapshot)
    session.commit()
    return snapshot


def write_snapshot(session: Session, provider: str, started_at: datetime, offers: list[Offer]) -> Snapshot:
    """One transaction: the snapshot, all its offer rows, and the hourly aggregates; or nothing."""
    finished = utcnow()
    try:
        snapshot = Snapshot(provider=provider, started_at=started_at, finished_at=finished, status="ok",
                            offer_count=len(offers))
        session.add(snapshot)
        session.flush()
        if offers:
            rows = [{**_offer_columns(offer), "snapshot_id": snapshot.id} for offer in offers]
            session.execute(OfferRow.__table__.insert(), rows)  # Core executemany: no ORM bookkeeping
        _merge_hourly(session, provider, finished, offers)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return snapshot


def _offer_columns(offer: Offer) -> dict:
    return {field: getattr(offer, field) for field in Offer.__dataclass_fields__}


def _merge_hourly(session: Session, provider: str, at: datetime, offers: list[Offer]) -> None:
    """Fold this snapshot into its hour: the min is the hour's min so far, the median the latest."""
    hour = at.replace(minute=0, second=0, microsecond=0)
    prices: dict[tuple[str, str, bool], list[float]] = defaultdict(list)
    for offer in offers:
        if offer.on_demand_usd_per_gpu_hour is not None:
            prices[(offer.gpu_model, offer.tier, False)].append(offer.on_demand_usd_per_gpu_hour)
        if offer.spot_usd_per_gpu_hour is not None:
            prices[(offer.gpu_model, offer.tier, True)].append(offer.spot_usd_per_gpu_hour)
    existing = {
        (row.gpu_model, row.tier, row.spot): row
        for row in session.scalars(select(PriceHourly).where(PriceHourly.provider == provider,
                                                             PriceHourly.hour == hour))
    }
    day = hour.replace(hour=0)
    days = {(row.gpu_model, row.tier, row.spot): row
            for row in session.scalars(select(PriceDaily).where(PriceDaily.provider == provider, PriceDaily.day == day))}
    for (gpu_model, tier, spot), values in prices.items():
        row = existing.get((gpu_model, tier, spot))
        low, median = min(values), statistics.median(values)
        daily = days.get((gpu_model, tier, spot))
        if daily is None:
            daily = PriceDaily(provider=provider, gpu_model=gpu_model, tier=tier, spot=spot, day=day, min_usd=low,
                               median_sum=0.0, hours=0, offer_count=0)
            session.add(daily)
        daily.min_usd = min(daily.min_usd, low)
        daily.offer_count = max(daily.offer_count, len(values))
        if row is None:
            session.add(PriceHourly(provider=provider, gpu_model=gpu_model, tier=tier, spot=spot, hour=hour,
                                    min_usd=low, median_usd=median, offer_count=len(values)))
            daily.median_sum, daily.hours = daily.median_sum + median, daily.hours + 1
        else:
            daily.median_sum += median - row.median_usd  # the hour's median is replaced by the latest
            row.min_usd, row.median_usd, row.offer_count = min(row.min_usd, low), median, len(values)


def rebuild_daily(session: Session) -> int:
    """Recompute price_daily from price_hourly (after hourly rows were written by other means)."""
    keys = (PriceHourly.provider, PriceHourly.gpu_model, PriceHourly.tier, PriceHourly.spot)
    day = func.date(PriceHourly.hour).label("day")
    rows = session.execute(select(*keys, day, func.min(PriceHourly.min_usd), func.sum(PriceHourly.median_usd),
                                  func.count(), func.max(PriceHourly.offer_count)).group_by(*keys, day)).all()
    session.execute(delete(PriceDaily))
    session.execute(insert(PriceDaily), [
        dict(provider=p, gpu_model=g, tier=t, spot=s, day=_as_day(d), min_usd=low, median_sum=total, hours=n,
             offer_count=count) for p, g, t, s, d, low, total, n, count in rows])
    session.commit()
    return len(rows)


def prune(session: Session, retention: timedelta) -> int:
    """Delete offer rows older than the retention window, except each provider's current snapshot."""
    keep = [sid for sid in current_snapshot_ids(session).values()]
    old = select(Snapshot.id).where(Snapshot.finished_at < utcnow() - retention)
    if keep:
        old = old.where(Snapshot.id.not_in(keep))
    deleted = session.execute(delete(OfferRow).where(OfferRow.snapshot_id.in_(old))).rowcount
    session.commit()
    return deleted or 0


# ---------------------------------------------------------------- reads

def current_snapshot_ids(session: Session, as_of: datetime | None = None) -> dict[str, int]:
    """Each provider's newest good snapshot (finished by `as_of`: the book as it was then)."""
    stmt = select(Snapshot.provider, func.max(Snapshot.id)).where(Snapshot.status == "ok")
    if as_of is not None:
        stmt = stmt.where(Snapshot.finished_at <= as_of)
    return {provider: sid for provider, sid in session.execute(stmt.group_by(Snapshot.provider))}


def latest_snapshots(session: Session) -> dict[str, dict[str, Snapshot | None]]:
    """Per provider: its current (newest ok) snapshot and its newest attempt, ok or failed."""
    result: dict[str, dict[str, Snapshot | None]] = {}
    newest = dict(session.execute(select(Snapshot.provider, func.max(Snapshot.id)).group_by(Snapshot.provider)).all())
    current = current_snapshot_ids(session)
    wanted = set(newest.values()) | set(current.values())
    by_id = {s.id: s for s in session.scalars(select(Snapshot).where(Snapshot.id.in_(wanted)))} if wanted else {}
    for provider, newest_id in newest.items():
        result[provider] = {"current": by_id.get(current.get(provider, -1)), "latest": by_id[newest_id]}
    return result


@dataclass(frozen=True)
class OfferQuery:
    min_vram_gb: float | None = None
    gpu: str | None = None  # canonical model or raw name, case-insensitive
    provider: str | None = None
    spot: bool | None = None  # True: only offers with a spot price; False: only on-demand
    available_only: bool = False
    limit: int | None = 50
    gpu_count: int | None = None  # exactly this many GPUs per instance
    min_reliability: float | None = None  # 0..1; offers without a reliability figure are left out
    region: str | None = None  # a substring of the location, case-insensitive ("US", "Texas", "EU-RO")
    max_usd_per_gpu_hour: float | None = None  # on the price the query sorts on (spot, on-demand or cheaper)
    sort: str = "price"  # price (cheapest first) | vram (most first) | reliability (most first)
    as_of: datetime | None = None  # the book as it was then (its offers are kept PLANNER_RETENTION_DAYS)

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise ValueError(f"unknown sort {self.sort!r}; use one of: {', '.join(SORTS)}")


SORTS = ("price", "vram", "reliability")


def price_of(offer: Offer | OfferRow, spot: bool | None) -> float | None:
    """The per-GPU-hour price a query sorts on: spot, on-demand, or the cheaper of both."""
    if spot is True:
        return offer.spot_usd_per_gpu_hour
    if spot is False:
        return offer.on_demand_usd_per_gpu_hour
    candidates = [p for p in (offer.on_demand_usd_per_gpu_hour, offer.spot_usd_per_gpu_hour) if p is not None]
    return min(candidates) if candidates else None


def current_offers(session: Session, query: OfferQuery = OfferQuery(limit=None)) -> list[Offer]:
    """Offers of each provider's current snapshot matching `query`, in `query.sort` order (by default the
    cheapest per GPU-hour first; ties by price)."""
    snapshot_ids = list(current_snapshot_ids(session, query.as_of).values())
    if not snapshot_ids:
        return []
    stmt = select(OfferRow).where(OfferRow.snapshot_id.in_(snapshot_ids))
    if query.min_vram_gb is not None:
        stmt = stmt.where(OfferRow.vram_gb >= query.min_vram_gb)
    if query.gpu:
        name = query.gpu.lower()
        stmt = stmt.where((func.lower(OfferRow.gpu_model) == name) | (func.lower(OfferRow.gpu_name_raw) == name))
    if query.provider:
        stmt = stmt.where(OfferRow.provider == query.provider)
    if query.available_only:
        stmt = stmt.where(OfferRow.available.is_(True))
    if query.gpu_count is not None:
        stmt = stmt.where(OfferRow.gpu_count == query.gpu_count)
    if query.min_reliability is not None:
        stmt = stmt.where(OfferRow.reliability >= query.min_reliability)
    if query.region:
        stmt = stmt.where(func.lower(OfferRow.location).contains(query.region.lower(), autoescape=True))
    if query.spot is True:
        stmt = stmt.where(OfferRow.spot_usd_per_gpu_hour.is_not(None))
        price = OfferRow.spot_usd_per_gpu_hour
    elif query.spot is False:
        stmt = stmt.where(OfferRow.on_demand_usd_per_gpu_hour.is_not(None))
        price = OfferRow.on_demand_usd_per_gpu_hour
    else:
        price = _cheaper_sql()
    if query.max_usd_per_gpu_hour is not None:
        stmt = stmt.where(price <= query.max_usd_per_gpu_hour)
    first = {"price": (), "vram": (OfferRow.vram_gb.desc(),),
             "reliability": (OfferRow.reliability.is_(None), OfferRow.reliability.desc())}[query.sort]
    stmt = stmt.order_by(*first, price, OfferRow.provider, OfferRow.offer_key)
    if query.limit:
        stmt = stmt.limit(query.limit)
    return [row.to_offer() for row in session.scalars(stmt)]


def _cheaper_sql():
    """SQL for price_of(offer, spot=None): the cheaper of the on-demand and spot prices."""
    od, sp = OfferRow.on_demand_usd_per_gpu_hour, OfferRow.spot_usd_per_gpu_hour
    return case((sp.is_(None), od), (od.is_(None), sp), (sp < od, sp), else_=od)


def price_history(session: Session, gpu_model: str, since: datetime, daily: bool = False) -> list:
    """Aggregates of one GPU model since `since`, oldest first, as light rows (attribute access).

    Hourly rows as stored, or with `daily` one row per UTC day: the day's min, and the mean of its
    hourly medians (a median of medians is not computable in portable SQL), so a year stays small.
    """
    if daily:
        stmt = (select(PriceDaily).where(PriceDaily.gpu_model == gpu_model,
                                         PriceDaily.day >= since.replace(hour=0, minute=0, second=0, microsecond=0))
                .order_by(PriceDaily.day, PriceDaily.provider, PriceDaily.tier, PriceDaily.spot))
        return [_DailyRow(r.day, r.provider, r.tier, r.spot, r.min_usd, r.median_sum / r.hours, r.offer_count)
                for r in session.scalars(stmt)]
    keys = [PriceHourly.provider, PriceHourly.tier, PriceHourly.spot]
    where = (PriceHourly.gpu_model == gpu_model, PriceHourly.hour >= since)
    stmt = (select(PriceHourly.hour, *keys, PriceHourly.min_usd, PriceHourly.median_usd, PriceHourly.offer_count)
            .where(*where).order_by(PriceHourly.hour, *keys))
    return list(session.execute(stmt))


@dataclass(frozen=True)
class _DailyRow:
    hour: datetime  # midnight UTC of the day
    provider: str
    tier: str
    spot: bool
    min_usd: float
    median_usd: float
    offer_count: int


def _as_day(value) -> datetime:
    """SQLite's date() gives 'YYYY-MM-DD', PostgreSQL's a date: both to midnight UTC."""
    text_value = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return datetime.fromisoformat(text_value[:10]).replace(tzinfo=timezone.utc)


def offers_in_current_book(session: Session, provider: str) -> int:
    sid = current_snapshot_ids(session).get(provider)
    if sid is None:
        return 0
    return session.scalar(select(Snapshot.offer_count).where(Snapshot.id == sid)) or 0
