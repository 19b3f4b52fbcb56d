"""The dashboard page and its vendored files (uPlot, MIT: data/uPlot.LICENSE), served from the package:
no CDN, so the page works offline."""
from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

router = APIRouter()
STATIC = {"uPlot.iife.min.js": "text/javascript", "charts.js": "text/javascript", "uPlot.min.css": "text/css", "uPlot.LICENSE": "text/plain"}


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> str:
    return resources.files("planner.interface").joinpath("data", "dashboard.html").read_text()


@router.get("/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in STATIC:
        raise HTTPException(404, "no such file")
    data = resources.files("planner.interface").joinpath("data", name).read_bytes()
    return Response(data, media_type=STATIC[name], headers={"Cache-Control": "max-age=86400"})


@router.get("/health")
def health() -> dict:
    return {"ok": True}
