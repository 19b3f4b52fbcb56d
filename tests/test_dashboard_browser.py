"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright): it loads,
shows the fake price book with filters and sortable columns, draws the price chart (uPlot, vendored)
with a time axis, tooltips and series toggles, groups jobs by campaign, and a job's page shows its
progress moving, its log and its spend, and cancels it. Skipped where no Chromium is installed.
Screenshots of the job page and the chart go to /tmp/dashboard-*.png for people to look at."""
from __future__ import annotations

import math
import re
import shutil
import socket
import threading
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def backends(tmp_path):
    from tests.fakejob import scripted_local

    return {"local": scripted_local(tmp_path / "runs")}


@pytest.fixture
def served(recorded_providers, backends, tmp_path, monkeypatch):
    """`planner serve`'s API on a free port over a book refreshed from the recorded payloads."""
    import uvicorn

    from planner.config import load_settings
    from planner.interface.web import create_app
    from planner.run.pricebook import refresh_book
    from pricing import db

    monkeypatch.setenv("PLANNER_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("PLANNER_LOCAL_USD_PER_HOUR", "3.6")
    settings = load_settings()
    db.upgrade(settings.db_url)
    refresh_book(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, backends), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield settings, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_dashboard_shows_book_and_history(served, tmp_path):
    from playwright.sync_api import sync_playwright

    _, url = served
    with sync_playwright() as p:
        browser, page, errors = browse(p)
        page.goto(url + "/")
        page.wait_for_selector("#offers tbody tr")
        rows = page.locator("#offers tbody tr")
        assert rows.count() >= 5
        text = page.locator("#offers").inner_text()
        assert "vast" in text and "runpod" in text and "RTX" in text
        page.wait_for_selector("#chart canvas")
        assert page.locator("#chart .u-legend").inner_text().strip()
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        assert not errors, errors
        browser.close()


def browse(p):
    browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 800})  # a laptop screen
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())  # the Cancel button asks first
    return browser, page, errors


def test_offer_filters_and_sortable_columns(served):
    from playwright.sync_api import sync_playwright

    _, url = served
    with sync_playwright() as p:
        browser, page, errors = browse(p)
        page.goto(url + "/")
        page.wait_for_selector("#offers tbody tr")
        everything = page.locator("#offers tbody tr").count()
        page.select_option("#f-provider", "vast")
        page.wait_for_function("[...document.querySelectorAll('#offers tbody tr td:first-child')]"
                               ".every(td => td.textContent === 'vast')")
        assert 0 < page.locator("#offers tbody tr").count() < everything
        page.select_option("#f-provider", "")
        page.wait_for_function(f"document.querySelectorAll('#offers tbody tr').length === {everything}")
        page.select_option("#f-vram", "48")
        page.wait_for_function("[...document.querySelectorAll('#offers tbody tr td:nth-child(3)')]"
                               ".every(td => parseInt(td.textContent) >= 48)")
        vram = [int(t.split()[0]) for t in page.locator("#offers tbody td:nth-child(3)").all_inner_texts()]
        assert vram and min(vram) >= 48
        page.select_option("#f-vram", "3")
        page.wait_for_function(f"document.querySelectorAll('#offers tbody tr').length === {everything}")
        page.click("#offers th[data-key=vram_gb]")
        vram = [int(t.split()[0]) for t in page.locator("#offers tbody td:nth-child(3)").all_inner_texts()]
        assert vram == sorted(vram)
        page.click("#offers th[data-key=vram_gb]")
        vram = [int(t.split()[0]) for t in page.locator("#offers tbody td:nth-child(3)").all_inner_texts()]
        assert vram == sorted(vram, reverse=True)
        assert "sorted-desc" in page.get_attribute("#offers th[data-key=vram_gb]", "class")
        page.select_option("#f-spot", "true")
        page.wait_for_function("[...document.querySelectorAll('#offers tbody td:nth-child(7)')].every(td => td.textContent !== '–')")
        assert not errors, errors
        browser.close()


