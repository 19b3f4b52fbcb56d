"""The views the CLI and the HTTP API both render: one definition each, so `--json` and the API agree."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy.orm import Session

from jobs.protocol import duration, parse_progress
from planner.plan.billing import attempt_cost
from planner.records import FINAL_STATES, LIVE_ATTEMPT, Attempt, Campaign, Job
from planner.run import progress as progress_file
from planner.run.launching import attempts_of, find_jobs
from pricing import gpus
from pricing.db import utcnow

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


def job_progress(job: Job, attempts: list[Attempt], *, fresh: bool = True) -> dict | None:
    """Where the job's latest attempt is, from the runner's progress file: re-read now for a live
    attempt when `fresh` (the supervisor's copy is as old as its last poll), else its stored copy."""
    if not attempts:
        return None
    latest = attempts[-1]
    raw = progress_file.read(job.spec) if fresh and latest.outcome in LIVE_ATTEMPT else None
    parsed = progress_file.parse(raw or parse_progress(latest.progress))
    if parsed is None:
        return None
    if job.state == "succeeded" and parsed.total:  # the last file predates the last step
        parsed = replace(parsed, done=parsed.total, eta_s=0.0)
    elif job.state in FINAL_STATES:  # stopped short: no time left to estimate
        parsed = replace(parsed, eta_s=None)
    eta = None if parsed.eta_s is None else duration(parsed.eta_s)  # as the job's log and the CLI write it
    return parsed.as_dict() | {"text": progress_file.describe(parsed), "eta": eta}


def spent_so_far(attempts: list[Attempt], now: datetime | None = None) -> float:
    """Settled dollars plus what a live attempt has cost up to now."""
    now = now or utcnow()
    return sum(attempt_cost(a, now) if a.outcome in LIVE_ATTEMPT else a.dollars for a in attempts)


def budget_of(session: Session, job: Job) -> tuple[float | None, str]:
    """The budget the job spends against: its own, or its campaign's (shared by all its jobs)."""
    if job.budget_usd is not None:
        return job.budget_usd, "job"
    campaign = session.get(Campaign, job.campaign_id) if job.campaign_id else None
    if campaign is not None and campaign.budget_usd is not None:
        return campaign.budget_usd, "campaign"
    return None, ""


def job_summary(session: Session, job: Job, *, fresh: bool = True) -> dict:
    attempts = attempts_of(session, job.id)
    budget_usd, scope = budget_of(session, job)
    return {"id": job.id, "name": job.name, "kind": job.kind, "state": job.state, "campaign": job.campaign_id,
            "depends_on": job.dependencies, "attempts": len(attempts), "dollars": round(sum(a.dollars for a in attempts), 4),
            "spent_usd": round(spent_so_far(attempts), 4), "budget_usd": budget_usd, "budget_scope": scope,
            "progress": job_progress(job, attempts, fresh=fresh and job.state not in FINAL_STATES),
            "created_at": job.created_at.isoformat(), "finished_at": job.finished_at and job.finished_at.isoformat(),
            "error": job.error, "cancel_requested": bool(job.cancel_requested),
            "where": f"{attempts[-1].provider} {attempts[-1].gpu_model or ''}".strip() if attempts else ""}


def progress_line(job: dict) -> str:
    """A job summary's progress and spend in one line, for plain (piped) output."""
    parts = [job["progress"]["text"]] if job.get("progress") and job["progress"]["text"] else []
    spend = f"${job['spent_usd']:.2f}"
    if job.get("budget_usd"):
        spend += f" of ${job['budget_usd']:.2f}" + (" (campaign)" if job.get("budget_scope") == "campaign" else "")
    return " · ".join(parts + [spend])


def attempt_summary(a: Attempt) -> dict:
    return {"number": a.number, "backend": a.backend, "provider": a.provider, "gpu": a.gpu_model, "spot": a.spot,
            "usd_per_hour": a.usd_per_hour, "billed_usd_per_hour": a.billed_usd_per_hour,
            "outcome": a.outcome, "exit_code": a.exit_code,
            "launched_at": a.launched_at.isoformat(), "ended_at": a.ended_at and a.ended_at.isoformat(),
            "dollars": round(a.dollars, 6), "detail": a.detail,
            "memory": {"mini_batch_size": a.mini_batch_size, "planned_vram_gb": a.planned_vram_gb,
                       "planned_ram_gb": a.planned_ram_gb, "host_ram_gb": a.ram_gb,
                       "peak_vram_allocated_gb": a.peak_vram_allocated_gb,
                       "peak_vram_reserved_gb": a.peak_vram_reserved_gb, "peak_rss_gb": a.peak_rss_gb}}


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
            "budget_usd": campaign.budget_usd if campaign else budget_of(session, jobs[0])[0],
            "jobs": details, "dollars": round(sum(a["dollars"] for j in details for a in j["attempts"]), 4),
            "spent_usd": round(sum(j["spent_usd"] for j in details), 4)}


def campaign_groups(session: Session, jobs: list[dict]) -> list[dict]:
    """The campaigns of these job summaries, newest first: kind, budget, spend so far of all their jobs,
    their job ids in order, and how many are done."""
    ids = list(dict.fromkeys(j["campaign"] for j in jobs if j["campaign"]))
    groups = []
    for campaign_id in ids:
        campaign = session.get(Campaign, campaign_id)
        if campaign is None:
            continue
        _, members = find_jobs(session, campaign_id)
        spent = sum(spent_so_far(attempts_of(session, job.id)) for job in members)
        groups.append({"id": campaign.id, "kind": campaign.kind, "budget_usd": campaign.budget_usd,
                       "spent_usd": round(spent, 4), "created_at": campaign.created_at.isoformat(),
                       "jobs": [job.id for job in members],
                       "finished": sum(job.state in FINAL_STATES for job in members)})
    return groups
