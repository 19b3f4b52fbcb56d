"""What every command shares: the Typer app, the consoles, --json, one-line errors, settings, the project
file and sessions."""
from __future__ import annotations

import dataclasses
import enum
import json
import logging
import sys
import uuid
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import PurePath
from typing import Any, NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup
from typer.exceptions import TyperException

from planner.config import ConfigError, Project, Settings, load_project, load_settings
from planner.run import pricebook
from pricing import db


class PlannerGroup(TyperGroup):
    """The top-level group: an error no command expected (a locked or vanished database, a bug) is one
    line on stderr and exit 1, never a traceback; `planner -v` logs the traceback too."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, typer.Exit,
                typer.Abort, TyperException):  # TyperException: typer's own click errors (a BadParameter: exit 2)
            raise
        except Exception as exc:
            logging.getLogger("planner").info("unexpected error", exc_info=True)
            fail(unexpected(exc), 1)


def unexpected(exc: Exception) -> str:
    """One line for an exception no command handled. Database errors name the database, never its URL
    or the driver's message (either may hold a password)."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):
        if "locked" in str(exc.orig).lower():
            return "the database is locked by another process; retry in a moment"
        return (f"the database failed ({type(exc.orig).__name__}); check PLANNER_DB_URL and that the server is "
                "up, then retry")
    first = (str(exc).splitlines() or [""])[0][:300]
    return f"unexpected {type(exc).__name__}: {first} (rerun with -v for the traceback)"


app = typer.Typer(cls=PlannerGroup, help="GPU cost planner: live RunPod/Vast.ai prices, cheapest-to-finish plans, "
                  "resumable jobs.", no_args_is_help=True, pretty_exceptions_enable=False)

out = Console(width=None if sys.stdout.isatty() else 160)  # pipes and CI logs get full-width tables
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr naming the problem and the fix, then exit (2: usage, 1: operational). The
    message is plain text: user input in it (`[/x]`) is never read as rich markup."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc))


def project() -> Project:
    """The nearest planner.toml's defaults (an empty Project without one); a bad file exits 2."""
    try:
        return load_project()
    except ConfigError as exc:
        fail(str(exc))


def database_problem(cfg: Settings) -> str | None:
    """Why cfg.db_url cannot be used from here (a fix for the user), else None. Never echoes the URL."""
    problem = db.url_problem(cfg.db_url)
    return f"PLANNER_DB_URL: {problem}" if problem else None


def sessions(cfg: Settings):
    problem = database_problem(cfg)
    if problem:
        fail(problem)
    try:
        return pricebook.sessions_for(cfg)
    except db.SchemaBehind as exc:
        fail(str(exc))
    except Exception as exc:  # unreachable server: never echo the URL (it may hold a password)
        fail(f"cannot open the database ({type(exc).__name__}); check PLANNER_DB_URL and that the server is up", 1)


def jsonable(value: Any) -> Any:
    """`json.dumps` default: sets as sorted lists, times as ISO 8601, paths as strings, durations in
    seconds; anything else is a bug in the command (TypeError), never a Python repr in the output."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=lambda v: (str(type(v)), v))
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (PurePath, uuid.UUID)):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON: convert it where the data is made")


def emit_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=jsonable))


def emit_json_line(data: Any) -> None:
    """One compact JSON object on one line (a long-running command's events, e.g. `planner serve --json`)."""
    print(json.dumps(data, default=jsonable), flush=True)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
