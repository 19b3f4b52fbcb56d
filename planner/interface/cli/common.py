"""What every command shares: the Typer app, the consoles, --json, one-line errors, settings and sessions."""
from __future__ import annotations

import json
import logging
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

from planner.config import ConfigError, Settings, load_settings
from planner.run import pricebook
from pricing import db

app = typer.Typer(help="GPU cost planner: live RunPod/Vast.ai prices, cheapest-to-finish plans, resumable jobs.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

out = Console(width=None if sys.stdout.isatty() else 160)  # pipes and CI logs get full-width tables
err = Console(stderr=True, soft_wrap=True)
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr naming the problem and the fix, then exit (2: usage, 1: operational)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc))


def sessions(cfg: Settings):
    try:
        return pricebook.sessions_for(cfg)
    except db.SchemaBehind as exc:
        fail(str(exc))
    except Exception as exc:  # unreachable server, bad URL: never echo the URL (it may hold a password)
        fail(f"cannot open the database ({type(exc).__name__}); check PLANNER_DB_URL", 1)


def emit_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