def test_the_chart_draws_a_seeded_history_with_time_axis_tooltips_and_toggles(served):
    from datetime import timedelta

    from playwright.sync_api import sync_playwright

    from pricing.db import session_factory, utcnow
    from pricing.store import PriceHourly, rebuild_daily

    settings, url = served
    start = utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(hours=71)
    with session_factory(settings.db_url)() as session:
        for hour in range(72):
            for provider, tier, base in (("vast", "seeded-a", 0.30), ("runpod", "seeded-b", 0.45)):
                price = base + 0.05 * ((hour % 24) / 24)
                session.merge(PriceHourly(provider=provider, gpu_model="RTX4090", tier=tier, spot=False,
                                          hour=start + timedelta(hours=hour), min_usd=price, median_usd=price + 0.02,
                                          offer_count=3))
        session.commit()
        rebuild_daily(session)
    with sync_playwright() as p:
        browser, page, errors = browse(p)
        page.goto(url + "/")
        page.wait_for_selector("#gpu option", state="attached")
        page.select_option("#gpu", "RTX4090")
        page.wait_for_function("window.priceChart && window.priceChart.series.some(s => s.label === 'vast seeded-a on-demand')")
        points = page.evaluate("""() => { const u = window.priceChart;
            return u.series.map((s, i) => [s.label, u.data[i].filter(v => v != null).length]); }""")
        counts = dict(points[1:])
        assert counts["vast seeded-a on-demand"] == 72 and counts["runpod seeded-b on-demand"] == 72
        span = page.evaluate("() => { const x = window.priceChart.data[0]; return x[x.length - 1] - x[0]; }")
        assert span >= 71 * 3600  # a real time axis, in seconds
        ticks = page.evaluate("() => window.priceChart.axes.map(a => a._values)")  # what uPlot drew on the axes
        assert ticks[1] and all(t.startswith("$") for t in ticks[1]) and any(t.startswith("$0.") for t in ticks[1])
        assert len(ticks[0]) >= 3 and any(":" in t or "/" in t for t in ticks[0])  # dates and times, not numbers
        box = page.locator("#chart .u-over").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5)
        page.wait_for_selector("#tooltip", state="visible")
        tip = page.locator("#tooltip").inner_text()
        assert "UTC" in tip and "vast seeded-a on-demand: $0." in tip
        page.screenshot(path="/tmp/dashboard-chart.png", clip={"x": 0, "y": box["y"] - 90, "width": 1280,
                                                               "height": box["height"] + 200})
        page.locator("#chart .u-legend .u-series", has_text="vast seeded-a on-demand").click()
        assert page.evaluate("() => window.priceChart.series.find(s => s.label === 'vast seeded-a on-demand').show") is False
        page.select_option("#days", "30")
        page.wait_for_function("document.getElementById('chart-title').textContent.startsWith('daily')")
        assert page.evaluate("() => window.priceChart.data[0].length") <= 5
        assert not errors, errors
        browser.close()


def test_a_jobs_page_shows_progress_moving_and_cancel_cancels_it(served, backends, tiny_model_dir, toy_corpus):
    from playwright.sync_api import sync_playwright

    from planner.records import Campaign, Job
    from planner.run.launching import build_supervisor
    from pricing.db import session_factory
    from tests.fakejob import add_fake_job, open_gate

    settings, url = served
    sessions = session_factory(settings.db_url)
    campaign = Campaign(id="camp-demo", kind="bagging", params="{}", budget_usd=2.0)
    spec = add_fake_job(settings, sessions, tiny_model_dir, toy_corpus, campaign=campaign, name="bag 0.4")
    open_gate(spec, 3)
    supervisor = build_supervisor(settings, sessions, backends)
    stop = threading.Event()

    def supervise():  # what `planner serve` does beside the API
        while not stop.wait(0.2):
            supervisor.tick()

    ticking = threading.Thread(target=supervise, daemon=True)
    ticking.start()
    try:
        with sync_playwright() as p:
            browser, page, errors = browse(p)
            page.goto(url + "/")
            group = page.locator(".campaign[data-campaign=camp-demo]")
            group.wait_for()
            assert "bagging campaign" in group.inner_text() and "bag 0.4" in group.inner_text()
            group.locator(f"a[href='#job={spec.job_id}']").click()
            page.wait_for_function("document.getElementById('job-progress').textContent.includes('step 3/10')")
            first = float(page.get_attribute("#job-bar", "data-fraction"))
            assert first == pytest.approx(0.3)
            assert "of $2.00" in page.locator("#job-spend").inner_text()
            page.wait_for_function("document.getElementById('log').textContent.includes('step 3/10 loss')")
            open_gate(spec, 6)
            page.wait_for_function("document.getElementById('job-progress').textContent.includes('step 6/10')")
            assert float(page.get_attribute("#job-bar", "data-fraction")) == pytest.approx(0.6)
            page.wait_for_function("document.getElementById('log').textContent.includes('step 6/10 loss')")
            assert "ETA" in page.locator("#job-progress").inner_text()
            rows = page.locator("#attempts tbody tr")
            assert rows.count() == 1 and "local" in rows.first.inner_text() and "running" in rows.first.inner_text()
            # memory planned beside used, as `jobs show` (issue 23); the stand-in job reports none used ("?")
            memory = rows.first.locator("td.memory").inner_text()
            assert re.fullmatch(r"(chunk \d+; )?VRAM [\d.?]+ / \? GB; RAM \d+\.\d / \? GB", memory), memory
            page.screenshot(path="/tmp/dashboard-job.png", full_page=True)
            page.click("#cancel")
            page.wait_for_function("document.getElementById('cancel-result').textContent.startsWith('cancelled: ')")
            assert spec.job_id in page.locator("#cancel-result").inner_text()
            page.wait_for_function("document.getElementById('job-title').textContent.includes('cancelled')")
            assert "cancelled" in page.locator("#attempts tbody tr").first.inner_text()
            assert page.locator("#cancel").is_hidden()
            page.screenshot(path="/tmp/dashboard-job-cancelled.png", full_page=True)
            assert not errors, errors
            browser.close()
    finally:
        stop.set()
        ticking.join(10)
    with sessions() as session:
        assert session.get(Job, spec.job_id).state == "cancelled"


