"""`planner serve`: APScheduler runs the price refresh on a cron schedule and the supervisor's tick.

One refresh at a time (max_instances=1), missed runs coalesced into one and still run within a grace
period, an immediate refresh at start when the book is stale, and a clean stop on SIGTERM/SIGINT.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from planner.config import Settings
from planner.run import pricebook

log = logging.getLogger("planner.run.scheduler")
MISFIRE_GRACE_S = 15 * 60


def refresh_job(settings: Settings) -> None:
    for result in pricebook.refresh_book(settings):
        level = logging.INFO if result.status == "ok" else logging.WARNING
        log.log(level, "refresh %s: %s %s", result.provider, result.status, result.reason or f"{result.offers} offers")


def supervise_job(supervisor) -> None:
    for line in supervisor.tick().lines():  # the reaper logs its own warnings
        log.info("%s", line)


def build_scheduler(settings: Settings) -> BackgroundScheduler:
    try:
        trigger = CronTrigger.from_crontab(settings.refresh_cron, timezone=timezone.utc)
    except ValueError as exc:
        raise ValueError(f"PLANNER_REFRESH_CRON={settings.refresh_cron!r} is not a crontab line ({exc}); "
                         "use e.g. '0 * * * *'") from None
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    stale = pricebook.stale_providers(settings, pricebook.sessions_for(settings))
    # next_run_time=None would pause the job, so it is passed only to run a stale book's refresh now
    first_run = {"next_run_time": datetime.now(timezone.utc)} if stale else {}
    scheduler.add_job(refresh_job, trigger, args=[settings], id="refresh-prices", coalesce=True, max_instances=1,
                      misfire_grace_time=MISFIRE_GRACE_S, replace_existing=True, **first_run)
    from planner.run.launching import build_supervisor

    supervisor = build_supervisor(settings, pricebook.sessions_for(settings))
    scheduler.add_job(supervise_job, "interval", args=[supervisor], seconds=settings.poll_interval_s, id="supervise",
                      coalesce=True, max_instances=1, next_run_time=datetime.now(timezone.utc), replace_existing=True)
    return scheduler


class ServeError(RuntimeError):
    """`planner serve` could not start or keep running its HTTP API (e.g. the port is taken)."""


def serve(settings: Settings, host: str, port: int, app_factory: Callable[[Settings], Any] | None = None,
          stop: threading.Event | None = None, on_ready: Callable[[str | None], None] | None = None) -> None:
    """Run the scheduler, and the ASGI app `app_factory(settings)` makes (the interface's HTTP API; None:
    no API), until SIGTERM/SIGINT (or `stop`), then
    stop cleanly: the API closed, the scheduler shut down after a running refresh or tick has finished (so
    its refresh leases are released), and return normally. A second signal while stopping is not caught.

    The API runs in a thread: uvicorn serving in the main thread would take the signals itself and re-raise
    them after its own shutdown, killing the process before this cleanup runs. `on_ready` gets the API's
    URL (None without the API) once everything is up."""
    stop = stop or threading.Event()
    handlers: dict[int, Any] = {}

    def on_signal(signum, _frame) -> None:
        log.info("stopping on %s", signal.Signals(signum).name)
        for sig, previous in handlers.items():  # a second signal stops the old way
            signal.signal(sig, previous)
        stop.set()

    scheduler = build_scheduler(settings)
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    scheduler.start()
    log.info("scheduler started: refresh on %r", settings.refresh_cron)
    server = thread = None
    try:
        url = None
        if app_factory is not None:
            import uvicorn

            server = uvicorn.Server(uvicorn.Config(app_factory(settings), host=host, port=port, log_level="warning"))
            thread = threading.Thread(target=server.run, name="planner-api", daemon=True)
            thread.start()
            while not server.started and thread.is_alive() and not stop.is_set():
                time.sleep(0.02)
            if not server.started and not stop.is_set():
                raise ServeError(f"the HTTP API could not listen on {host}:{port} (is the port taken?)")
            if server.started:
                bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
                url = f"http://{host}:{bound}/"
                log.info("API and dashboard on %s", url)
        if on_ready is not None and not stop.is_set():
            on_ready(url)
        while not stop.wait(0.2):
            if thread is not None and not thread.is_alive():
                raise ServeError("the HTTP API stopped unexpectedly")
    finally:
        log.info("stopping: waiting for a running refresh or supervisor tick to finish")
        if server is not None:
            server.should_exit = True
            thread.join(30)
        scheduler.shutdown(wait=True)
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
        log.info("stopped")
