"""Notifications to a Slack-compatible webhook (planner.run.notify), against a real HTTP listener on
127.0.0.1 (pytest-httpserver): what is posted for each event, once per event across ticks and processes,
retried with backoff in the background without holding up the caller, and the URL (a secret) nowhere:
not in the output, the logs (urllib3's debug lines included) or the database."""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from werkzeug import Response

from pricing.providers.http import RetryPolicy

SECRET_PATH = "/services/T0PLANNER/B0NOTIFY/xoxSecretWebhookToken42"
NO_WAIT = RetryPolicy(attempts=4, initial_wait_s=0.01, sleep=lambda seconds: None)


@pytest.fixture
def sessions(tmp_path):
    import os

    from pricing import db

    db.upgrade(os.environ["PLANNER_DB_URL"])
    return db.session_factory(os.environ["PLANNER_DB_URL"])


def webhook_url(httpserver) -> str:
    return httpserver.url_for(SECRET_PATH)


def posted(httpserver, count: int = 1, timeout_s: float = 30) -> list[dict]:
    """The JSON bodies the listener received, once it has `count` of them."""
    deadline = time.monotonic() + timeout_s
    while len(httpserver.log) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return [request.get_json() for request, _ in httpserver.log]


def add_job(sessions, job_id: str, state: str, *, campaign: str | None = None, error: str | None = None,
            dollars: float = 0.25, outcomes=("succeeded",)):
    from jobs.spec import JobSpec
    from planner.records import Attempt, Campaign, Job
    from pricing.db import utcnow

    now = utcnow()
    with sessions() as session:
        if campaign and session.get(Campaign, campaign) is None:
            session.add(Campaign(id=campaign, kind="bagging", params="{}", budget_usd=5.0))
            session.flush()
        spec = JobSpec(job_id, "train-bag", f"/nowhere/{job_id}/output", {"model": "m", "data": "d.jsonl",
                                                                           "fraction": 0.2, "seed": 0})
        session.add(Job(id=job_id, campaign_id=campaign, name=f"train-bag {job_id}", kind="train-bag",
                        spec=spec.to_json(), state=state, error=error, finished_at=now))
        session.flush()  # the attempts' foreign key needs the job first
        for number, outcome in enumerate(outcomes, 1):
            session.add(Attempt(job_id=job_id, number=number, backend="local", provider="local", usd_per_hour=1.2,
                                outcome=outcome, launched_at=now - timedelta(minutes=30), ended_at=now,
                                dollars=dollars / len(outcomes)))
        session.commit()


def notifier(httpserver, sessions, **kwargs):
    from pydantic import SecretStr

    from planner.run.notify import Notifier

    return Notifier(SecretStr(webhook_url(httpserver)), sessions, policy=NO_WAIT, **kwargs)


def job_ended(note, sessions, job_id: str) -> None:
    from planner.records import Job

    with sessions() as session:
        note.job_ended(session, session.get(Job, job_id))


def rows(sessions) -> list:
    from sqlalchemy import select

    from planner.records import Notification

    with sessions() as session:
        return list(session.scalars(select(Notification).order_by(Notification.created_at)))


def database_dump(url: str) -> str:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as connection:
        return "\n".join(connection.iterdump())


def test_a_local_train_bag_launched_with_a_notify_url_posts_its_success_and_the_url_is_nowhere(
        cli, httpserver, sessions, tiny_model_dir, toy_corpus, monkeypatch, tmp_path, caplog):
    import os

    httpserver.expect_request(SECRET_PATH, method="POST").respond_with_data("ok")  # what Slack answers
    url = webhook_url(httpserver)
    monkeypatch.setenv("PLANNER_NOTIFY_URL", url)
    monkeypatch.setenv("PLANNER_POLL_INTERVAL_S", "0.2")
    monkeypatch.setenv("PLANNER_RUNS_DIR", str(tmp_path / "runs"))
    caplog.set_level(logging.DEBUG)  # urllib3 logs each request's path at DEBUG: it must be redacted
    result = cli("-v", "launch", "train-bag", "--fraction", "0.4", "--model", str(tiny_model_dir), "--data",
                 str(toy_corpus), "--max-steps", "2", "--batch-size", "4", "--backend", "local", "--yes", "--wait",
                 "--json")
    [(job_id, state)] = json.loads(result.stdout)["jobs"].items()
    assert state == "succeeded"
    [body] = posted(httpserver)
    assert set(body) == {"text"} and job_id in body["text"] and "succeeded" in body["text"]
    assert httpserver.log[0][0].headers["Content-Type"] == "application/json"
    deadline = time.monotonic() + 30
    while rows(sessions)[0].state == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    dump = database_dump(os.environ["PLANNER_DB_URL"])
    assert f"job:{job_id}:succeeded" in dump and "sent" in dump  # the event is recorded, and was delivered
    token = SECRET_PATH.rsplit("/", 1)[-1]
    ours = "\n".join(record.getMessage() for record in caplog.records  # the listener's own log names its paths
                     if not record.name.startswith("werkzeug"))
    for where, text in (("stdout", result.stdout), ("stderr", result.stderr), ("logs", ours), ("database", dump)):
        assert url not in text and token not in text and "T0PLANNER" not in text, where
    assert "<PLANNER_NOTIFY_URL>" in ours  # urllib3's line was there, redacted


