"""`planner serve`: APScheduler runs the price refresh on a cron schedule and the supervisor's tick.

One refresh at a time (max_instances=1), missed runs coalesced into one and still run within a grace
period, an immediate refresh at start when the book is stale, and a clean stop on SIGTERM/SIGINT.
"""
from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from planner.run import pricebook
from planner.config import Settings

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


def serve(settings: Settings, host: str, port: int, app_factory: Callable[[Settings], Any] | None = None,
          stop: threading.Event | None = None) -> None:
    """Run the scheduler, and the ASGI app `app_factory(settings)` makes (the interface's HTTP API; None:
    no API), until SIGTERM/SIGINT (or `stop`)."""
    scheduler = build_scheduler(settings)
    scheduler.start()
    log.info("scheduler started: refresh on %r", settings.refresh_cron)
    try:
        if app_factory is not None:
            import uvicorn

            server = uvicorn.Server(uvicorn.Config(app_factory(settings), host=host, port=port, log_level="warning"))
            if stop is not None:
                threading.Thread(target=lambda: (stop.wait(), setattr(server, "should_exit", True)), daemon=True).start()
            server.run()  # handles SIGTERM/SIGINT itself
        else:
            stop = stop or threading.Event()
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, lambda *_: stop.set())
            stop.wait()
    finally:
        log.info("stopping: waiting for a running refresh to finish")
        scheduler.shutdown(wait=True)
