"""`planner jobs`: list, show, logs, cancel and the supervisor's tick; thin commands over
planner.interface.views, planner.run.launching and planner.run.logs."""
from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select

from planner.interface import views
from planner.interface.cli import options
from planner.interface.cli.common import app, emit_json, fail, out, sessions, settings
from planner.records import FINAL_STATES, LIVE_ATTEMPT, Job
from planner.run.launching import attempts_of, build_backends, build_supervisor

jobs_app = typer.Typer(help="Jobs and campaigns: list, show, logs, cancel, and the supervisor's tick.",
                       no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
Ident = Annotated[str, typer.Argument(help="A job id or a campaign id.")]


@jobs_app.command("list")
def jobs_list(all_jobs: Annotated[bool, typer.Option("--all", help="Include finished jobs.")] = False,
              limit: Annotated[int, typer.Option("--limit", min=1, max=100_000)] = 50,
              as_json: options.Json = False) -> None:
    """Jobs, newest first (open ones only unless --all), with each running job's progress and spend."""
    with sessions(settings())() as session:
        query = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
        if not all_jobs:
            query = query.where(Job.state.not_in(FINAL_STATES))
        rows = [views.job_summary(session, job) for job in session.scalars(query)]
    if as_json:
        emit_json(rows)
        return
    from planner.interface.cli.display import bar, eta, spend

    table = Table(title="jobs" if all_jobs else "open jobs (--all for finished ones)")
    for column in ("id", "name", "state", "progress", "ETA", "attempts", "$ / budget", "campaign"):
        table.add_column(column, justify="right" if column in ("attempts", "$ / budget", "ETA") else "left")
    for row in rows:
        table.add_row(row["id"], escape(row["name"]), row["state"], bar(row, width=16), eta(row), str(row["attempts"]),
                      spend(row), row["campaign"] or "")
    out.print(table)


def memory_line(m: dict) -> str | None:
    """An attempt's memory, planned beside used: chunk, VRAM per GPU (reserved, allocated), host RAM."""
    def gb(value):
        return "?" if value is None else f"{value:.1f} GB"

    if m["planned_vram_gb"] is None and m["peak_vram_reserved_gb"] is None and m["peak_rss_gb"] is None:
        return None
    parts = [f"chunk {m['mini_batch_size']}"] if m["mini_batch_size"] else []
    parts.append(f"VRAM planned {gb(m['planned_vram_gb'])}, used {gb(m['peak_vram_reserved_gb'])} reserved "
                 f"({gb(m['peak_vram_allocated_gb'])} allocated)")
    parts.append(f"RAM planned {gb(m['planned_ram_gb'])}, used {gb(m['peak_rss_gb'])}"
                 + (f" of {gb(m['host_ram_gb'])}" if m["host_ram_gb"] else ""))
    return "; ".join(parts)


@jobs_app.command("show")
def jobs_show(ident: Ident, as_json: options.Json = False) -> None:
    """A job (or every job of a campaign) with its attempts, progress and dollars against its budget."""
    with sessions(settings())() as session:
        data = views.jobs_view(session, ident)
    if data is None:
        fail(f"no job or campaign {ident}; `planner jobs list --all` lists them")
    if as_json:
        emit_json(data)
        return
    from planner.interface.cli.display import jobs_table

    for job in data["jobs"]:
        after = f" after {', '.join(job['depends_on'])}" if job["depends_on"] else ""
        out.print(f"[bold]{escape(job['name'])}[/] {job['id']}: {job['state']}{after}"
                  + (f" ({escape(job['error'].splitlines()[0])})" if job["error"] else ""), highlight=False)
        for a in job["attempts"]:
            out.print(f"  attempt {a['number']}: {a['provider']} {a['gpu'] or ''} {'spot' if a['spot'] else 'on-demand'} "
                      f"planned ${a['usd_per_hour']:.3f}/h"
                      + (f", billed ${a['billed_usd_per_hour']:.3f}/h" if a.get("billed_usd_per_hour") else "")
                      + f", {a['outcome']}"
                      + (f" exit {a['exit_code']}" if a["exit_code"] is not None else "")
                      + f", ${a['dollars']:.4f}", highlight=False)
            if (used := memory_line(a["memory"])) is not None:
                out.print(f"    memory: {used}", highlight=False)
            if a["outcome"] in ("out-of-memory", "moved") and a["detail"]:  # why it was relaunched elsewhere
                out.print(f"    {escape(a['detail'].splitlines()[0])}", highlight=False)
        if job["progress"] and job["progress"]["text"]:
            out.print(f"  progress: {job['progress']['text']}", highlight=False, markup=False)
    if out.is_terminal and any(j["progress"] for j in data["jobs"]):
        out.print(jobs_table(data["jobs"]))
    spent = f"${data['spent_usd']:.4f}" + (f" so far (${data['dollars']:.4f} settled)"
                                          if data["spent_usd"] != data["dollars"] else "")
    out.print(f"[bold]total[/]: {spent}" + (f" of a ${data['budget_usd']:.2f} budget" if data["budget_usd"] else ""),
              highlight=False)


@jobs_app.command("logs")
def jobs_logs(job_id: Annotated[str, typer.Argument()],
              tail: Annotated[int, typer.Option("--tail", min=1, help="Lines to show.")] = 100,
              follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines until the job "
                                                   "ends.")] = False,
              as_json: Annotated[bool, typer.Option("--json", help="A JSON list of lines (with --follow: one JSON "
                                                    "string per line, as JSON lines).")] = False) -> None:
    """The log of a job's latest attempt, as raw lines (never wrapped or styled)."""
    import json

    from planner.run.backends.base import Handle
    from planner.run.logs import follow as follow_log

    cfg = settings()
    sessionmaker = sessions(cfg)
    with sessionmaker() as session:
        attempts = attempts_of(session, job_id)
    if not attempts:
        fail(f"job {job_id} has no attempts yet (or does not exist)")
    backend = build_backends(cfg).get(attempts[-1].backend)
    if backend is None:  # its key is not set in this shell (or its extra is not installed)
        name = attempts[-1].backend
        fail(f"cannot reach the {name} backend from here: " + ("install the cloud extra (pip install "
             "'planner[cloud]')" if name == "skypilot" else f"set {name.upper()}_API_KEY"), code=1)
    handle = Handle.from_attempt(attempts[-1])
    if not follow:
        lines = backend.logs(handle, tail=tail).splitlines()
        sys.stdout.write(json.dumps(lines) + "\n" if as_json else "".join(line + "\n" for line in lines))
        return

    def ended() -> bool:  # the attempt's instance is gone, or the supervisor has closed the attempt
        from planner.run.logs import attempt_ended

        with sessionmaker() as session:
            outcome = attempts_of(session, job_id)[-1].outcome
        return outcome not in LIVE_ATTEMPT or attempt_ended(backend, handle)

    try:
        for line in follow_log(backend, handle, tail=tail, ended=ended):
            sys.stdout.write((json.dumps(line) if as_json else line) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@jobs_app.command("cancel")
def jobs_cancel(ident: Ident, as_json: options.Json = False) -> None:
    """Cancel a job or a whole campaign: live instances are terminated and their cost settled."""
    from planner.run.launching import cancel_jobs

    cfg = settings()
    cancelled = cancel_jobs(cfg, sessions(cfg), ident)
    if cancelled is None:
        fail(f"no job or campaign {ident}")
    if as_json:
        emit_json({"cancelled": list(cancelled), "not_ended": cancelled.not_ended})
    else:
        if cancelled or not cancelled.not_ended:
            out.print(f"cancelled: {', '.join(cancelled) or 'nothing open'}", highlight=False)
        for job_id, why in cancelled.not_ended.items():
            out.print(f"{job_id}: not cancelled: {why.removeprefix('waiting: ')}", highlight=False, markup=False,
                      soft_wrap=True)
    if cancelled.not_ended:
        raise typer.Exit(1)


@jobs_app.command("tick")
def jobs_tick(as_json: options.Json = False) -> None:
    """One supervisor pass over every open job (for cron; `planner serve` runs it continuously)."""
    cfg = settings()
    report = build_supervisor(cfg, sessions(cfg)).tick()
    data = {"launched": report.launched, "relaunching": report.relaunching, "finished": report.finished,
            "reaped": report.reaped, "waiting": report.waiting, "faults": report.faults}
    if as_json:
        emit_json(data)
    else:
        for line in report.lines():  # one line per event, never wrapped: scripts and cron mail read them
            out.print(line, highlight=False, markup=False, soft_wrap=True)
    if report.faults:  # weather (a store down) or a job's own fault: recorded on the job, retried next tick
        raise typer.Exit(1)