def test_each_event_is_sent_once_across_ticks_and_processes(httpserver, sessions):
    httpserver.expect_request(SECRET_PATH, method="POST").respond_with_data("ok")
    add_job(sessions, "bag-a", "succeeded")
    first, second = notifier(httpserver, sessions), notifier(httpserver, sessions)  # two supervisor processes
    for note in (first, first, second):  # two ticks of one, one of the other
        job_ended(note, sessions, "bag-a")
    first.wait(30)
    second.wait(30)
    assert len(posted(httpserver)) == 1
    [row] = rows(sessions)
    assert (row.key, row.kind, row.state) == ("job:bag-a:succeeded", "job-succeeded", "sent")


def test_the_caller_never_waits_for_the_webhook_and_transient_failures_are_retried(httpserver, sessions):
    """A 503 and a 429 are retried with backoff; job_ended returns before the webhook has answered."""
    release = threading.Event()
    answers = iter([503, 429, 200])

    def slow_then_flaky(request):
        release.wait(30)
        return Response("ok" if (status := next(answers)) == 200 else "busy", status=status)

    httpserver.expect_request(SECRET_PATH, method="POST").respond_with_handler(slow_then_flaky)
    add_job(sessions, "bag-b", "succeeded")
    note = notifier(httpserver, sessions)
    job_ended(note, sessions, "bag-b")  # returns while the listener still holds the first request
    assert [row.state for row in rows(sessions)] == ["pending"]
    release.set()
    note.wait(30)
    assert len(httpserver.log) == 3
    [row] = rows(sessions)
    assert row.state == "sent" and row.error is None


def test_a_revoked_webhook_is_not_retried_and_its_error_names_no_url(httpserver, sessions):
    httpserver.expect_request(SECRET_PATH, method="POST").respond_with_data("no_service", status=404)  # Slack's
    add_job(sessions, "bag-c", "failed", error="bad input (exit 2): train.jsonl:3: no positive\nlog tail ...")
    note = notifier(httpserver, sessions)
    job_ended(note, sessions, "bag-c")
    note.wait(30)
    assert len(httpserver.log) == 1
    [row] = rows(sessions)
    assert row.state == "failed" and "HTTP 404" in row.error and "no_service" in row.error
    assert "T0PLANNER" not in row.error and "127.0.0.1" not in row.error


def test_a_claim_left_by_a_dead_process_is_delivered_by_the_next_notifier(httpserver, sessions):
    from sqlalchemy import update

    from planner.records import Notification
    from pricing.db import utcnow

    httpserver.expect_request(SECRET_PATH, method="POST").respond_with_data("ok")
    add_job(sessions, "bag-d", "cancelled")
    dead = notifier(httpserver, sessions)
    dead._submit = lambda key: None  # it claims the event, then dies before delivering it
    job_ended(dead, sessions, "bag-d")
    assert not httpserver.log
    with sessions() as session:
        session.execute(update(Notification).values(lease_until=utcnow() - timedelta(seconds=1)))
        session.commit()
    heir = notifier(httpserver, sessions)
    heir.resume_unsent()
    heir.wait(30)
    [body] = posted(httpserver)
    assert "bag-d" in body["text"] and "cancelled" in body["text"]
    assert rows(sessions)[0].state == "sent"


def test_the_text_of_each_job_end(sessions):
    from planner.run.notify import job_text

    add_job(sessions, "ok", "succeeded", dollars=0.5, outcomes=("preempted", "succeeded"))
    add_job(sessions, "bad", "failed", error="bad input (exit 2): train.jsonl:3: no positive\nlog tail:\n...")
    add_job(sessions, "broke", "stopped-by-budget", error="spend would reach $2.10 by the next check, over the "
                                                          "job budget of $2.00; raise it with --budget to go on")
    add_job(sessions, "stop", "cancelled")
    with sessions() as session:
        texts = {job: job_text(session, job) for job in ("ok", "bad", "broke", "stop")}
    assert texts["ok"] == ("planner: job train-bag ok (ok) succeeded: $0.50 over 2 attempts (1 interrupted), "
                           "1.00 h")
    assert texts["bad"].startswith("planner: job train-bag bad (bad) failed: bad input (exit 2): train.jsonl:3: "
                                   "no positive (")
    assert "log tail" not in texts["bad"]  # one line
    assert "stopped by budget: spend would reach $2.10" in texts["broke"]
    assert texts["stop"] == "planner: job train-bag stop (stop) cancelled ($0.25 spent over 1 attempt)"


