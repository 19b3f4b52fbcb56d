"""`planner demo`: the product end to end on this machine (planner.run.demo), rendered."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from planner.interface.cli import options
from planner.interface.cli.common import app, emit_json, err, fail, out
from planner.interface.cli.prices import offers_table
from pricing import store


@app.command()
def demo(
    directory: Annotated[Optional[Path], typer.Option(
        "--dir", help="Where to put everything (default: a new folder here).")] = None,
    as_json: options.Json = False,
) -> None:
    """Run the product end to end on this machine: no keys, no network.

    A recorded price book, the plan for a BOOM campaign of a tiny model, the campaign itself on the
    local backend with one injected spot interruption, the evaluation table and the bill."""
    from planner.run.demo import default_directory, run_pipeline, run_price_book

    directory = (directory or default_directory()).resolve()
    if directory.exists() and any(directory.iterdir()):
        fail(f"{directory} is not empty; pass --dir with a new or empty directory")
    book = run_price_book(directory)
    if not as_json:
        out.print(f"[bold]price book[/]: {book.source}", highlight=False)
        for r in book.refresh:
            out.print(f"  {r.provider}: {r.status}, {r.offers} offers" + (f" ({r.reason})" if r.reason else ""))
        out.print(offers_table(book.cheapest, store.utcnow(), "cheapest offers with at least 3 GB of VRAM"))
    if any(r.status == "failed" for r in book.refresh):
        fail("the recorded price book did not load; see above", code=1)
    progress = err if as_json else out
    result = run_pipeline(directory, lambda message: progress.print(f"  {message}", highlight=False))
    succeeded = all(state == "succeeded" for state in result.states.values())
    if as_json:
        emit_json({"directory": str(directory), "source": book.source,
                   "refresh": [r.as_dict() for r in book.refresh], "cheapest": [o.as_dict() for o in book.cheapest],
                   "campaign": result.campaign, "plan": result.plan, "states": result.states,
                   "interrupted": result.interrupted, "evaluation": result.evaluation, "bill": result.bill,
                   "total_usd": result.total_usd, "encoded": result.encoded})
    else:
        _render_demo(result)
        out.print(f"everything is in {directory}")
    raise typer.Exit(0 if succeeded else 1)


def _render_demo(result) -> None:
    plan = Table(title="the plan on the recorded book (cheapest expected cost to finish)", show_edge=False)
    for column in ("job", "provider", "GPU", "spot", "$/h", "expected $"):
        plan.add_column(column, justify="right" if "$" in column else "left")
    for row in result.plan:
        plan.add_row(row["name"], row["provider"], row["gpu"], "spot" if row["spot"] else "on-demand",
                     f"{row['usd_per_hour']:.3f}", f"{row['expected_usd']:.4f}")
    out.print(plan)
    evaluation = Table(title="retrieval on the held-out set: each bag and the merge", show_edge=False)
    for column in ("model", "nDCG@10", "recall@10", "MRR@10"):
        evaluation.add_column(column, justify="left" if column == "model" else "right")
    for row in result.evaluation:
        evaluation.add_row(row["model"], f"{row['ndcg@10']:.3f}", f"{row['recall@10']:.3f}", f"{row['mrr@10']:.3f}")
    out.print(evaluation)
    bill = Table(title="the bill: each attempt's time at its job's chosen offer", show_edge=False)
    for column in ("job", "attempt", "outcome", "seconds", "as-if $"):
        bill.add_column(column, justify="left" if column in ("job", "outcome") else "right")
    for row in result.bill:
        bill.add_row(row["name"], str(row["attempt"]), row["outcome"], f"{row['seconds']:.1f}", f"{row['usd']:.5f}")
    out.print(bill)
    states = ", ".join(f"{state}: {sum(1 for s in result.states.values() if s == state)}"
                       for state in sorted(set(result.states.values())))
    out.print(f"campaign {result.campaign}: {states}; interrupted and resumed: {result.interrupted or 'none'}; "
              f"{result.encoded} documents encoded by the merged model; total as-if ${result.total_usd:.4f}",
              highlight=False)
