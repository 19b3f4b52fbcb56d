"""`planner notify test`: one message to PLANNER_NOTIFY_URL now (planner.run.notify sends the events)."""
from __future__ import annotations

import typer

from planner.interface.cli import options
from planner.interface.cli.common import app, emit_json, fail, out, settings
from planner.run.notify import NotifyError, NotifySetupError, send_test

notify_app = typer.Typer(help="Notifications to a Slack-compatible webhook (PLANNER_NOTIFY_URL).", no_args_is_help=True)
app.add_typer(notify_app, name="notify")


@notify_app.command("test")
def notify_test(as_json: options.Json = False) -> None:
    """Send one test message to PLANNER_NOTIFY_URL (retried with backoff); exit 1 if it cannot be delivered."""
    try:
        text = send_test(settings())
    except NotifySetupError as exc:
        fail(str(exc))
    except NotifyError as exc:
        fail(f"notification not delivered: {exc}", 1)
    if as_json:
        emit_json({"sent": True, "text": text})
    else:
        out.print(f"sent: {text}", highlight=False, markup=False)