def test_the_last_job_of_a_campaign_also_sends_the_campaigns_headline(httpserver, sessions):
    httpserver.expect_request(SECRET_PATH, method="POST").respond_with_data("ok")
    add_job(sessions, "bag-1", "succeeded", campaign="camp-1")
    add_job(sessions, "bag-2", "running", campaign="camp-1")
    note = notifier(httpserver, sessions)
    job_ended(note, sessions, "bag-1")  # one job still open: no campaign message yet
    note.wait(30)
    assert len(posted(httpserver)) == 1
    from planner.records import Job

    with sessions() as session:
        session.get(Job, "bag-2").state = "failed"
        session.commit()
    job_ended(note, sessions, "bag-2")
    note.wait(30)
    texts = [body["text"] for body in posted(httpserver, 3)]
    [campaign] = [t for t in texts if "campaign camp-1 finished" in t]
    assert "1/2 jobs succeeded" in campaign and "$0.00 planned, $0.50 billed" in campaign


def test_money_at_risk_is_sent_once_per_subject(httpserver, sessions):
    httpserver.expect_request(SECRET_PATH, method="POST").respond_with_data("ok")
    note = notifier(httpserver, sessions)
    note.orphan_reaped("vast", "planner-bag-x-1", "12345")
    note.orphan_reaped("vast", "planner-bag-x-1", "12345")
    note.provider_paused("runpod", "RunPod: the account balance is too low to start a pod (HTTP 402)")
    note.wait(30)
    texts = sorted(body["text"] for body in posted(httpserver, 2))
    assert len(texts) == 2
    assert "money at risk: runpod is paused for funds: RunPod: the account balance" in texts[0]
    assert "money at risk: the reaper terminated vast instance 12345 (planner-bag-x-1)" in texts[1]
    with pytest.raises(ValueError):
        note.money_at_risk("surprise", "x", "y")


def test_notify_test_sends_one_and_says_what_is_wrong_without_the_url(cli, httpserver, monkeypatch):
    url = webhook_url(httpserver)
    result = cli("notify", "test", code=2)
    assert "PLANNER_NOTIFY_URL is not set" in result.stderr
    monkeypatch.setenv("PLANNER_NOTIFY_URL", "hooks.slack.com/services/T0PLANNER")
    result = cli("notify", "test", code=2)
    assert "not an http(s) URL" in result.stderr and "T0PLANNER" not in result.stderr
    monkeypatch.setenv("PLANNER_NOTIFY_URL", url)
    httpserver.expect_oneshot_request(SECRET_PATH, method="POST").respond_with_data("ok")
    result = cli("notify", "test")
    assert result.stdout.startswith("sent: planner: test notification")
    assert "test notification" in posted(httpserver)[0]["text"]
    httpserver.expect_request(SECRET_PATH, method="POST").respond_with_data("channel_is_archived", status=410)
    result = cli("notify", "test", code=1)
    assert "HTTP 410" in result.stderr
    shown = cli("config", "show", "--json").stdout
    assert json.loads(shown)["values"]["notify_url"]["value"] == "**********"
    for text in (result.stdout, result.stderr, shown):
        assert url not in text and "T0PLANNER" not in text


def test_a_user_config_holding_the_webhook_must_be_private(tmp_path, monkeypatch):
    from planner.config import ConfigError, load_settings

    path = Path(tmp_path / "config.toml")
    path.write_text('notify_url = "https://hooks.slack.com/services/T0PLANNER/B0/x"\n')
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_settings()
    path.chmod(0o600)
    assert load_settings().notify_url.get_secret_value().endswith("/x")


def test_a_box_the_provider_will_not_let_us_end_is_money_at_risk(httpserver, sessions):
    """A rotated or revoked key: the attempt ends in the database, its box bills on; say so once."""
    from planner.records import Attempt, Job
    from planner.run.backends.base import KeyRejected, PollResult, Status
    from planner.run.supervisor import Supervisor

    class RotatedKey:  # the cancel of planner.run.backends.runpod once RunPod answers 401 (test_box_end's rotation)
        name = "runpod"

        def cancel(self, handle):
            raise KeyRejected("RunPod rejected the API key (HTTP 401): could not end pod pod-7, which keeps billing")

    httpserver.expect_request(SECRET_PATH, method="POST").respond_with_data("ok")
    add_job(sessions, "bag-k", "running", outcomes=("running",))
    with sessions() as session:
        attempt = session.query(Attempt).filter_by(job_id="bag-k").one()
        attempt.backend, attempt.provider, attempt.instance_id, attempt.ended_at = "runpod", "runpod", "pod-7", None
        session.commit()
    supervisor = Supervisor(sessions, {"runpod": RotatedKey()}, lambda *args: None,
                            notifier=notifier(httpserver, sessions))
    for _ in range(2):
        with sessions() as session:
            job, attempt = session.get(Job, "bag-k"), session.query(Attempt).filter_by(job_id="bag-k").one()
            supervisor._end_attempt(session, job, attempt, "failed", PollResult(Status.FAILED, detail="x"))
    supervisor.notify.wait(30)
    texts = [body["text"] for body in posted(httpserver)]
    assert len(texts) == 1 and "money at risk: job bag-k attempt 1: instance pod-7 could not be ended" in texts[0]
    assert "keeps billing" in texts[0] and "HTTP 401" in texts[0]
