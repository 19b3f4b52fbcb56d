"""`planner report CAMPAIGN`: what a campaign cost against its plan and the naive choice, why each attempt
ended, how the bags and the merge scored (planner.run.report); `--html FILE` writes the self-contained page."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from planner.interface import report_page
from planner.interface.cli import options
from planner.interface.cli.common import app, emit_json, fail, out, sessions, settings
from planner.run.report import ReportError, campaign_report


@app.command("report")
def report(campaign: Annotated[str, typer.Argument(help="A campaign id (planner jobs list shows them).")],
           html: Annotated[Optional[Path], typer.Option("--html", help="Also write the report as one self-contained "
                                                        "HTML file (charts included; opens offline).")] = None,
           as_json: options.Json = False) -> None:
    """A campaign's report: per job planned vs billed dollars and hours, attempts and why each ended, the cost
    of interruptions, the naive cheapest-per-GPU-hour choice on the same price book, the evaluation of each
    bag against the merge, and spend over time."""
    if html is not None and not html.parent.resolve().is_dir():
        fail(f"--html {html}: the directory {html.parent} does not exist; create it or write elsewhere")
    with sessions(settings())() as session:
        try:
            data = campaign_report(session, campaign)
        except ReportError as exc:
            fail(str(exc))
    if html is not None:
        write_atomic(html, report_page.render(data))
    if as_json:
        emit_json(data | ({"html": str(html)} if html is not None else {}))
        return
    render(data)
    if html is not None:
        out.print(f"wrote {html}", highlight=False, markup=False)


def write_atomic(path: Path, text: str) -> None:
    """The whole file or none of it (a reader never sees half a report)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _usd(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"${value:.{digits}f}"


def render(data: dict) -> None:
    c, t = data["campaign"], data["totals"]
    out.print(f"[bold]{escape(c['kind'])} campaign {escape(c['id'])}[/]: {escape(data['headline'])}", highlight=False)
    if data.get("book"):
        out.print(f"on book: each job planned again on the price book of {data['book']['as_of'] or '-'} "
                  f"({data['book']['offers']} offers), by the planner and by the naive rule (cheapest $/GPU-hour "
                  "that fits)", highlight=False, markup=False)
    jobs = Table(title="jobs", show_edge=False)
    for column, justify in (("job", "left"), ("state", "left"), ("planned", "right"), ("billed", "right"),
                            ("hours planned/billed", "right"), ("attempts", "right"), ("interrupted", "right"),
                            ("planner on book", "right"), ("naive on book", "right")):
        jobs.add_column(column, justify=justify)
    for j in data["jobs"]:
        book = j.get("book") or {}
        ours, naive = book.get("ours"), book.get("naive")
        jobs.add_row(f"{escape(j['name'])} [dim]{escape(j['id'])}[/]", escape(j["state"]), _usd(j["planned_usd"]),
                     _usd(j["billed_usd"], 4), f"{j['planned_hours']:.2f} / {j['hours']:.2f}", str(len(j["attempts"])),
                     _usd(j["interrupted_usd"], 4),
                     f"{_usd(ours['expected_usd'])} {escape(ours['gpu'])}" if ours else "-",
                     f"{_usd(naive['expected_usd'])} {escape(naive['gpu'])}" if naive else "-")
    jobs.add_row("[bold]total[/]", f"{t['succeeded']}/{t['jobs']} succeeded", _usd(t["planned_usd"]),
                 _usd(t["billed_usd"], 4), f"{t['planned_hours']:.2f} / {t['hours']:.2f}", str(t["attempts"]),
                 _usd(t["interrupted_usd"], 4), _usd(t.get("ours_on_book_usd")), _usd(t.get("naive_on_book_usd")))
    out.print(jobs)
    attempts = Table(title="attempts", show_edge=False)
    for column, justify in (("job", "left"), ("#", "right"), ("where", "left"), ("$/h", "right"),
                            ("started (UTC)", "left"), ("hours", "right"), ("dollars", "right"), ("ended", "left")):
        attempts.add_column(column, justify=justify)
    for j in data["jobs"]:
        for a in j["attempts"]:
            rate = a["billed_usd_per_hour"] or a["usd_per_hour"]
            attempts.add_row(escape(j["name"]), str(a["number"]),
                             escape(f"{a['provider']} {a['gpu'] or ''}{' spot' if a['spot'] else ''}"),
                             f"${rate:.3f}", a["launched_at"][:19].replace("T", " "), f"{a['hours']:.3f}",
                             _usd(a["dollars"], 4), escape(a["why"]))
    out.print(attempts)
    rows = data["evaluation"]["rows"]
    if rows:
        table = Table(title="evaluation (held-out set)", show_edge=False)
        for column in ("model", "nDCG@10", "recall@10", "MRR@10", "Δ nDCG@10 vs merged"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for r in rows:
            delta = "-" if r["vs_merged"] is None else f"{r['vs_merged']:+.3f}"
            table.add_row(escape(r["model"]) + (" (merged)" if r["merged"] else ""), f"{r.get('ndcg@10', 0):.3f}",
                          f"{r.get('recall@10', 0):.3f}", f"{r.get('mrr@10', 0):.3f}", delta)
        out.print(table)
