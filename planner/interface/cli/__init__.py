"""The `planner` command line: thin commands that call library functions and render them.

Every command takes --json for scripts. Exit codes: 0 ok, 1 an operational failure (a provider
failed, a job failed), 2 bad usage or a fix the user must make (bad flag, schema behind, bad config).
The app lives in common.py; importing the command modules registers their commands on it.
"""
from planner.interface.cli import jobs, prices, project  # noqa: F401  (register their commands on `app`)
from planner.interface.cli.common import app

__all__ = ["app"]