def test_a_launched_local_job_appears_with_its_attempt_and_dollars(served, tiny_model_dir, toy_corpus, tmp_path):
    from playwright.sync_api import sync_playwright
    from sqlalchemy import select

    from planner.plan import campaigns
    from planner.records import Attempt
    from planner.run.launching import JobOptions, add_jobs, build_supervisor, run_until_final
    from pricing.db import session_factory

    settings, url = served
    settings = settings.model_copy(update={"runs_dir": tmp_path / "runs", "local_usd_per_hour": 3.6})
    sessions = session_factory(settings.db_url)
    job = campaigns.evaluate_job(settings, "tiny", str(tiny_model_dir), str(toy_corpus), ())
    with sessions() as session:
        add_jobs(session, [job], JobOptions(backend="local"))
    states = run_until_final(build_supervisor(settings, sessions), [job.spec.job_id], interval_s=0.2, timeout_s=300)
    assert states == {job.spec.job_id: "succeeded"}
    with sessions() as session:  # the bill from the recorded times, not from how fast this machine ran it
        attempts = session.scalars(select(Attempt).where(Attempt.job_id == job.spec.job_id)).all()
        expected = sum(a.usd_per_hour * math.ceil((a.ended_at - a.launched_at).total_seconds() / a.billing_seconds)
                       * a.billing_seconds / 3600 for a in attempts)
    assert [a.usd_per_hour for a in attempts] == [3.6]
    with sync_playwright() as p:
        browser, page, errors = browse(p)
        page.goto(url + "/")
        row = page.locator("#jobs tbody tr", has_text=job.spec.job_id)
        row.wait_for()
        page.wait_for_selector("#budget:has-text('committed')")
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
        assert cells[1] == "evaluate" and cells[2] == "succeeded" and cells[5] == "1"
        assert cells[6].startswith("$") and float(cells[6].lstrip("$")) == pytest.approx(expected, abs=0.005)
        assert cells[7].startswith("local")
        assert not errors, errors
        browser.close()


def no_horizontal_scroll(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


def test_one_snapshot_charts_today_and_the_overview_fits_a_laptop_screen(served):
    """After one refresh the book has one timestamp: the chart's range is the hours around it (uPlot's own
    range around one point spans years), so its axis names today's date; the page never scrolls sideways."""
    from playwright.sync_api import sync_playwright

    from pricing.db import utcnow

    _, url = served
    with sync_playwright() as p:
        browser, page, errors = browse(p)
        page.goto(url + "/")
        page.wait_for_selector("#offers tbody tr")
        page.wait_for_function("window.priceChart && window.priceChart.data[0].length >= 1")
        ticks = page.evaluate("() => window.priceChart.axes[0]._values")
        today = utcnow().date().isoformat()
        assert ticks and any(today in t for t in ticks), ticks
        low, high = page.evaluate("() => [window.priceChart.scales.x.min, window.priceChart.scales.x.max]")
        assert 3600 <= high - low <= 2 * 86400  # hours around the snapshot, not years
        assert no_horizontal_scroll(page)
        assert not errors, errors
        browser.close()


def test_the_campaign_report_page_reads_at_1280x800(campaign, served, tmp_path):
    """The dashboard's report page (the page `planner report --html` writes, fetching the report named in its
    URL): the headline, each table and the spend chart, without a sideways scroll on a laptop screen."""
    from playwright.sync_api import sync_playwright

    _, url = served
    with sync_playwright() as p:
        browser, page, errors = browse(p)
        page.goto(url + "/report.html#campaign=camp-report")
        page.wait_for_function("document.getElementById('headline').textContent.includes('nDCG@10')")
        assert "nDCG@10 merged 0.550 vs best bag 0.520 (bag 1)" in page.locator("#headline").inner_text()
        assert page.locator("#jobs tbody tr").count() == 4 and page.locator("#attempts tbody tr").count() == 6
        assert "preempted: outbid" in page.locator("#attempts").inner_text()
        page.wait_for_selector("#spend canvas")
        assert no_horizontal_scroll(page)
        page.screenshot(path="/tmp/dashboard-report.png", full_page=True)
        assert not errors, errors
        browser.close()
