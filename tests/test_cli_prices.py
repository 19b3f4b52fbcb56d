"""`planner db upgrade`, `prices refresh/show/history/export-skypilot` end to end against fake providers."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.interface.cli import app

RUNPOD_KEY = "rpa_SECRET_runpod_0123456789"
VAST_KEY = "vast_SECRET_0123456789abcdef"


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str, code: int | None = 0):
        result = runner.invoke(app, list(args), catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, result.output + result.stderr
        return result

    return invoke


def test_commands_ask_for_upgrade_first(cli):
    result = cli("prices", "show", code=2)
    assert "run: planner db upgrade" in result.stderr


def test_refresh_then_show_gives_per_gpu_prices(cli, recorded_providers):
    cli("db", "upgrade")
    refresh = json.loads(cli("prices", "refresh", "--json").stdout)
    assert {r["provider"]: r["status"] for r in refresh} == {"runpod": "ok", "vast": "ok"}
    offers = json.loads(cli("prices", "show", "--min-vram", "3", "--limit", "100", "--json").stdout)
    by_key = {o["offer_key"]: o for o in offers}
    # RunPod: prices are per GPU already; one offer per (type, tier); the "unknown" type is dropped.
    a100 = by_key["NVIDIA A100 80GB PCIe|community"]
    assert (a100["on_demand_usd_per_gpu_hour"], a100["spot_usd_per_gpu_hour"]) == (1.59, 0.89)
    assert by_key["NVIDIA A100 80GB PCIe|secure"]["spot_usd_per_gpu_hour"] is None
    assert not any(o["gpu_name_raw"] == "unknown" for o in offers)
    assert by_key["NVIDIA GeForce RTX 3090|community"]["available"] is False
    # Vast: whole-offer price / num_gpus, storage for 50 GB included; VRAM from gpu_ram, not the name.
    two_4090 = by_key["22790314"]
    assert two_4090["gpu_count"] == 2
    assert two_4090["on_demand_usd_per_gpu_hour"] == pytest.approx((0.8 + 0.1 * 50 / 720) / 2, rel=1e-6)
    assert two_4090["spot_usd_per_gpu_hour"] == pytest.approx((0.5 + 0.1 * 50 / 720) / 2, rel=1e-6)
    assert two_4090["vram_gb"] == pytest.approx(49140 / 1024, rel=1e-3)
    prices = [o["price_usd_per_gpu_hour"] for o in offers]
    assert prices == sorted(prices)


def test_refresh_failure_keeps_book_and_exits_1(cli, recorded_providers, httpserver):
    cli("db", "upgrade")
    cli("prices", "refresh")
    before = json.loads(cli("prices", "show", "--json", "--limit", "100").stdout)
    httpserver.clear()
    httpserver.expect_request("/rp/graphql").respond_with_json({"errors": [{"message": "Something broke"}]})
    httpserver.expect_request("/vast/api/v0/bundles/").respond_with_data("<html>oops", content_type="text/html")
    result = cli("prices", "refresh", code=1)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 2 and all("failed" in line for line in lines)
    after = json.loads(cli("prices", "show", "--json", "--limit", "100").stdout)
    assert [o["offer_key"] for o in after] == [o["offer_key"] for o in before]


def test_show_warns_when_stale(cli, recorded_providers, monkeypatch):
    cli("db", "upgrade")
    cli("prices", "refresh")
    assert "older than" not in cli("prices", "show").stderr
    monkeypatch.setenv("PLANNER_MAX_PRICE_AGE", "0s")
    assert "older than" in cli("prices", "show").stderr


def test_history_table_json_and_plot(cli, recorded_providers, tmp_path):
    cli("db", "upgrade")
    cli("prices", "refresh")
    rows = json.loads(cli("prices", "history", "--gpu", "RTX 4090", "--json").stdout)
    assert {(r["provider"], r["spot"]) for r in rows} >= {("vast", False), ("vast", True), ("runpod", False)}
    plot = tmp_path / "h.png"
    cli("prices", "history", "--gpu", "RTX 4090", "--plot", str(plot))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_export_skypilot_catalog(cli, recorded_providers, tmp_path):
    cli("db", "upgrade")
    cli("prices", "refresh")
    cli("prices", "export-skypilot", "--dir", str(tmp_path / "cat"))
    runpod = (tmp_path / "cat" / "runpod" / "vms.csv").read_text().splitlines()
    vast = (tmp_path / "cat" / "vast" / "vms.csv").read_text().splitlines()
    assert runpod[0].startswith("InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,Region,SpotPrice")
    assert any(line.startswith("1x_") and "_COMMUNITY," in line for line in runpod[1:])
    assert vast[0].endswith("Price,SpotPrice,Region,HostingType") and len(vast) > 1
    assert (tmp_path / "cat" / "common" / "accelerators.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["prices", "show", "--provider", "aws"], "unknown provider 'aws'"),
    (["prices", "refresh", "--provider", "aws"], "unknown provider 'aws'"),
    (["prices", "history", "--gpu", "x", "--plot", "out.jpg"], "give a .png file name"),
])
def test_bad_usage_is_one_line_exit_2(cli, args, message):
    result = cli(*args, code=2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bad_config_is_exit_2(cli, monkeypatch):
    monkeypatch.setenv("PLANNER_MAX_PRICE_AGE", "soon")
    result = cli("prices", "show", code=2)
    assert "max_price_age" in result.stderr


def test_config_file_with_key_must_be_private(cli, tmp_path, monkeypatch):
    config = Path(tmp_path / "config.toml")
    config.write_text(f'vast_api_key = "{VAST_KEY}"\n')
    config.chmod(0o644)
    result = cli("prices", "show", code=2)
    assert "chmod 600" in result.stderr and VAST_KEY not in result.stderr


@pytest.mark.parametrize("fault", ["ok", "401", "500", "graphql-error"])
def test_keys_never_in_output_logs_or_database(cli, recorded_providers, httpserver, monkeypatch, caplog, tmp_path, fault):
    monkeypatch.setenv("RUNPOD_API_KEY", RUNPOD_KEY)
    monkeypatch.setenv("VAST_API_KEY", VAST_KEY)
    if fault != "ok":
        httpserver.clear()
        for path in ("/rp/graphql", "/vast/api/v0/bundles/"):
            if fault == "graphql-error":
                httpserver.expect_request(path).respond_with_json({"errors": [{"message": f"bad key {RUNPOD_KEY}"}]})
            else:
                httpserver.expect_request(path).respond_with_data(f"denied for {VAST_KEY}", status=int(fault))
    caplog.set_level(logging.DEBUG)
    cli("db", "upgrade")
    result = cli("-v", "prices", "refresh", "--json", code=None)
    seen = result.stdout + result.stderr + caplog.text
    seen += "".join(p.read_bytes().decode("latin-1") for p in tmp_path.glob("planner.db*"))  # with the WAL
    for key in (RUNPOD_KEY, VAST_KEY):
        assert key not in seen
    for request, _ in httpserver.log:
        assert RUNPOD_KEY not in request.url and VAST_KEY not in request.url
        assert RUNPOD_KEY not in request.get_data(as_text=True) and VAST_KEY not in request.get_data(as_text=True)
    if fault == "ok":
        auth = {r.path: r.headers.get("Authorization") for r, _ in httpserver.log}
        assert auth == {"/rp/graphql": f"Bearer {RUNPOD_KEY}", "/vast/api/v0/bundles/": f"Bearer {VAST_KEY}"}
