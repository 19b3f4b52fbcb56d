"""`planner plan`, `planner launch`, `planner jobs` and `planner budget`: thin commands over
planner.plan.plans, planner.run.launching, planner.plan.campaigns and planner.plan.budget."""
from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.table import Table
from sqlalchemy import select

from planner.plan import budget, campaigns
from planner.plan.choose import Choice
from planner.interface.cli.common import JsonOpt, app, emit_json, err, fail, out, sessions, settings
from planner.plan.estimate import EstimateError
from planner.interface import views
from planner.plan.campaigns import CampaignPlan, NewJob
from planner.run.launching import (
    JobOptions, add_jobs, attempts_of, build_backends, build_supervisor, cloud_problem, find_jobs, run_until_final,
)
from planner.plan.plans import book_offers, choice_summary, limits_for, plan_job
from planner.records import FINAL_STATES, Campaign, Job
from pricing.db import utcnow

plan_app = typer.Typer(help="What a job needs and which offer finishes it cheapest; launches nothing.",
                       no_args_is_help=True)
launch_app = typer.Typer(help="Plan a job, then launch it and see it through interruptions.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs and campaigns: list, show, logs, cancel, and the supervisor's tick.",
                       no_args_is_help=True)
budget_app = typer.Typer(help="The global monthly budget.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")
app.add_typer(launch_app, name="launch")
app.add_typer(jobs_app, name="jobs")
app.add_typer(budget_app, name="budget")

DEFAULT_MODEL = "Qwen/Qwen3-4B"
SpotOpt = typer.Option(None, "--spot/--no-spot", help="Only spot, or only on-demand (default: either).")
MaxPriceOpt = typer.Option(None, "--max-price-per-hour", help="Cap in USD per instance-hour.")
BudgetOpt = typer.Option(None, "--budget", help="Budget in USD for this job (a campaign: for all its jobs).")
TopOpt = typer.Option(5, "--top", help="Offers to show per job.")
StaleOpt = typer.Option(False, "--allow-stale", help="Plan with prices older than PLANNER_MAX_PRICE_AGE.")
ModelOpt = typer.Option(DEFAULT_MODEL, "--model", help="Base model: directory, fsspec URI or hub id.")
MethodOpt = typer.Option("full", "--method", help="full | lora")
SeedOpt = typer.Option(0, "--seed")


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{flag} takes comma-separated numbers, e.g. 0.2,0.4,0.6")


def _options(backend: str, spot: bool | None, max_price: float | None, budget_usd: float | None) -> JobOptions:
    if backend not in ("auto", "local", "runpod", "vast", "skypilot"):
        fail(f"--backend {backend}: choose auto, local, runpod, vast or skypilot")
    if max_price is not None and max_price <= 0 or budget_usd is not None and budget_usd <= 0:
        fail("--max-price-per-hour and --budget must be positive")
    return JobOptions(backend=backend, spot="any" if spot is None else ("spot" if spot else "on-demand"),
                      max_price_per_hour=max_price, budget_usd=budget_usd)


# ------------------------------------------------------------------------------------ planning

def _plans(plan: CampaignPlan, options: JobOptions, allow_stale: bool) -> list[tuple[NewJob, Choice | str]]:
    cfg = settings()
    results = []
    shapes = plan.model_shapes()
    with sessions(cfg)() as session:
        offers = book_offers(session)
        for item in plan.jobs:
            probe = Job(id=item.spec.job_id, spot=options.spot, max_price_per_hour=options.max_price_per_hour,
                        budget_usd=options.budget_usd)
            try:
                choice = plan_job(session, item.spec, limits_for(probe, cfg, session, allow_stale=allow_stale), offers,
                                  utcnow(), shapes=shapes)
            except EstimateError as exc:
                fail(str(exc))
            results.append((item, choice))
    return results


