"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright): it loads,
shows the fake price book, and lists jobs. Skipped where no Chromium is installed."""
from __future__ import annotations

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
def served(recorded_providers):
    """`planner serve`'s API on a free port over a book refreshed from the recorded payloads."""
    import uvicorn

    from planner.interface.web import create_app
    from planner.config import load_settings
    from planner.run.pricebook import refresh_book
    from pricing import db

    settings = load_settings()
    db.upgrade(settings.db_url)
    refresh_book(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
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
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/")
        page.wait_for_selector("#offers tbody tr")
        rows = page.locator("#offers tbody tr")
        assert rows.count() >= 5
        text = page.locator("#offers").inner_text()
        assert "vast" in text and "runpod" in text and "RTX" in text
        page.wait_for_selector("#chart circle")
        assert page.locator("#legend").inner_text().strip()
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        assert not errors, errors
        browser.close()


def test_a_launched_local_job_appears_with_its_attempt_and_dollars(served, tiny_model_dir, toy_corpus, tmp_path):
    from playwright.sync_api import sync_playwright

    from planner.plan import campaigns
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
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url + "/")
        row = page.locator("#jobs tbody tr", has_text=job.spec.job_id)
        row.wait_for()
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
        assert cells[1] == "evaluate" and cells[2] == "succeeded" and cells[3] == "1"
        assert cells[4].startswith("$") and float(cells[4].lstrip("$")) > 0 and cells[5].startswith("local")
        assert "committed" in page.locator("#budget").inner_text()
        browser.close()
