"""`planner db`: the database schema (Alembic, through pricing.db)."""
from __future__ import annotations

import typer

from planner.interface.cli import options
from planner.interface.cli.common import app, database_problem, emit_json, fail, out, settings
from pricing import db

db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(as_json: options.Json = False) -> None:
    """Create or migrate the database schema to the newest revision."""
    from sqlalchemy.exc import DBAPIError

    cfg = settings()
    problem = database_problem(cfg)
    if problem:
        fail(problem)
    try:
        before, after = db.upgrade(cfg.db_url)
    except DBAPIError as exc:  # never echo the URL or the driver's message: they may hold a password
        fail(f"cannot migrate the database ({type(exc.orig).__name__}); check PLANNER_DB_URL and that the "
             "database is reachable", 1)
    except Exception as exc:
        fail(f"migration failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
             f"(scripts in {db.migrations_dir()})", 1)
    if as_json:
        emit_json({"before": before, "after": after})
    else:
        out.print(f"database at revision {after}" + ("" if before == after else f" (was {before or 'empty'})"))