def _render_plan(plans: list[tuple[NewJob, Choice]], top: int) -> float:
    total = 0.0
    for item, choice in plans:
        needs = choice.needs
        parts = ", ".join(f"{k} {v:.1f}" for k, v in needs.breakdown.items())
        out.print(f"[bold]{item.name}[/] ({item.spec.job_id}): needs {needs.vram_gb:.1f} GB VRAM per GPU ({parts}), "
                  f"{needs.disk_gb:.0f} GB disk, " + (f"{needs.flops / 1e12:,.3g} TFLOP" if needs.flops else
                                                f"{needs.io_bytes / 1e9:,.3g} GB to stream"), highlight=False)
        for note in needs.notes:
            out.print(f"  note: {note}", highlight=False)
        if choice.winner is None:
            out.print(f"  [yellow]no offer:[/] {choice.explain_empty()}", highlight=False)
            continue
        total += choice.winner.expected_usd
        table = Table(show_edge=False, pad_edge=False)
        for column in ("#", "provider", "GPU", "VRAM", "tier", "spot", "$/h", "work h", "expected $", "worst $",
                       "why not"):
            table.add_column(column, justify="right" if column in ("VRAM", "$/h", "work h", "expected $", "worst $")
                             else "left")
        for rank, c in enumerate(choice.ranked[:top], start=1):
            table.add_row(str(rank), c.offer.provider, f"{c.offer.gpu_count}x {c.offer.gpu_model}",
                          f"{c.offer.vram_gb:.0f}", c.offer.tier, "spot" if c.spot else "on-demand",
                          f"{c.usd_per_hour:.3f}", f"{c.hours:.3g}", f"{c.expected_usd:.2f}",
                          f"{c.worst_case_usd:.2f}", c.why_lost or "best")
        out.print(table)
    return total


def _show_plan(plan: CampaignPlan, options: JobOptions, top: int, allow_stale: bool, as_json: bool) -> None:
    plans = _plans(plan, options, allow_stale)
    if as_json:
        expected = sum(c.winner.expected_usd for _, c in plans if c.winner)
        emit_json({"kind": plan.kind, "jobs": [choice_summary(i.spec, i.name, c, top) for i, c in plans],
                   "expected_total_usd": expected})
        return
    total = _render_plan(plans, top)
    if len(plans) > 1:
        out.print(f"[bold]campaign total[/], expected on the winning offers: ${total:.2f}", highlight=False)


# ------------------------------------------------------------------------------------ launching

def _submit(plan: CampaignPlan, options: JobOptions, *, top: int, allow_stale: bool, yes: bool, wait: bool,
            dry_run: bool, as_json: bool) -> None:
    if not as_json or dry_run:
        _show_plan(plan, options, top, allow_stale, as_json)
    if dry_run:
        return
    cfg = settings()
    problem = cloud_problem(cfg, options.backend, [item.spec for item in plan.jobs])
    if problem:
        fail(problem)
    if not as_json:
        usable = sorted(b for b in build_backends(cfg) if b == options.backend or options.backend == "auto")
        out.print(f"runs on: {', '.join(usable)}" + (" (the cheapest to finish, re-chosen at each relaunch)"
                                                    if len(usable) > 1 else ""), highlight=False)
    if not yes:
        if not sys.stdin.isatty():
            fail("not a terminal: pass --yes to launch without the confirmation prompt")
        if not typer.confirm(f"launch {len(plan.jobs)} job(s)?"):
            raise typer.Exit(1)
    sessionmaker = sessions(cfg)
    with sessionmaker() as session:
        campaign = None
        if len(plan.jobs) > 1:
            import json

            campaign = Campaign(id=campaigns.new_id(plan.kind), kind=plan.kind, params=json.dumps(plan.params),
                                budget_usd=options.budget_usd)
        rows = add_jobs(session, plan.jobs, options, campaign)
        ids = [row.id for row in rows]
        campaign_id = campaign.id if campaign else None
    if as_json and not wait:
        emit_json({"campaign": campaign_id, "jobs": ids})
    elif not as_json:
        out.print(f"launched {campaign_id or ids[0]}: follow it with `planner jobs show {campaign_id or ids[0]}`"
                  + ("" if wait else " (`planner serve` or `planner jobs tick` supervises it)"), highlight=False)
    if wait:
        states = _supervise(cfg, sessionmaker, ids, quiet=as_json)
        if as_json:
            emit_json({"campaign": campaign_id, "jobs": states})
        raise typer.Exit(0 if all(s == "succeeded" for s in states.values()) else 1)


