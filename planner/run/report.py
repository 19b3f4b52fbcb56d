"""A campaign's report: what it cost against what was planned, what the naive choice would have cost on
the same book, how the models came out, and where the money went over time.

`campaign_report` returns plain data (the JSON of `planner report --json` and of the API); the CLI, the
dashboard and the self-contained HTML file render it (planner.interface.report_page).

- planned: the planner's expected dollars and hours for each job at its (latest) placement (Job.requirements);
- billed: the settled dollars of every attempt (the provider's billed rate when it reported one) and
  their hours; a live attempt counts what it has cost so far;
- interrupted: the dollars of attempts that ended preempted or lost, an upper bound on what
  interruptions cost (their work up to the last checkpoint was kept and resumed);
- ours and naive on the book: each job planned again on the price book as it was when the campaign was
  created (each provider's newest snapshot by then), by the planner (its winner's expected dollars)
  and by the naive rule (planner.plan.naive: the cheapest $/GPU-hour that fits, priced by the same model);
- evaluation: each evaluate job's overall metrics (its output's metrics.json), bags against the merge;
- spend: cumulative billed dollars at every attempt's start and end.
"""
from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs import storage
from jobs.spec import JobSpec
from planner.plan import naive as naive_rule
from planner.plan.billing import attempt_cost
from planner.plan.campaigns import CampaignPlan, NewJob
from planner.plan.choose import Limits
from planner.plan.estimate import EstimateError
from planner.plan.plans import plan_job
from planner.records import FINAL_STATES, LIVE_ATTEMPT, Attempt, Campaign, Job
from pricing import store
from pricing.db import utcnow

METRICS = ("ndcg@10", "recall@10", "mrr@10")
INTERRUPTED = ("preempted", "lost")


class ReportError(LookupError):
    """No such campaign."""


def campaign_report(session: Session, campaign_id: str, *, naive: bool = True, now: datetime | None = None) -> dict:
    """The report of one campaign (see the module's docstring); `naive=False` skips re-planning on the book
    (the campaign's notification uses the rest)."""
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise ReportError(f"no campaign {campaign_id}; `planner jobs list` shows campaigns")
    now = now or utcnow()
    jobs = session.scalars(select(Job).where(Job.campaign_id == campaign_id).order_by(Job.created_at, Job.id)).all()
    attempts = {job.id: session.scalars(select(Attempt).where(Attempt.job_id == job.id)
                                        .order_by(Attempt.number)).all() for job in jobs}
    rows = [_job_row(job, attempts[job.id], now) for job in jobs]
    book = _book_plans(session, campaign, jobs) if naive else None
    if book is not None:
        for row in rows:
            row["book"] = book["jobs"].get(row["id"])
    totals = {key: round(sum(row[key] for row in rows), 6)
              for key in ("planned_usd", "planned_hours", "billed_usd", "hours", "interrupted_usd")}
    totals |= {"jobs": len(rows), "succeeded": sum(row["state"] == "succeeded" for row in rows),
               "finished": sum(row["state"] in FINAL_STATES for row in rows),
               "attempts": sum(len(row["attempts"]) for row in rows),
               "interruptions": sum(a["outcome"] in INTERRUPTED for row in rows for a in row["attempts"])}
    if book is not None:
        for side in ("ours", "naive"):
            priced = [row["book"][side]["expected_usd"] for row in rows if row.get("book") and row["book"].get(side)]
            totals[f"{side}_on_book_usd"] = round(sum(priced), 6) if len(priced) == len(rows) else None
    finished = [job.finished_at for job in jobs if job.finished_at is not None]
    report = {"campaign": {"id": campaign.id, "kind": campaign.kind, "budget_usd": campaign.budget_usd,
                           "created_at": campaign.created_at.isoformat(),
                           "finished_at": max(finished).isoformat() if finished and totals["finished"] == len(rows)
                           else None, "params": json.loads(campaign.params or "{}")},
              "generated_at": now.isoformat(), "totals": totals, "jobs": rows,
              "book": None if book is None else {"as_of": book["as_of"], "offers": book["offers"]},
              "evaluation": evaluation(jobs),
              "spend": spend_over_time([a for job in jobs for a in attempts[job.id]], now)}
    return report | {"headline": headline(report)}


def headline(report: dict) -> str:
    """One line: jobs done, dollars planned vs billed (and naive, when priced), the merge against the bags."""
    t = report["totals"]
    parts = [f"{t['succeeded']}/{t['jobs']} jobs succeeded",
             f"${t['planned_usd']:.2f} planned, ${t['billed_usd']:.2f} billed"
             + (f" (${t['interrupted_usd']:.2f} on {t['interruptions']} interrupted attempt"
                f"{'s' if t['interruptions'] > 1 else ''})" if t["interruptions"] else "")]
    if t.get("naive_on_book_usd") is not None and t.get("ours_on_book_usd") is not None:
        parts.append(f"on its book: planner ${t['ours_on_book_usd']:.2f} vs naive cheapest-per-hour "
                     f"${t['naive_on_book_usd']:.2f}")
    rows = report["evaluation"]["rows"]
    merged = [r for r in rows if r["merged"]]
    bags = [r for r in rows if not r["merged"]]
    if merged and bags:
        best = max(bags, key=lambda r: r["ndcg@10"])
        parts.append(f"nDCG@10 merged {merged[0]['ndcg@10']:.3f} vs best bag {best['ndcg@10']:.3f} ({best['model']})")
    elif rows:
        parts.append("nDCG@10 " + ", ".join(f"{r['model']} {r['ndcg@10']:.3f}" for r in rows))
    return " · ".join(parts)


