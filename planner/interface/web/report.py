"""GET /campaigns/{id}/report (the data of `planner report --json`) and /report.html, the page that shows it
(the same self-contained page `planner report --html` writes; here it fetches the report named in its URL
fragment, `#campaign=ID`, with the dashboard's token)."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse

from planner.interface import report_page
from planner.interface.web.common import Context
from planner.run.report import ReportError, campaign_report

router = APIRouter(tags=["reports"])


@router.get("/report.html", response_class=HTMLResponse, include_in_schema=False)
def report_html() -> str:
    return report_page.render(None)


@router.get("/campaigns/{campaign_id}/report")
def report(ctx: Context, campaign_id: str) -> dict:
    """A campaign's report: planned vs billed per job, attempts and why each ended, interruptions, the naive
    choice on the same book, the evaluation of each bag against the merge, spend over time."""
    with ctx.sessions() as session:
        try:
            return campaign_report(session, campaign_id)
        except ReportError as exc:
            raise HTTPException(404, str(exc)) from None
