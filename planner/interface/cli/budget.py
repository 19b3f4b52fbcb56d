"""`planner budget`: the global monthly budget (planner.plan.budget)."""
from __future__ import annotations

import math
from typing import Annotated

import typer

from planner.interface.cli import options
from planner.interface.cli.common import app, emit_json, fail, out, sessions, settings
from planner.plan import budget

budget_app = typer.Typer(help="The global monthly budget.", no_args_is_help=True)
app.add_typer(budget_app, name="budget")


@budget_app.command("show")
def budget_show(as_json: options.Json = False) -> None:
    """The monthly budget, what is committed this month and what is left: committed is what ended this month
    (settled) plus, per open job, its reservation or what its running attempt has accrued, whichever is more."""
    with sessions(settings())() as session:
        month = budget.month_spend(session)
    data = {"monthly_usd": month.cap_usd, "committed_usd": round(month.committed_usd, 4),
            "settled_usd": round(month.settled_usd, 4), "accruing_usd": round(month.accruing_usd, 4),
            "held_usd": round(month.held_usd, 4),
            "left_usd": None if month.left_usd is None else round(month.left_usd, 4)}
    if as_json:
        emit_json(data)
    else:
        cap = month.cap_usd
        out.print(f"monthly budget: {'none' if cap is None else f'${cap:.2f}'}; committed this month: "
                  f"${month.committed_usd:.2f} (settled ${month.settled_usd:.2f}, running attempts accruing "
                  f"${month.accruing_usd:.2f}, held by open jobs ${month.held_usd:.2f})"
                  + ("" if cap is None else f"; left: ${month.left_usd:.2f}"), highlight=False)


@budget_app.command("set")
def budget_set(monthly: Annotated[str, typer.Option("--monthly", help="USD per calendar month, or 'none'.")],
               as_json: options.Json = False) -> None:
    """Set (or remove, with 'none') the global monthly budget."""
    if monthly.lower() == "none":
        value = None
    else:
        try:
            value = float(monthly)
        except ValueError:
            fail(f"--monthly {monthly!r}: give a number of dollars or 'none'")
        if not math.isfinite(value):
            fail(f"--monthly {monthly}: give a finite number of dollars or 'none'")
    with sessions(settings())() as session:
        try:
            budget.set_monthly_budget(session, value)
        except ValueError as exc:
            fail(str(exc))
    if as_json:
        emit_json({"monthly_usd": value})
    else:
        out.print(f"monthly budget: {'none' if value is None else f'${value:.2f}'}", highlight=False)
