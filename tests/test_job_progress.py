"""Where is my job: the runner's progress file read once (planner.run.progress), shown by `jobs list`,
`jobs show`, `launch --wait`'s watcher (live table on a terminal, plain lines when piped), and the log
printed raw, as JSON, and followed until the job ends. The job is tests/fakejob.py: ten steps, no torch."""
from __future__ import annotations

import io
import json
import threading
import time

import pytest
from rich.console import Console
from typer.testing import CliRunner

from jobs.protocol import duration
from planner.config import load_settings
from planner.interface.cli import app
from planner.run import progress
from planner.run.launching import attempts_of, build_supervisor, run_until_final
from pricing import db
from pricing.db import session_factory
from tests.fakejob import add_fake_job, open_gate, scripted_local

TRAIN_PROGRESS = {"step": 120, "total_steps": 500, "tokens_seen": 1_234_567, "loss": 0.5, "wall": 60.0,
                  "tokens_per_s": 3400.0, "tflops_per_gpu": 80.1, "eta_s": 190.0}


def test_a_progress_file_reads_as_one_line():
    p = progress.parse(TRAIN_PROGRESS)
    assert p.fraction == pytest.approx(0.24) and p.unit == "step" and p.rate_unit == "tok/s"
    assert progress.describe(p) == "step 120/500 (24%) · 1.23M tokens · 3.4k tok/s · loss 0.5000 · ETA 3m10s"
    assert progress.remaining_fraction(TRAIN_PROGRESS) == pytest.approx(0.76)
    records = progress.parse({"records": 30, "total_records": 100, "records_per_s": 5.0, "wall": 6.0})
    assert records.unit == "record" and records.eta_s == pytest.approx(14.0)  # from the pace so far
    assert progress.parse({}) is None and progress.remaining_fraction(None) == 1.0
    assert [duration(s) for s in (5, 125, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == ["5s", "2m05s", "3h05m", "2d04h"]


@pytest.fixture
def world(tmp_path, monkeypatch, tiny_model_dir, toy_corpus):
    settings = load_settings(runs_dir=tmp_path / "runs", local_usd_per_hour=3.6, poll_interval_s=0.1)
    monkeypatch.setenv("PLANNER_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("PLANNER_LOCAL_USD_PER_HOUR", "3.6")
    db.upgrade(settings.db_url)
    sessions = session_factory(settings.db_url)
    backends = {"local": scripted_local(settings.runs_dir)}
    monkeypatch.setattr("planner.run.launching.build_backends", lambda cfg: backends)
    monkeypatch.setattr("planner.interface.cli.jobs.build_backends", lambda cfg: backends)
    spec = add_fake_job(settings, sessions, tiny_model_dir, toy_corpus, budget_usd=5.0)
    return settings, sessions, backends, spec


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_running_job_shows_progress_spend_and_its_log(world):
    settings, sessions, backends, spec = world
    open_gate(spec, 4)
    supervisor = build_supervisor(settings, sessions, backends)
    supervisor.tick()
    wait_for(lambda: (progress.read(spec) or {}).get("step") == 4)
    runner = CliRunner()

    shown = runner.invoke(app, ["jobs", "show", spec.job_id, "--json"])
    assert shown.exit_code == 0, shown.output
    job = json.loads(shown.stdout)["jobs"][0]
    assert job["state"] == "running" and job["progress"]["done"] == 4 and job["progress"]["fraction"] == 0.4
    assert job["progress"]["eta_s"] == 12.0 and job["spent_usd"] > 0 and job["budget_usd"] == 5.0
    assert job["progress"]["eta"] == "12s"  # the dashboard shows this text: one duration format (jobs.protocol)

    plain = runner.invoke(app, ["jobs", "show", spec.job_id])
    assert "progress: step 4/10 (40%) · 4k tokens" in plain.stdout and "ETA 12s" in plain.stdout
    assert "of a $5.00 budget" in plain.stdout
    listed = runner.invoke(app, ["jobs", "list"])
    assert spec.job_id in listed.stdout and "12s" in listed.stdout and "/ $5.00" in listed.stdout

    logs = runner.invoke(app, ["jobs", "logs", spec.job_id, "--json"])
    lines = json.loads(logs.stdout)
    assert "env TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1" in lines  # no progress bars in a log file
    assert "step 4/10 loss 0.2500 ETA 0:00:12" in lines
    raw = runner.invoke(app, ["jobs", "logs", spec.job_id, "--tail", "1"])
    assert raw.stdout == "step 4/10 loss 0.2500 ETA 0:00:12\n"

    threading.Timer(0.5, open_gate, (spec, 10)).start()  # the job goes on while we follow it
    followed = runner.invoke(app, ["jobs", "logs", spec.job_id, "--follow", "--json", "--tail", "1"])
    assert followed.exit_code == 0, followed.output
    lines = [json.loads(line) for line in followed.stdout.splitlines()]
    assert lines[0] == "step 4/10 loss 0.2500 ETA 0:00:12" and lines[-1] == "done"
    assert lines[1:-1] == [f"step {n}/10 loss {1 / n:.4f} ETA 0:00:{2 * (10 - n):02d}" for n in range(5, 11)]

    assert run_until_final(supervisor, [spec.job_id], interval_s=0.1, timeout_s=30) == {spec.job_id: "succeeded"}
    done = json.loads(runner.invoke(app, ["jobs", "show", spec.job_id, "--json"]).stdout)["jobs"][0]
    assert done["progress"]["fraction"] == 1.0 and done["spent_usd"] == done["dollars"] > 0


def test_the_watcher_prints_plain_progress_lines_when_piped_and_a_table_on_a_terminal(world):
    from planner.interface.cli.display import watch

    settings, sessions, backends, spec = world
    supervisor = build_supervisor(settings, sessions, backends)
    piped = io.StringIO()
    with watch(Console(file=piped, width=200), sessions, [spec.job_id]) as on_tick:
        assert run_until_final(supervisor, [spec.job_id], interval_s=0.1, on_tick=on_tick, timeout_s=30)[
            spec.job_id] == "succeeded"
    text = piped.getvalue()
    assert "\r" not in text and "\x1b" not in text and f"launched {spec.job_id}" in text
    assert f"{spec.job_id}: succeeded · step 10/10 (100%)" in text and "of $5.00" in text
    lines = text.splitlines()
    assert len(lines) == len(set(lines))  # a line only when something changed

    terminal = io.StringIO()
    with watch(Console(file=terminal, width=160, force_terminal=True), sessions, [spec.job_id]) as on_tick:
        on_tick(supervisor.tick())
    assert "fake run" in terminal.getvalue() and "$ / budget" in terminal.getvalue()


def test_cancel_through_the_run_layer_terminates_the_job(world):
    from planner.run.launching import cancel_jobs

    settings, sessions, backends, spec = world
    open_gate(spec, 2)
    supervisor = build_supervisor(settings, sessions, backends)
    supervisor.tick()
    wait_for(lambda: (progress.read(spec) or {}).get("step") == 2)
    assert cancel_jobs(settings, sessions, spec.job_id, backends) == [spec.job_id]
    with sessions() as session:
        assert [a.outcome for a in attempts_of(session, spec.job_id)] == ["cancelled"]
    assert cancel_jobs(settings, sessions, "nope", backends) is None


def test_jobs_turn_progress_bars_off_when_their_output_is_no_terminal(monkeypatch):
    from jobs.lifecycle import quiet_progress_bars

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    assert quiet_progress_bars(Terminal()) is False
    assert "TQDM_DISABLE" not in __import__("os").environ
    import tqdm.std
    import transformers.utils.logging as hf_logging

    monkeypatch.setattr(hf_logging, "_tqdm_active", True)
    monkeypatch.setattr(tqdm.std.tqdm, "__init__", tqdm.std.tqdm.__init__)  # the patch below is undone after
    assert quiet_progress_bars(io.StringIO()) is True
    env = __import__("os").environ
    assert env["TQDM_DISABLE"] == "1" and env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert not hf_logging.is_progress_bar_enabled()
    # tqdm was imported before the environment said so (it reads TQDM_* at import): patched to default off
    assert tqdm.std.tqdm(total=3, file=io.StringIO()).disable
    assert not tqdm.std.tqdm(total=3, file=io.StringIO(), disable=False).disable  # an explicit choice stands


def test_a_cancel_reports_a_job_another_supervisor_ended_first(world, monkeypatch):
    """`planner serve` ticks beside the API's cancel: when its supervisor ends the marked job first, the cancel
    still says it was cancelled (the dashboard said "cancelled: nothing open" on a busy machine)."""
    from planner.run import launching

    settings, sessions, backends, spec = world
    open_gate(spec, 2)
    serving = build_supervisor(settings, sessions, backends)
    serving.tick()
    wait_for(lambda: (progress.read(spec) or {}).get("step") == 2)
    build = launching.build_supervisor

    def after_the_other(*args, **kwargs):  # the serving supervisor's tick lands between the mark and this one's
        mine = build(*args, **kwargs)
        tick = mine.tick
        mine.tick = lambda: (serving.tick(), tick())[1]
        return mine

    monkeypatch.setattr(launching, "build_supervisor", after_the_other)
    assert launching.cancel_jobs(settings, sessions, spec.job_id, backends) == [spec.job_id]
    with sessions() as session:
        assert [a.outcome for a in attempts_of(session, spec.job_id)] == ["cancelled"]
