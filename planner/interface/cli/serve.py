"""`planner serve`: the scheduled price refresh, the supervisor and the HTTP API (planner.run.scheduler,
planner.interface.web)."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from planner.interface.cli.common import app, emit_json_line, err, fail, sessions, settings


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address (default PLANNER_API_HOST, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(min=0, max=65535,
                                                help="Port (default PLANNER_API_PORT, 8377).")] = None,
    api: Annotated[bool, typer.Option("--api/--no-api", help="Serve the HTTP API and dashboard.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Say when it is up and when it has stopped as JSON lines "
                                          '({"event": "serving", "url": ...}, {"event": "stopped"}).')] = False,
) -> None:
    """Run the price refresh on PLANNER_REFRESH_CRON (and at start when stale) and the HTTP API.

    SIGTERM or Ctrl-C stops it cleanly (a running refresh finishes first) with exit 0."""
    from planner.interface.web import check_bind, create_app
    from planner.run.scheduler import ServeError
    from planner.run.scheduler import serve as run_serve

    cfg = settings()
    sessions(cfg)
    host, port = host or cfg.api_host, port if port is not None else cfg.api_port

    def ready(url: str | None) -> None:
        if as_json:
            emit_json_line({"event": "serving", "url": url, "refresh_cron": cfg.refresh_cron})
        else:
            err.print(f"serving{f' the API and dashboard on {url}' if url else ''}; refresh on "
                      f"{cfg.refresh_cron!r}; Ctrl-C or SIGTERM stops", highlight=False, markup=False)

    try:
        check_bind(host, cfg)
        run_serve(cfg, host, port, create_app if api else None, on_ready=ready)
    except ValueError as exc:
        fail(str(exc))
    except ServeError as exc:
        fail(str(exc), 1)
    if as_json:
        emit_json_line({"event": "stopped"})
    else:
        err.print("stopped", highlight=False)