def _supervise(cfg, sessionmaker, ids: list[str], quiet: bool = False) -> dict[str, str]:
    supervisor = build_supervisor(cfg, sessionmaker)

    def on_tick(report) -> None:
        if quiet:
            return
        for line in report.lines():
            err.print(line, highlight=False)

    try:
        return run_until_final(supervisor, ids, interval_s=min(cfg.poll_interval_s, 2.0), on_tick=on_tick)
    except KeyboardInterrupt:
        err.print("stopped watching; the jobs keep running. `planner jobs tick` or `planner serve` supervises them")
        raise typer.Exit(130)


def _train_extra(epochs: int | None, batch_size: int | None, max_steps: int | None) -> dict:
    return {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "max_steps": max_steps}.items()
            if v is not None}


def _define_commands(target: typer.Typer, planning: bool) -> None:
    """The same commands for `plan KIND` and `launch KIND`; launch-only flags are hidden from `plan`."""
    yes_opt = typer.Option(False, "--yes", "-y", help="Launch without asking.", hidden=planning)
    wait_opt = typer.Option(False, "--wait", help="Supervise until the jobs end (exit 1 if one fails).",
                            hidden=planning)
    dry_opt = typer.Option(False, "--dry-run", help="Show the plan and stop.", hidden=planning)
    backend_opt = typer.Option("auto", "--backend", help="auto | local | runpod | vast | skypilot (cloud: needs "
                               "its key or extra, PLANNER_JOBS_INSTALL and PLANNER_STORAGE_URI).",
                               hidden=planning)

    @target.command("train-bag")
    def train_bag(
        fraction: float = typer.Option(..., "--fraction", help="Share of each task to train on, in (0, 1]."),
        data: str = typer.Option(..., "--data", help="Training corpus JSONL (path or fsspec URI)."),
        model: str = ModelOpt, seed: int = SeedOpt, method: str = MethodOpt,
        epochs: Optional[int] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
        max_steps: Optional[int] = typer.Option(None),
        output: Optional[str] = typer.Option(None, help="Output URI (default: under PLANNER_RUNS_DIR)."),
        checkpoint: Optional[str] = typer.Option(None, help="Checkpoint URI (default: under PLANNER_RUNS_DIR)."),
        spot: Optional[bool] = SpotOpt, max_price_per_hour: Optional[float] = MaxPriceOpt,
        budget_usd: Optional[float] = BudgetOpt, top: int = TopOpt, allow_stale: bool = StaleOpt,
        backend: str = backend_opt, yes: bool = yes_opt, wait: bool = wait_opt, dry_run: bool = dry_opt,
        as_json: bool = JsonOpt,
    ) -> None:
        """One BOOM bag: fine-tune MODEL on a seeded FRACTION of the corpus."""
        if not 0 < fraction <= 1:
            fail(f"--fraction must be in (0, 1], got {fraction}")
        if method not in ("full", "lora"):
            fail(f"--method must be full or lora, got {method}")
        job = campaigns.train_bag_job(settings(), model=model, data=data, fraction=fraction, seed=seed,
                                      method=method, extra=_train_extra(epochs, batch_size, max_steps),
                                      output=output, checkpoint=checkpoint)
        _dispatch(planning, CampaignPlan("train-bag", job.spec.params, [job]),
                  _options(backend, spot, max_price_per_hour, budget_usd), top, allow_stale, yes, wait, dry_run,
                  as_json)

    @target.command("merge")
    def merge(
        models: str = typer.Option(..., "--models", help="Comma-separated model directories or URIs."),
        weights: str = typer.Option(..., "--weights", help="Comma-separated positive weights."),
        output: Optional[str] = typer.Option(None), spot: Optional[bool] = SpotOpt,
        max_price_per_hour: Optional[float] = MaxPriceOpt, budget_usd: Optional[float] = BudgetOpt,
        top: int = TopOpt, allow_stale: bool = StaleOpt, backend: str = backend_opt, yes: bool = yes_opt,
        wait: bool = wait_opt, dry_run: bool = dry_opt, as_json: bool = JsonOpt,
    ) -> None:
        """Multi-SLERP merge of finished bags."""
        names, values = [m for m in models.split(",") if m], _floats(weights, "--weights")
        if len(names) != len(values) or len(names) < 2:
            fail("give at least two --models and exactly one --weights value per model")
        job = campaigns.merge_job(settings(), names, values, (), output)
        _dispatch(planning, CampaignPlan("merge", job.spec.params, [job]),
                  _options(backend, spot, max_price_per_hour, budget_usd), top, allow_stale, yes, wait, dry_run,
                  as_json)

    @target.command("encode")
    def encode(
        model: str = typer.Option(..., "--model"), input_uri: str = typer.Option(..., "--input"),
        spot: Optional[bool] = SpotOpt, max_price_per_hour: Optional[float] = MaxPriceOpt,
        budget_usd: Optional[float] = BudgetOpt, top: int = TopOpt, allow_stale: bool = StaleOpt,
        backend: str = backend_opt, yes: bool = yes_opt, wait: bool = wait_opt, dry_run: bool = dry_opt,
        as_json: bool = JsonOpt,
    ) -> None:
        """Batch-encode a corpus with a model."""
        job = campaigns.encode_job(settings(), model, input_uri, ())
        _dispatch(planning, CampaignPlan("encode", job.spec.params, [job]),
                  _options(backend, spot, max_price_per_hour, budget_usd), top, allow_stale, yes, wait, dry_run,
                  as_json)

    @target.command("bagging")
    def bagging(
        data: str = typer.Option(..., "--data", help="Training corpus JSONL."),
        fractions: str = typer.Option("0.2,0.4,0.6,0.8,1.0", "--fractions"),
        weights: str = typer.Option("0.2,0.4,0.6,0.8,1.0", "--weights"),
        model: str = ModelOpt, seed: int = SeedOpt, method: str = MethodOpt,
        encode_uri: Optional[str] = typer.Option(None, "--encode", help="Encode this corpus with the merged model."),
        eval_uri: Optional[str] = typer.Option(None, "--eval", help="Evaluate every bag and the merge on this set."),
        epochs: Optional[int] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
        max_steps: Optional[int] = typer.Option(None),
        spot: Optional[bool] = SpotOpt, max_price_per_hour: Optional[float] = MaxPriceOpt,
        budget_usd: Optional[float] = BudgetOpt, top: int = TopOpt, allow_stale: bool = StaleOpt,
        backend: str = backend_opt, yes: bool = yes_opt, wait: bool = wait_opt, dry_run: bool = dry_opt,
        as_json: bool = JsonOpt,
    ) -> None:
        """The BOOM campaign: bags in parallel, their merge, then optional encode and evaluation."""
        try:
            plan = campaigns.bagging(settings(), model=model, data=data, fractions=_floats(fractions, "--fractions"),
                                     weights=_floats(weights, "--weights"), method=method, seed=seed,
                                     encode=encode_uri, evaluate=eval_uri,
                                     train_extra=_train_extra(epochs, batch_size, max_steps))
        except ValueError as exc:
            fail(str(exc))
        _dispatch(planning, plan, _options(backend, spot, max_price_per_hour, budget_usd), top, allow_stale, yes,
                  wait, dry_run, as_json)

    @target.command("incremental")
    def incremental(
        previous: str = typer.Option(..., "--previous", help="The current merged model."),
        new_data: str = typer.Option(..., "--new-data"), replay_data: str = typer.Option(..., "--replay-data"),
        replay_fraction: float = typer.Option(0.4, "--replay-fraction"),
        weights: str = typer.Option("2.8,4.3", "--weights"), seed: int = SeedOpt, method: str = MethodOpt,
        epochs: Optional[int] = typer.Option(None), batch_size: Optional[int] = typer.Option(None),
        max_steps: Optional[int] = typer.Option(None),
        spot: Optional[bool] = SpotOpt, max_price_per_hour: Optional[float] = MaxPriceOpt,
        budget_usd: Optional[float] = BudgetOpt, top: int = TopOpt, allow_stale: bool = StaleOpt,
        backend: str = backend_opt, yes: bool = yes_opt, wait: bool = wait_opt, dry_run: bool = dry_opt,
        as_json: bool = JsonOpt,
    ) -> None:
        """The incremental stage: train on new data plus replayed old data, merge with the previous model."""
        try:
            plan = campaigns.incremental(settings(), previous=previous, new_data=new_data, replay_data=replay_data,
                                         replay_fraction=replay_fraction, weights=_floats(weights, "--weights"),
                                         method=method, seed=seed,
                                         train_extra=_train_extra(epochs, batch_size, max_steps))
        except ValueError as exc:
            fail(str(exc))
        _dispatch(planning, plan, _options(backend, spot, max_price_per_hour, budget_usd), top, allow_stale, yes,
                  wait, dry_run, as_json)


