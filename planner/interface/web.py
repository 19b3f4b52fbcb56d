"""HTTP API and dashboard of `planner serve` (FastAPI; OpenAPI docs at /docs).

Binds to 127.0.0.1 by default. Serving beyond localhost requires PLANNER_API_TOKEN, and then every
data endpoint wants `Authorization: Bearer <token>` (the dashboard takes it from its URL fragment,
`/#token=...`, which browsers never send to the server or put in logs).
"""
from __future__ import annotations

import hmac
from datetime import timedelta
from importlib import resources
from typing import Optional

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from planner.config import Settings
from planner.interface import views
from planner.run import pricebook
from pricing import store

OPEN_PATHS = {"/", "/health", "/docs", "/openapi.json", "/docs/oauth2-redirect"}
# The dashboard's own files (vendored uPlot, MIT: data/uPlot.LICENSE), served from the package: no CDN.
STATIC = {"uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css", "uPlot.LICENSE": "text/plain"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def check_bind(host: str, settings: Settings) -> None:
    if host not in LOOPBACK and settings.api_token is None:
        raise ValueError(f"serving on {host} needs a token; set PLANNER_API_TOKEN or bind to 127.0.0.1")


def create_app(settings: Settings, backends: dict | None = None) -> FastAPI:
    """The API over `settings`' database; `backends` (default: launching.build_backends) serve the
    jobs' logs and cancel."""
    app = FastAPI(title="planner", description="GPU prices, plans and jobs", version="1")
    sessions = pricebook.sessions_for(settings)
    built: dict = {}

    def job_backends() -> dict:
        if not built:
            from planner.run.launching import build_backends

            built.update(backends or build_backends(settings))
        return built

    def authorize(request: Request) -> None:
        if settings.api_token is None or request.url.path in OPEN_PATHS or request.url.path.startswith("/static/"):
            return
        expected = f"Bearer {settings.api_token.get_secret_value()}"
        if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
            raise HTTPException(401, "missing or wrong bearer token")

    app.router.dependencies.append(Depends(authorize))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> str:
        return resources.files("planner.interface").joinpath("data", "dashboard.html").read_text()

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        data = resources.files("planner.interface").joinpath("data", name).read_bytes()
        return Response(data, media_type=STATIC[name], headers={"Cache-Control": "max-age=86400"})

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.get("/prices")
    def prices(min_vram: Optional[float] = None, gpu: Optional[str] = None, provider: Optional[str] = None,
               spot: Optional[bool] = None, limit: int = Query(50, ge=1, le=5000),
               gpus: Optional[int] = Query(None, ge=1, description="exactly this many GPUs per instance"),
               min_reliability: Optional[float] = Query(None, ge=0, le=1),
               region: Optional[str] = Query(None, description="the location contains this"),
               max_price: Optional[float] = Query(None, ge=0, description="USD per GPU-hour, on the price shown"),
               sort: str = Query("price", pattern="^(price|vram|reliability)$")) -> dict:
        """Current offers, filtered like `planner prices show`."""
        query = store.OfferQuery(min_vram_gb=min_vram, gpu=views.canonical_gpu(gpu), provider=provider,
                                 spot=spot, limit=limit, gpu_count=gpus, min_reliability=min_reliability,
                                 region=region, max_usd_per_gpu_hour=max_price, sort=sort)
        with sessions() as session:
            offers = store.current_offers(session, query)
        return {"stale_providers": pricebook.stale_providers(settings, sessions),
                "offers": [o.as_dict() | {"price_usd_per_gpu_hour": store.price_of(o, spot)} for o in offers]}

    @app.get("/prices/history")
    def history(gpu: str, days: int = Query(7, ge=1, le=3660)) -> dict:
        model = views.canonical_gpu(gpu)
        daily = days > views.DAILY_AFTER_DAYS
        with sessions() as session:
            rows = store.price_history(session, model, store.utcnow() - timedelta(days=days), daily=daily)
        return {"gpu": model, "bucket": "day" if daily else "hour", "rows": views.history_rows(rows)}

    @app.get("/jobs")
    def jobs(limit: int = Query(100, ge=1, le=1000)) -> dict:
        """Jobs newest first, with attempts and dollars, and the monthly budget."""
        from sqlalchemy import select

        from planner.plan import budget
        from planner.records import Job

        with sessions() as session:
            rows = [views.job_summary(session, job) for job in
                    session.scalars(select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit))]
            groups = views.campaign_groups(session, rows)
            cap, committed = budget.monthly_budget(session), budget.committed(session)
        text = (f"monthly budget ${cap:.2f}: ${committed:.2f} committed, ${cap - committed:.2f} left" if cap is not None
                else f"no monthly budget; ${committed:.2f} committed this month")
        return {"jobs": rows, "campaigns": groups, "budget": text, "monthly_usd": cap, "committed_usd": committed}

    @app.get("/jobs/{ident}")
    def job(ident: str) -> dict:
        """A job, or every job of a campaign, with attempts and dollars."""
        with sessions() as session:
            data = views.jobs_view(session, ident)
        if data is None:
            raise HTTPException(404, f"no job or campaign {ident}")
        return data

    @app.get("/jobs/{job_id}/logs")
    def job_logs(job_id: str, tail: int = Query(50, ge=1, le=5000)) -> dict:
        """The last lines of the log of a job's latest attempt."""
        from planner.run.launching import attempts_of
        from planner.run.backends.base import Handle

        with sessions() as session:
            attempts = attempts_of(session, job_id)
        if not attempts:
            return {"job": job_id, "attempt": None, "lines": []}
        backend = job_backends().get(attempts[-1].backend)
        if backend is None:
            raise HTTPException(501, f"the {attempts[-1].backend} backend is not available here")
        try:
            text = backend.logs(Handle.from_attempt(attempts[-1]), tail=tail)
        except Exception as exc:  # provider weather: the page shows why, the next refresh tries again
            raise HTTPException(502, f"cannot read the log: {type(exc).__name__}")
        return {"job": job_id, "attempt": attempts[-1].number, "lines": text.splitlines()}

    @app.post("/jobs/{ident}/cancel")
    def cancel(ident: str, request: Request) -> dict:
        """Cancel a job or every open job of a campaign (what `planner jobs cancel` does). Beyond
        localhost it needs the API token; a page of another origin cannot post it."""
        client = request.client.host if request.client else ""
        if settings.api_token is None and client not in LOOPBACK:
            raise HTTPException(403, "cancelling from another host needs PLANNER_API_TOKEN")
        origin = request.headers.get("Origin")
        if origin and origin.split("://", 1)[-1] != request.headers.get("Host", ""):
            raise HTTPException(403, "cross-origin request refused")
        from planner.run.launching import cancel_jobs

        cancelled = cancel_jobs(settings, sessions, ident, job_backends())
        if cancelled is None:
            raise HTTPException(404, f"no job or campaign {ident}")
        return {"cancelled": cancelled}

    @app.post("/plan")
    def plan(request: PlanRequest) -> dict:
        """The ranked offers for a job (kind and its parameters, as the job's flags with underscores)."""
        from jobs.spec import JobSpec, SpecError
        from planner.plan.choose import Limits
        from planner.plan.estimate import EstimateError
        from planner.plan.plans import book_offers, choice_summary, image_limits, plan_job

        try:
            spec = JobSpec("plan", request.kind, "plan-only", request.params)
            limits = Limits(spot=request.spot, max_usd_per_hour=request.max_price_per_hour,
                            budget_left_usd=request.budget_usd, max_price_age=settings.max_price_age,
                            allow_stale=request.allow_stale, **image_limits(settings))
            with sessions() as session:
                choice = plan_job(session, spec, limits, book_offers(session), store.utcnow())
        except (SpecError, EstimateError, KeyError) as exc:
            raise HTTPException(422, f"cannot plan this job: {exc}")
        return choice_summary(spec, request.kind, choice, request.top)

    return app


class PlanRequest(BaseModel):
    kind: str = Field(description="train-bag | merge | encode | evaluate")
    params: dict = Field(description="the job's parameters, e.g. {model, data, fraction, method}")
    spot: str = Field("any", pattern="^(any|spot|on-demand)$")
    max_price_per_hour: Optional[float] = Field(None, gt=0)
    budget_usd: Optional[float] = Field(None, gt=0)
    allow_stale: bool = False
    top: int = Field(5, ge=1, le=100)
