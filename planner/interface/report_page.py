"""A campaign report (planner.run.report) as one self-contained HTML page: the report's data, the vendored
uPlot (MIT, data/uPlot.LICENSE) and the charts script inlined into data/report.html, so the file opens
offline and can be attached to a mail. `planner report --html` writes it; the dashboard serves it."""
from __future__ import annotations

import json
from importlib import resources


def _data(name: str) -> str:
    return resources.files("planner.interface").joinpath("data", name).read_text(encoding="utf-8")


def _inline(text: str) -> str:
    """Text safe inside a <script> or <style> element: no sequence there can close it early."""
    return text.replace("</", "<\\/")


def render(report: dict | None) -> str:
    """The page with `report` inlined; None: the dashboard's page, which fetches the report named in its URL."""
    page = _data("report.html")
    parts = {"/*UPLOT_CSS*/": _data("uPlot.min.css"), "/*UPLOT_JS*/": _inline(_data("uPlot.iife.min.js")),
             "/*CHARTS_JS*/": _inline(_data("charts.js")),
             "/*REPORT_JSON*/": _inline(json.dumps(report, allow_nan=False))}
    for marker, text in parts.items():
        page = page.replace(marker, text, 1)
    return page