_define_commands(plan_app, planning=True)
_define_commands(launch_app, planning=False)


def _dispatch(planning: bool, plan: CampaignPlan, options: JobOptions, top: int, allow_stale: bool, yes: bool,
              wait: bool, dry_run: bool, as_json: bool) -> None:
    if planning:
        _show_plan(plan, options, top, allow_stale, as_json)
    else:
        _submit(plan, options, top=top, allow_stale=allow_stale, yes=yes, wait=wait, dry_run=dry_run, as_json=as_json)


# ------------------------------------------------------------------------------------ jobs

@jobs_app.command("list")
def jobs_list(all_jobs: bool = typer.Option(False, "--all", help="Include finished jobs."),
              limit: int = typer.Option(50, "--limit"), as_json: bool = JsonOpt) -> None:
    """Jobs, newest first (open ones only unless --all)."""
    with sessions(settings())() as session:
        query = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
        if not all_jobs:
            query = query.where(Job.state.not_in(FINAL_STATES))
        rows = [views.job_summary(session, job) for job in session.scalars(query)]
    if as_json:
        emit_json(rows)
        return
    table = Table(title="jobs" if all_jobs else "open jobs (--all for finished ones)")
    for column in ("id", "name", "state", "attempts", "$", "campaign"):
        table.add_column(column, justify="right" if column in ("attempts", "$") else "left")
    for row in rows:
        table.add_row(row["id"], row["name"], row["state"], str(row["attempts"]), f"{row['dollars']:.2f}",
                      row["campaign"] or "")
    out.print(table)


