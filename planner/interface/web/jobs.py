"""GET /jobs, /jobs/{id}, /jobs/{id}/logs and POST /jobs/{id}/cancel: what `planner jobs` shows and does."""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from sqlalchemy import select

from planner.interface import views
from planner.interface.web.common import LOOPBACK, Context, same_origin
from planner.plan import budget
from planner.records import Job
from planner.run.launching import attempts_of, cancel_jobs

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("")
def jobs(ctx: Context, limit: int = Query(100, ge=1, le=1000)) -> dict:
    """Jobs newest first, with attempts and dollars, and the monthly budget."""
    with ctx.sessions() as session:
        rows = [views.job_summary(session, job) for job in
                session.scalars(select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit))]
        groups = views.campaign_groups(session, rows)
        cap, committed = budget.monthly_budget(session), budget.committed(session)
    text = (f"monthly budget ${cap:.2f}: ${committed:.2f} committed, ${cap - committed:.2f} left" if cap is not None
            else f"no monthly budget; ${committed:.2f} committed this month")
    return {"jobs": rows, "campaigns": groups, "budget": text, "monthly_usd": cap, "committed_usd": committed}


@router.get("/{ident}")
def job(ctx: Context, ident: str) -> dict:
    """A job, or every job of a campaign, with attempts and dollars."""
    with ctx.sessions() as session:
        data = views.jobs_view(session, ident)
    if data is None:
        raise HTTPException(404, f"no job or campaign {ident}")
    return data


@router.get("/{job_id}/logs")
def job_logs(ctx: Context, job_id: str, tail: int = Query(50, ge=1, le=5000)) -> dict:
    """The last lines of the log of a job's latest attempt (read from the end: a long log costs no more)."""
    from planner.run.backends.base import Handle

    with ctx.sessions() as session:
        attempts = attempts_of(session, job_id)
    if not attempts:
        return {"job": job_id, "attempt": None, "lines": []}
    backend = ctx.backends().get(attempts[-1].backend)
    if backend is None:
        raise HTTPException(501, f"the {attempts[-1].backend} backend is not available here")
    try:
        text = backend.logs(Handle.from_attempt(attempts[-1]), tail=tail)
    except Exception as exc:  # provider weather: the page shows why, the next refresh tries again
        raise HTTPException(502, f"cannot read the log: {type(exc).__name__}") from None
    return {"job": job_id, "attempt": attempts[-1].number, "lines": text.splitlines()}


@router.post("/{ident}/cancel", dependencies=[Depends(same_origin)])
def cancel(ctx: Context, ident: str, request: Request) -> dict:
    """Cancel a job or every open job of a campaign (what `planner jobs cancel` does). Beyond
    localhost it needs the API token; a page of another origin cannot post it."""
    client = request.client.host if request.client else ""
    if ctx.settings.api_token is None and client not in LOOPBACK:
        raise HTTPException(403, "cancelling from another host needs PLANNER_API_TOKEN")
    cancelled = cancel_jobs(ctx.settings, ctx.sessions, ident, ctx.backends())
    if cancelled is None:
        raise HTTPException(404, f"no job or campaign {ident}")
    return {"cancelled": list(cancelled), "not_ended": cancelled.not_ended}
