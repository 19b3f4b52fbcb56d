"""A local job's environment is allow-listed (issue 24): the process basics, the Python/GPU stack's settings and
the store's credentials reach it; planner settings and any other tool's keys, in any case, do not."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from jobs.spec import JobSpec
from planner.run.backends.local import LocalBackend


def test_a_local_job_gets_an_allow_listed_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("runpod_api_key", "rpa_lower_case_key")  # pydantic-settings reads it without regard to case
    monkeypatch.setenv("PLANNER_DB_URL", "postgresql://u:pw@db/planner")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other-tool")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_other_tool")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "store-secret")  # the job writes its outputs to the store
    dump = tmp_path / "env.json"
    backend = LocalBackend(tmp_path / "runs")
    plan = backend.plan(JobSpec("env", "evaluate", str(tmp_path / "out"), {}), None, attempt=1, spot=False,
                        usd_per_hour=0.0)
    command = (sys.executable, "-c", f"import json, os; open({str(dump)!r}, 'w').write(json.dumps(dict(os.environ)))")
    handle = backend.launch(replace(plan, command=command))
    deadline = time.monotonic() + 30
    while not (Path(handle.data["run_dir"]) / "exit").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    env = json.loads(dump.read_text())
    for name in ("runpod_api_key", "PLANNER_DB_URL", "OPENAI_API_KEY", "GITHUB_TOKEN"):
        assert name not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["AWS_SECRET_ACCESS_KEY"] == "store-secret"
    assert env["PATH"] and "PLANNER_JOB_SPEC" in env and env["TQDM_DISABLE"] == "1"


def test_a_cancelled_job_that_ignores_sigterm_is_gone_when_the_cancel_returns(tmp_path):
    """The reaper lists right after a cancel: a group SIGKILLed but still exiting (a large address space takes a
    while to tear down) would be "reaped" a second time and reported as an orphan (seen in bench/drill.py)."""
    backend = LocalBackend(tmp_path / "runs")
    plan = backend.plan(JobSpec("stubborn", "evaluate", str(tmp_path / "out"), {}), None, attempt=1, spot=False,
                        usd_per_hour=0.0)
    ready = tmp_path / "ready"
    script = ("import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "block = bytearray(1 << 30); block[::4096] = b'x' * len(block[::4096]); "
              f"pathlib.Path({str(ready)!r}).touch(); time.sleep(600)")
    handle = backend.launch(replace(plan, command=(sys.executable, "-c", script)))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    backend.preempt(handle, grace_s=0.2, wait=True)  # the cancel's path, with a short grace
    assert backend.list_labeled() == []
