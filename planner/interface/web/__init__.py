"""HTTP API and dashboard of `planner serve` (FastAPI; OpenAPI docs at /docs): one router per resource
(dashboard.py, prices.py, plan.py, jobs.py, report.py), their shared context and guards in common.py.

A local app: binds to 127.0.0.1 by default and answers only requests that name this server (the Host
allow-list in common.py). Serving beyond localhost requires PLANNER_API_TOKEN, and then every data
endpoint wants `Authorization: Bearer <token>` (the dashboard takes it from its URL fragment,
`/#token=...`, which browsers never send to the server or put in logs).
"""
from __future__ import annotations

from pathlib import Path

from fastapi import Depends, FastAPI

from planner.config import Settings, load_project
from planner.interface.web import dashboard, jobs, plan, prices, report
from planner.interface.web.common import LOOPBACK, ApiContext, LocalOnly, authorize
from planner.run import pricebook


def check_bind(host: str, settings: Settings) -> None:
    if host not in LOOPBACK and settings.api_token is None:
        raise ValueError(f"serving on {host} needs a token; set PLANNER_API_TOKEN or bind to 127.0.0.1")


def create_app(settings: Settings, backends: dict | None = None, *, host: str | None = None) -> FastAPI:
    """The API over `settings`' database, answering for `host` (the bound address; default
    PLANNER_API_HOST) and loopback names. `backends` (default: launching.build_backends) serve the
    jobs' logs and cancel."""
    project = load_project()
    roots = (project.path.parent if project.path else Path.cwd()).resolve(), Path(settings.runs_dir).resolve()
    app = FastAPI(title="planner", description="GPU prices, plans and jobs", version="1",
                  dependencies=[Depends(authorize)])
    app.state.context = ApiContext(settings, pricebook.sessions_for(settings), host or settings.api_host, roots,
                                   backends)
    app.add_middleware(LocalOnly, bound=host or settings.api_host)
    for router in (dashboard.router, prices.router, plan.router, jobs.router, report.router):
        app.include_router(router)
    return app
