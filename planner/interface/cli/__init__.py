"""The `planner` command line: thin commands that call library functions and render them.

Every command takes --json for scripts. Exit codes: 0 ok, 1 an operational failure (a provider
failed, a job failed), 2 bad usage or a fix the user must make (bad flag, schema behind, bad config).
The app lives in common.py, the options several commands share in options.py. Each command group is
one module that registers itself on the app when imported: add a new group's module to this list
(kept sorted, as ruff sorts imports: `planner --help` lists the groups in this order).
"""
from planner.interface.cli import (  # noqa: F401  (importing a group registers its commands on `app`)
    budget,
    data,
    db,
    demo,
    jobs,
    notify,
    plan,
    prices,
    project,
    report,
    serve,
)
from planner.interface.cli.common import app

__all__ = ["app"]
