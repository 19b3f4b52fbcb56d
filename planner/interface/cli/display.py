"""Where running jobs are: a rich live table on a terminal, plain lines when piped (`launch --wait`),
and the progress cells `jobs list` / `jobs show` print. The data is planner.interface.views'."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from jobs.protocol import duration
from planner.interface import views
from planner.records import Job


def bar(job: dict, width: int = 24):
    """A job's progress bar (or its state when the runner has said nothing yet)."""
    fraction = (job.get("progress") or {}).get("fraction")
    if fraction is None:
        return Text("–", style="dim")
    return ProgressBar(total=1.0, completed=fraction, width=width,
                       complete_style="green" if job["state"] == "succeeded" else "cyan")


def spend(job: dict) -> str:
    text = f"${job['spent_usd']:.2f}"
    if job.get("budget_usd"):
        text += f" / ${job['budget_usd']:.2f}" + ("*" if job.get("budget_scope") == "campaign" else "")
    return text


def eta(job: dict) -> str:
    p = job.get("progress") or {}
    if job["state"] not in ("running", "launching") or p.get("eta_s") is None:
        return ""
    return duration(p["eta_s"])


def jobs_table(jobs: list[dict], title: str | None = None) -> Table:
    """One row per job: state, progress bar, what the runner reports, ETA, dollars against budget."""
    table = Table(title=title, show_edge=False, pad_edge=False)
    for column in ("job", "state", "progress", "", "ETA", "$ / budget"):
        table.add_column(column, justify="right" if column in ("ETA", "$ / budget") else "left",
                         no_wrap=column != "")
    for job in jobs:
        p = job.get("progress") or {}
        detail = " · ".join(part for part in (p.get("text") or "").split(" · ") if not part.startswith("ETA"))
        table.add_row(f"{job['name']} [dim]{job['id']}[/]", job["state"], bar(job), detail, eta(job), spend(job))
    if any(j.get("budget_scope") == "campaign" for j in jobs):
        table.caption = "* the campaign's budget, shared by its jobs"
    return table


def _summaries(sessionmaker, ids: list[str]) -> list[dict]:
    with sessionmaker() as session:
        return [views.job_summary(session, job, fresh=False) for job_id in ids
                if (job := session.get(Job, job_id)) is not None]


@contextmanager
def watch(console: Console, sessionmaker, ids: list[str], *, quiet: bool = False,
          live: bool | None = None) -> Iterator[Callable]:
    """An on_tick for run_until_final: on a terminal a live table of the jobs (events print above it);
    piped, each event and each change of a job's progress as one plain line; nothing when quiet."""
    if quiet:
        yield lambda report: None
        return
    if live is None:
        live = console.is_terminal and not console.is_dumb_terminal
    if not live:
        last: dict[str, str] = {}

        def plain(report) -> None:
            for line in report.lines():
                console.print(line, highlight=False, markup=False)
            for job in _summaries(sessionmaker, ids):
                line = f"{job['id']}: {job['state']} · {views.progress_line(job)}"
                if last.get(job["id"]) != line:
                    last[job["id"]] = line
                    console.print(line, highlight=False, markup=False, soft_wrap=True)

        yield plain
        return
    with Live(console=console, refresh_per_second=2, transient=False) as display:
        def update(report) -> None:
            for line in report.lines():
                display.console.print(line, highlight=False)
            jobs = _summaries(sessionmaker, ids)
            total = sum(j["spent_usd"] for j in jobs)
            display.update(Group(jobs_table(jobs), Text(f"spent so far ${total:.2f} · Ctrl-C stops watching, "
                                                        "the jobs keep running", style="dim")))

        yield update


@contextmanager
def refresh_status(console: Console, providers: list[str], *, live: bool | None = None) -> Iterator[Callable | None]:
    """For `prices refresh`: on a terminal, a spinner naming each provider's state and time so far
    (Vast's spaced searches take seconds); yields the pricing.refresh on_progress callback, or None
    (nothing extra) when the console is not a terminal."""
    if live is None:
        live = console.is_terminal and not console.is_dumb_terminal
    if not live:
        yield None
        return
    import threading
    import time

    lock = threading.Lock()
    state = {name: ("waiting", None, time.monotonic()) for name in providers}

    def text() -> str:
        parts = []
        for name, (event, result, since) in state.items():
            if event == "done" and result is not None:
                parts.append(f"{name} [green]{result.offers} offers[/]" if result.status == "ok"
                             else f"{name} [red]{result.status}[/]")
            elif event in ("fetching", "fetched"):
                verb = "fetching" if event == "fetching" else "saving"
                parts.append(f"{name} {verb} {time.monotonic() - since:.0f}s")
            else:
                parts.append(f"{name} {event}")
        return "refreshing prices: " + " · ".join(parts)

    with console.status(text()) as status:
        stop = threading.Event()

        def tick() -> None:  # the seconds keep counting while a provider is slow
            while not stop.wait(0.5):
                with lock:
                    status.update(text())

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()

        def on_progress(provider: str, event: str, result) -> None:
            with lock:
                since = state.get(provider, (None, None, time.monotonic()))[2]
                state[provider] = (event, result, time.monotonic() if event == "fetching" else since)
                status.update(text())

        try:
            yield on_progress
        finally:
            stop.set()
            ticker.join(2)
