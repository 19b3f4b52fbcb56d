"""The views the CLI and the HTTP API both render: one definition each, so `--json` and the API agree."""
from __future__ import annotations

from sqlalchemy.orm import Session

from planner.records import Attempt, Job
from planner.run.launching import attempts_of, find_jobs
from pricing import gpus

DAILY_AFTER_DAYS = 14  # longer price histories are shown per day (the daily roll-up table)


def canonical_gpu(name: str | None) -> str | None:
    """A user's GPU name ('RTX 4090', 'h100 sxm') as the canonical model, or the name as given."""
    if name is None:
        return None
    spec = gpus.resolve(name)
    return spec.model if spec else name


def history_rows(rows) -> list[dict]:
    return [{"hour": r.hour.isoformat(), "provider": r.provider, "tier": r.tier, "spot": r.spot,
             "min_usd": r.min_usd, "median_usd": r.median_usd, "offers": r.offer_count} for r in rows]


def job_summary(session: Session, job: Job) -> dict:
    attempts = attempts_of(session, job.id)
    return {"id": job.id, "name": job.name, "kind": job.kind, "state": job.state, "campaign": job.campaign_id,
            "depends_on": job.dependencies, "attempts": len(attempts), "dollars": round(sum(a.dollars for a in attempts), 4),
            "created_at": job.created_at.isoformat(), "finished_at": job.finished_at and job.finished_at.isoformat(),
            "error": job.error,
            "where": f"{attempts[-1].provider} {attempts[-1].gpu_model or ''}".strip() if attempts else ""}


def attempt_summary(a: Attempt) -> dict:
    return {"number": a.number, "backend": a.backend, "provider": a.provider, "gpu": a.gpu_model, "spot": a.spot,
            "usd_per_hour": a.usd_per_hour, "outcome": a.outcome, "exit_code": a.exit_code,
            "launched_at": a.launched_at.isoformat(), "ended_at": a.ended_at and a.ended_at.isoformat(),
            "dollars": round(a.dollars, 6), "detail": a.detail}


def job_detail(session: Session, job: Job) -> dict:
    """A job with each of its attempts."""
    return job_summary(session, job) | {"attempts": [attempt_summary(a) for a in attempts_of(session, job.id)]}


def jobs_view(session: Session, ident: str) -> dict | None:
    """A job, or every job of a campaign, with attempts, dollars and budget (None: no such job or campaign)."""
    campaign, jobs = find_jobs(session, ident)
    if not jobs:
        return None
    details = [job_detail(session, job) for job in jobs]
    return {"campaign": campaign.id if campaign else None,
            "budget_usd": campaign.budget_usd if campaign else jobs[0].budget_usd,
            "jobs": details, "dollars": round(sum(a["dollars"] for j in details for a in j["attempts"]), 4)}
