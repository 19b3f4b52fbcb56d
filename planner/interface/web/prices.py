"""GET /prices and /prices/history: the price book, filtered like `planner prices show` and `history`."""
from __future__ import annotations

from datetime import timedelta
from typing import Optional

from fastapi import APIRouter, Query

from planner.interface import views
from planner.interface.web.common import Context
from planner.run import pricebook
from pricing import store

router = APIRouter(prefix="/prices", tags=["prices"])


@router.get("")
def prices(ctx: Context, min_vram: Optional[float] = Query(None, ge=0, allow_inf_nan=False),
           gpu: Optional[str] = Query(None, max_length=100), provider: Optional[str] = Query(None, max_length=40),
           spot: Optional[bool] = None, limit: int = Query(50, ge=1, le=5000),
           gpus: Optional[int] = Query(None, ge=1, description="exactly this many GPUs per instance"),
           min_reliability: Optional[float] = Query(None, ge=0, le=1, allow_inf_nan=False),
           region: Optional[str] = Query(None, max_length=100, description="the location contains this"),
           max_price: Optional[float] = Query(None, ge=0, allow_inf_nan=False,
                                              description="USD per GPU-hour, on the price shown"),
           sort: str = Query("price", pattern="^(price|vram|reliability)$")) -> dict:
    """Current offers, filtered like `planner prices show`."""
    query = store.OfferQuery(min_vram_gb=min_vram, gpu=views.canonical_gpu(gpu), provider=provider,
                             spot=spot, limit=limit, gpu_count=gpus, min_reliability=min_reliability,
                             region=region, max_usd_per_gpu_hour=max_price, sort=sort)
    with ctx.sessions() as session:
        offers = store.current_offers(session, query)
    return {"stale_providers": pricebook.stale_providers(ctx.settings, ctx.sessions),
            "offers": [o.as_dict() | {"price_usd_per_gpu_hour": store.price_of(o, spot)} for o in offers]}


@router.get("/history")
def history(ctx: Context, gpu: str = Query(max_length=100), days: int = Query(7, ge=1, le=3660)) -> dict:
    model = views.canonical_gpu(gpu)
    daily = days > views.DAILY_AFTER_DAYS
    with ctx.sessions() as session:
        rows = store.price_history(session, model, store.utcnow() - timedelta(days=days), daily=daily)
    return {"gpu": model, "bucket": "day" if daily else "hour", "rows": views.history_rows(rows)}