def _job_row(job: Job, attempts: list[Attempt], now: datetime) -> dict:
    planned = json.loads(job.requirements or "{}")
    listed = [_attempt_row(a, now) for a in attempts]
    return {"id": job.id, "name": job.name, "kind": job.kind, "state": job.state, "error": job.error,
            "depends_on": job.dependencies,
            "planned_usd": float(planned.get("expected_usd") or 0.0),
            "planned_hours": float(planned.get("hours") or 0.0),
            "billed_usd": round(sum(a["dollars"] for a in listed), 6),
            "hours": round(sum(a["hours"] for a in listed), 6),
            "interrupted_usd": round(sum(a["dollars"] for a in listed if a["outcome"] in INTERRUPTED), 6),
            "attempts": listed}


def _attempt_row(a: Attempt, now: datetime) -> dict:
    live = a.outcome in LIVE_ATTEMPT
    end = now if live else (a.ended_at or a.launched_at)
    why = (a.detail or "").splitlines()[0][:300] if a.detail else ""
    return {"number": a.number, "provider": a.provider, "gpu": a.gpu_model, "gpu_count": a.gpu_count, "spot": a.spot,
            "usd_per_hour": a.usd_per_hour, "billed_usd_per_hour": a.billed_usd_per_hour,
            "launched_at": a.launched_at.isoformat(), "ended_at": a.ended_at and a.ended_at.isoformat(),
            "hours": round(max(0.0, (end - a.launched_at).total_seconds()) / 3600, 6),
            "dollars": round(attempt_cost(a, now) if live else a.dollars, 6), "outcome": a.outcome,
            "exit_code": a.exit_code, "why": why or a.outcome}


def _book_plans(session: Session, campaign: Campaign, jobs: list[Job]) -> dict:
    """Each job planned on the book as it was when the campaign was created: the planner's winner and the
    naive choice, both priced by the planner's model."""
    offers = store.current_offers(session, store.OfferQuery(limit=None, as_of=campaign.created_at))
    as_of = max((o.fetched_at for o in offers), default=None)
    specs = {job.id: JobSpec.from_json(job.spec) for job in jobs}
    shapes = CampaignPlan(campaign.kind, {}, [NewJob(job.name, specs[job.id]) for job in jobs]).model_shapes()
    planned = {}
    for job in jobs:
        try:
            choice = plan_job(session, specs[job.id], Limits(spot=job.spot, allow_stale=True), offers,
                              as_of or campaign.created_at, shapes=shapes)
        except EstimateError as exc:
            planned[job.id] = {"problem": str(exc)}
            continue
        planned[job.id] = {"ours": _candidate(choice.winner), "naive": _candidate(naive_rule.pick(choice)),
                           "problem": None if choice.winner else choice.explain_empty()}
    return {"as_of": as_of and as_of.isoformat(), "offers": len(offers), "jobs": planned}


def _candidate(candidate) -> dict | None:
    if candidate is None:
        return None
    offer = candidate.offer
    return {"provider": offer.provider, "gpu": offer.gpu_model, "gpu_count": offer.gpu_count, "tier": offer.tier,
            "spot": candidate.spot, "usd_per_hour": candidate.usd_per_hour, "hours": candidate.expected_hours,
            "expected_usd": candidate.expected_usd}


def evaluation(jobs: list[Job]) -> dict:
    """Each succeeded evaluate job's overall metrics, named by the job that made the model it scored
    (a bag, the merge); the merged model is marked."""
    producers = {}
    for job in jobs:
        spec = JobSpec.from_json(job.spec)
        producers[spec.output_uri] = job
    rows = []
    for job in jobs:
        if job.kind != "evaluate" or job.state != "succeeded":
            continue
        spec = JobSpec.from_json(job.spec)
        try:
            metrics = storage.read_json(storage.join(spec.output_uri, "metrics.json"))["overall"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # its output is gone or unreadable: the table says what it could read
        producer = producers.get(spec.params.get("model"))
        rows.append({"model": producer.name if producer else job.name.removeprefix("evaluate "), "job": job.id,
                     "merged": producer is not None and producer.kind == "merge",
                     **{name: float(metrics[name]) for name in METRICS if name in metrics}})
    merged = next((r for r in rows if r["merged"]), None)
    for row in rows:
        row["vs_merged"] = None if merged is None or row is merged else round(row["ndcg@10"] - merged["ndcg@10"], 6)
    return {"metrics": list(METRICS), "rows": rows}


def spend_over_time(attempts: list[Attempt], now: datetime) -> list[list]:
    """[[ISO time, cumulative dollars], ...] at every attempt's start and end (and now while one is live):
    spend grows linearly in between, so these points draw it exactly (up to billing granularity)."""
    if not attempts:
        return []
    times = sorted({a.launched_at for a in attempts} | {a.ended_at for a in attempts if a.ended_at}
                   | ({now} if any(a.outcome in LIVE_ATTEMPT for a in attempts) else set()))
    points = []
    for t in times:
        total = sum(a.dollars if a.ended_at is not None and a.ended_at <= t else attempt_cost(a, t)
                    for a in attempts if a.launched_at <= t and a.outcome != "launch-failed")
        points.append([t.isoformat(), round(total, 6)])
    return points