@jobs_app.command("show")
def jobs_show(ident: str = typer.Argument(..., help="A job id or a campaign id."), as_json: bool = JsonOpt) -> None:
    """A job (or every job of a campaign) with its attempts and dollars."""
    with sessions(settings())() as session:
        data = views.jobs_view(session, ident)
    if data is None:
        fail(f"no job or campaign {ident}; `planner jobs list --all` lists them")
    if as_json:
        emit_json(data)
        return
    for job in data["jobs"]:
        after = f" after {', '.join(job['depends_on'])}" if job["depends_on"] else ""
        out.print(f"[bold]{job['name']}[/] {job['id']}: {job['state']}{after}"
                  + (f" ({job['error'].splitlines()[0]})" if job["error"] else ""), highlight=False)
        for a in job["attempts"]:
            out.print(f"  attempt {a['number']}: {a['provider']} {a['gpu'] or ''} {'spot' if a['spot'] else 'on-demand'} "
                      f"${a['usd_per_hour']:.3f}/h, {a['outcome']}"
                      + (f" exit {a['exit_code']}" if a["exit_code"] is not None else "")
                      + f", ${a['dollars']:.4f}", highlight=False)
    out.print(f"[bold]total[/]: ${data['dollars']:.4f}" + (f" of a ${data['budget_usd']:.2f} budget"
                                                           if data["budget_usd"] else ""), highlight=False)


