"""The campaign report (planner.run.report) on a campaign with known attempts over the recorded price book:
planned vs billed, interruptions, the naive cheapest-per-GPU-hour choice on the book as it was, the
evaluation of each bag against the merge, spend over time; `planner report` prints it, writes it as JSON
and as one self-contained HTML file."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest


def test_the_report_adds_up_from_the_attempts(campaign):
    from planner.run.report import campaign_report

    settings, sessions, jobs, t0 = campaign
    with sessions() as session:
        report = campaign_report(session, "camp-report", now=t0 + timedelta(hours=3))
    t = report["totals"]
    billed = 0.4 * 0.5 + 0.4 * 1.0 + 0.6 * 1.5 + 0.3 * 20 / 60 + 0.3 * 3 / 60
    assert t["billed_usd"] == pytest.approx(billed)
    assert t["planned_usd"] == pytest.approx(0.5 + 1.5 + 2.5 + 3.5) and t["planned_hours"] == pytest.approx(10)
    assert t["interrupted_usd"] == pytest.approx(0.2) and t["interruptions"] == 1
    assert (t["jobs"], t["succeeded"], t["attempts"]) == (4, 4, 6)
    first = report["jobs"][0]
    assert [a["why"] for a in first["attempts"]] == ["preempted: outbid", "succeeded"]
    assert first["hours"] == pytest.approx(1.5)
    spend = report["spend"]
    assert spend[-1][1] == pytest.approx(billed)
    assert [v for _, v in spend] == sorted(v for _, v in spend)  # cumulative
    assert spend[0] == [t0.isoformat(), 0.0]
    assert report["campaign"]["finished_at"] is not None


def test_the_evaluation_names_each_model_by_the_job_that_made_it(campaign):
    from planner.run.report import campaign_report

    _, sessions, jobs, _ = campaign
    with sessions() as session:
        rows = campaign_report(session, "camp-report", naive=False)["evaluation"]["rows"]
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {"bag 0.2", "bag 1", "merge"}  # the merge job made the third model
    assert by_model["merge"]["merged"] and by_model["merge"]["vs_merged"] is None
    assert by_model["bag 0.2"]["vs_merged"] == pytest.approx(0.41 - 0.55)
    assert by_model["bag 1"]["ndcg@10"] == pytest.approx(0.52)


def test_naive_is_the_cheapest_per_gpu_hour_that_fits_on_the_campaigns_book(campaign):
    from planner.plan.plans import needs_for
    from planner.run.report import campaign_report
    from pricing import gpus, store

    _, sessions, jobs, _ = campaign
    with sessions() as session:
        report = campaign_report(session, "camp-report")
        offers = store.current_offers(session)
    assert report["book"]["offers"] == len(offers) > 0
    needs = needs_for(jobs[0].spec)
    options = [(price / o.gpu_count, o) for o in offers
               if o.available and o.vram_gb >= needs.vram_gb and gpus.by_model(o.gpu_model) is not None
               for price in ([o.on_demand_usd_per_gpu_hour * o.gpu_count] if o.on_demand_usd_per_gpu_hour else [])
               + ([o.spot_usd_per_gpu_hour * o.gpu_count] if o.spot_usd_per_gpu_hour and o.provider != "runpod"
                  else [])]
    cheapest = min(per_gpu for per_gpu, _ in options)
    book = report["jobs"][0]["book"]
    assert book["naive"]["usd_per_hour"] / book["naive"]["gpu_count"] == pytest.approx(cheapest)
    assert book["ours"]["expected_usd"] <= book["naive"]["expected_usd"]  # the planner's winner is cheapest to finish
    t = report["totals"]
    naive_total = sum(j["book"]["naive"]["expected_usd"] for j in report["jobs"])
    assert t["naive_on_book_usd"] == pytest.approx(naive_total, abs=1e-5)
    assert f"naive cheapest-per-hour ${t['naive_on_book_usd']:.2f}" in report["headline"]
    assert "nDCG@10 merged 0.550 vs best bag 0.520 (bag 1)" in report["headline"]


def test_planner_report_prints_writes_json_and_a_self_contained_page(campaign, cli, tmp_path):
    page = tmp_path / "report.html"
    shown = cli("report", "camp-report", "--html", str(page)).stdout
    assert "bagging campaign camp-report" in shown and "preempted: outbid" in shown and f"wrote {page}" in shown
    html = page.read_text()
    assert "var uPlot=" in html and "function timeRange" in html  # the chart library and script, inlined
    assert 'src="' not in html and "href=" not in html.split("<main>")[0]  # nothing fetched from anywhere
    data = json.loads(cli("report", "camp-report", "--json").stdout)
    assert data["campaign"]["id"] == "camp-report" and len(data["jobs"]) == 4
    embedded = html.split('<script id="report-data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(embedded)["totals"]["billed_usd"] == pytest.approx(data["totals"]["billed_usd"])
    missing = cli("report", "camp-nope", code=2)
    assert "no campaign camp-nope" in missing.stderr
    cli("report", "camp-report", "--html", str(tmp_path / "no" / "such" / "dir.html"), code=2)