@jobs_app.command("logs")
def jobs_logs(job_id: str = typer.Argument(...), tail: int = typer.Option(100, "--tail")) -> None:
    """The log of a job's latest attempt."""
    from planner.run.launching import build_backends
    from planner.run.supervisor import handle_of

    cfg = settings()
    with sessions(cfg)() as session:
        attempts = attempts_of(session, job_id)
    if not attempts:
        fail(f"job {job_id} has no attempts yet (or does not exist)")
    backend = build_backends(cfg).get(attempts[-1].backend)
    if backend is None:
        fail(f"the {attempts[-1].backend} backend is not available in this build")
    out.print(backend.logs(handle_of(attempts[-1]), tail=tail), highlight=False, markup=False)


@jobs_app.command("cancel")
def jobs_cancel(ident: str = typer.Argument(..., help="A job id or a campaign id."), as_json: bool = JsonOpt) -> None:
    """Cancel a job or a whole campaign: live instances are terminated and their cost settled."""
    cfg = settings()
    sessionmaker = sessions(cfg)
    with sessionmaker() as session:
        _, jobs = find_jobs(session, ident)
        if not jobs:
            fail(f"no job or campaign {ident}")
        for job in jobs:
            if job.state not in FINAL_STATES:
                job.cancel_requested = True
        session.commit()
    report = build_supervisor(cfg, sessionmaker).tick()
    cancelled = [job_id for job_id, state in report.finished if state == "cancelled"]
    if as_json:
        emit_json({"cancelled": cancelled})
    else:
        out.print(f"cancelled: {', '.join(cancelled) or 'nothing open'}", highlight=False)


@jobs_app.command("tick")
def jobs_tick(as_json: bool = JsonOpt) -> None:
    """One supervisor pass over every open job (for cron; `planner serve` runs it continuously)."""
    cfg = settings()
    report = build_supervisor(cfg, sessions(cfg)).tick()
    data = {"launched": report.launched, "relaunching": report.relaunching, "finished": report.finished,
            "reaped": report.reaped}
    if as_json:
        emit_json(data)
    else:
        for line in report.lines():
            out.print(line, highlight=False)


# ------------------------------------------------------------------------------------ budget

@budget_app.command("show")
def budget_show(as_json: bool = JsonOpt) -> None:
    """The monthly budget, what is committed this month (spent + reserved) and what is left."""
    with sessions(settings())() as session:
        cap, committed = budget.monthly_budget(session), budget.committed(session)
    data = {"monthly_usd": cap, "committed_usd": round(committed, 4),
            "left_usd": None if cap is None else round(cap - committed, 4)}
    if as_json:
        emit_json(data)
    else:
        out.print(f"monthly budget: {'none' if cap is None else f'${cap:.2f}'}; committed this month: "
                  f"${committed:.2f}" + ("" if cap is None else f"; left: ${cap - committed:.2f}"), highlight=False)


@budget_app.command("set")
def budget_set(monthly: str = typer.Option(..., "--monthly", help="USD per calendar month, or 'none'.")) -> None:
    """Set (or remove, with 'none') the global monthly budget."""
    if monthly.lower() == "none":
        value = None
    else:
        try:
            value = float(monthly)
        except ValueError:
            fail(f"--monthly {monthly!r}: give a number of dollars or 'none'")
    with sessions(settings())() as session:
        try:
            budget.set_monthly_budget(session, value)
        except ValueError as exc:
            fail(str(exc))
    out.print(f"monthly budget: {'none' if value is None else f'${value:.2f}'}", highlight=False)
