"""The supervisor against the faults of issue 24, on a fake provider account shared by supervisors and
projects: one launch per attempt under slow creates and skewed clocks (a late create answer is ended,
never left billing), budgets enforced while attempts run, one job's fault kept to that job, a missing key
as a per-job wait, and a cancel that cannot end a box saying so.

The account behaves as RunPod's and Vast's do where it matters here: a create may take minutes (429
retries with backoff, a host search; docs/providers), an instance bills from its create until deleted,
and listing shows every instance of the account whichever project made it."""
from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from jobs.spec import JobSpec
from planner.plan import budget
from planner.plan.placement import Placement
from planner.records import LIVE_ATTEMPT, Attempt, Job
from planner.run import supervisor as supervisor_module
from planner.run.backends.base import Backend, Handle, LaunchPlan, PollResult, Status
from planner.run.supervisor import Supervisor
from pricing.db import database_now, session_factory


class Account:
    """One provider account: instances by id (label), every create counted."""

    def __init__(self):
        self.instances: dict[str, str] = {}
        self.created: list[str] = []
        self.lock = threading.Lock()
        self.create_delay_s = 0.0
        self.during_create = lambda: None  # runs while a create is in flight (a fault injected there)


class Cloud(Backend):
    name = "runpod"

    def __init__(self, account: Account):
        self.account = account

    def plan(self, spec, offer, *, attempt, spot, usd_per_hour, disk_gb=None, max_hours=None):
        return LaunchPlan(self.name, spec.job_id, attempt, spot, usd_per_hour, ("true",), {}, project=self.project)

    def launch(self, plan):
        self.account.during_create()
        time.sleep(self.account.create_delay_s)
        with self.account.lock:
            instance = f"pod-{len(self.account.created) + 1}"
            self.account.created.append(instance)
            self.account.instances[instance] = plan.label
        return Handle(self.name, instance, plan.label)

    def poll(self, handle):
        return PollResult(Status.RUNNING if handle.instance_id in self.account.instances else Status.LOST)

    def cancel(self, handle):
        self.account.instances.pop(handle.instance_id, None)

    def logs(self, handle, tail=200):
        return ""

    def list_labeled(self):
        return [Handle(self.name, instance, label) for instance, label in list(self.account.instances.items())]


def place(usd_per_hour=1.0, worst_case_usd=5.0):
    return lambda session, job, context: Placement("runpod", None, False, usd_per_hour=usd_per_hour,
                                                   worst_case_usd=worst_case_usd)


def add_job(sessions, job_id, spec=None):
    with sessions() as session:
        session.add(Job(id=job_id, name=job_id, kind="merge", backend="runpod",
                        spec=spec or JobSpec(job_id, "merge", f"/tmp/{job_id}",
                                             {"models": ["x"], "weights": [1]}).to_json()))
        session.commit()


def unbilled(sessions, account) -> list[str]:
    """Instances on the account that no live attempt owns: they bill outside every ledger."""
    with sessions() as session:
        owned = set(session.scalars(select(Attempt.instance_id).where(Attempt.outcome.in_(LIVE_ATTEMPT))))
    return [instance for instance in account.instances if instance not in owned]


def test_a_slow_create_beside_a_supervisor_with_a_skewed_clock_launches_once(db_url, monkeypatch):
    """The create takes 8 claim lengths; the other supervisor's clock is 3 minutes ahead and it ticks
    throughout: the claim is renewed on the database's clock, so it never takes the attempt for cut off."""
    monkeypatch.setattr(supervisor_module, "CREATE_LEASE", timedelta(seconds=0.5))
    sessions, account = session_factory(db_url), Account()
    add_job(sessions, "slow")
    first = Supervisor(sessions, {"runpod": Cloud(account)}, place(), budget=budget.Ledger())
    skew = timedelta(minutes=3)
    second = Supervisor(sessions, {"runpod": Cloud(account)}, place(), budget=budget.Ledger(),
                        clock=lambda: first._database_clock() + skew)
    account.create_delay_s = 4.0
    launching = threading.Thread(target=first.tick)
    launching.start()
    while launching.is_alive():
        second.tick()
        time.sleep(0.1)
    launching.join()
    second.tick()
    first.tick()
    assert account.created == ["pod-1"]
    assert unbilled(sessions, account) == []
    with sessions() as session:
        [attempt] = session.scalars(select(Attempt)).all()
        assert attempt.outcome == "running" and attempt.instance_id == "pod-1"


def test_a_create_answering_after_its_attempt_was_taken_over_ends_its_instance(db_url):
    sessions, account = session_factory(db_url), Account()
    add_job(sessions, "late")

    def take_over():  # another supervisor found the claim lapsed and took the attempt over (fence bumped)
        with sessions() as session:
            session.execute(update(Attempt).values(launch_fence=Attempt.launch_fence + 1, outcome="lost",
                                                   launch_lease_until=None))
            session.commit()

    account.during_create = take_over
    supervisor = Supervisor(sessions, {"runpod": Cloud(account)}, place(), budget=budget.Ledger())
    assert supervisor.tick().launched == []
    assert account.created == ["pod-1"] and account.instances == {}  # created, then ended by its own launcher
    with sessions() as session:
        assert session.scalars(select(Attempt.outcome)).all() == ["lost"]


def test_two_projects_on_one_account_leave_each_other_s_boxes_running(db_url, tmp_path):
    from pricing.db import upgrade
    from tests.dbs import fresh_database

    account = Account()
    a_sessions = session_factory(db_url)
    add_job(a_sessions, "a-job")
    a = Supervisor(a_sessions, {"runpod": Cloud(account)}, place(), budget=budget.Ledger())
    assert a.tick().launched == ["a-job"]
    with fresh_database("sqlite", tmp_path / "b") as b_url:
        upgrade(b_url)
        b_sessions = session_factory(b_url)
        add_job(b_sessions, "b-job")
        b = Supervisor(b_sessions, {"runpod": Cloud(account)}, place(), budget=budget.Ledger())
        assert a.project != b.project
        for _ in range(3):
            assert b.tick().reaped == []
        assert a.tick().reaped == []
        assert len(account.instances) == 2 and account.created == ["pod-1", "pod-2"]


def test_a_running_attempt_is_stopped_before_it_passes_the_monthly_budget(db_url, cli, monkeypatch):
    """Only a monthly budget: the attempt reserved its worst case ($5) but runs on; what it accrues counts
    every tick, and it is ended before the month passes the cap. `budget show` shows the accrual."""
    sessions, account = session_factory(db_url), Account()
    with sessions() as session:
        budget.set_monthly_budget(session, 10.0)
    add_job(sessions, "long")
    now = [None]
    supervisor = Supervisor(sessions, {"runpod": Cloud(account)}, place(usd_per_hour=4.0, worst_case_usd=5.0),
                            budget=budget.Ledger(clock=lambda: now[0]), clock=lambda: now[0], poll_interval_s=60)
    with sessions() as session:
        now[0] = database_now(session)
    assert supervisor.tick().launched == ["long"]
    now[0] += timedelta(hours=1.5)  # $6 accrued: past its $5 reservation, the month is still under $10
    with sessions() as session:
        spend = budget.month_spend(session, now[0])
        assert spend.accruing_usd == pytest.approx(6.0, abs=0.01)
        assert spend.committed_usd == pytest.approx(6.0, abs=0.01)
    assert supervisor.tick().finished == []
    now[0] += timedelta(hours=1)  # $10 by now: the next check would pass the cap
    report = supervisor.tick()
    assert report.finished == [("long", "stopped-by-budget")]
    assert account.instances == {}
    with sessions() as session:
        assert "monthly budget of $10.00" in session.get(Job, "long").error
        assert budget.month_spend(session, now[0]).committed_usd <= 10.0 + 1e-6


def test_budget_show_counts_what_running_attempts_accrue(db_url, cli, monkeypatch):
    monkeypatch.setenv("PLANNER_DB_URL", db_url)
    sessions, account = session_factory(db_url), Account()
    with sessions() as session:
        budget.set_monthly_budget(session, 10.0)
    add_job(sessions, "run")
    supervisor = Supervisor(sessions, {"runpod": Cloud(account)}, place(usd_per_hour=4.0, worst_case_usd=1.0))
    supervisor.tick()
    with sessions() as session:  # the attempt has run two hours: $8 accrued, past its $1 reservation
        session.execute(update(Attempt).values(launched_at=database_now(session) - timedelta(hours=2)))
        session.commit()
    data = json.loads(cli("budget", "show", "--json").stdout)
    assert data["accruing_usd"] == pytest.approx(8.0, abs=0.05)
    assert data["committed_usd"] == pytest.approx(8.0, abs=0.05) and data["left_usd"] == pytest.approx(2.0, abs=0.05)
    text = cli("budget", "show").stdout
    assert "accruing" in text and "left: $2.0" in text


def test_one_poisoned_job_is_recorded_on_it_and_the_others_launch(db_url, monkeypatch):
    sessions, account = session_factory(db_url), Account()
    add_job(sessions, "unreadable", spec="{not json")
    add_job(sessions, "poisoned")
    add_job(sessions, "healthy")
    real_poll = Cloud.poll

    def poisoned_poll(self, handle):  # e.g. botocore's EndpointConnectionError, which is no OSError
        if handle.label.endswith("poisoned-a1"):
            raise RuntimeError("Could not connect to the endpoint URL: http://127.0.0.1:9/bucket")
        return real_poll(self, handle)

    monkeypatch.setattr(Cloud, "poll", poisoned_poll)
    supervisor = Supervisor(sessions, {"runpod": Cloud(account)}, place(), budget=budget.Ledger())
    report = supervisor.tick()
    assert report.launched == ["poisoned", "healthy"]
    assert report.finished == [("unreadable", "failed")]  # a spec no relaunch can read: final, nothing launched
    report = supervisor.tick()
    assert set(report.faults) == {"poisoned"} and "skipped this tick: RuntimeError: Could not connect" in \
        "\n".join(report.lines())
    with sessions() as session:
        assert session.get(Job, "poisoned").error.startswith("tick failed: RuntimeError: Could not connect")
        assert session.get(Job, "poisoned").state == "running"  # tried again next tick
        assert session.get(Job, "unreadable").error.startswith("its spec cannot run: the job spec is not valid JSON")
        assert session.scalars(select(Attempt.job_id).order_by(Attempt.job_id)).all() == ["healthy", "poisoned"]


def test_a_missing_key_is_a_per_job_wait_and_a_cancel_says_it_could_not_end_the_box(db_url):
    sessions, account = session_factory(db_url), Account()
    add_job(sessions, "keyed")
    Supervisor(sessions, {"runpod": Cloud(account)}, place(), budget=budget.Ledger()).tick()
    without_key = Supervisor(sessions, {}, lambda session, job, context: Placement(
        "none", None, False, usd_per_hour=0.0, worst_case_usd=0.0), budget=budget.Ledger())
    report = without_key.tick()
    assert report.waiting["keyed"] == ("waiting: its attempt runs on runpod (pod-1), which this process cannot "
                                       "reach: set RUNPOD_API_KEY")
    with sessions() as session:
        session.execute(update(Job).where(Job.id == "keyed").values(cancel_requested=True))
        session.commit()
    report = without_key.tick()
    assert report.finished == [] and "cannot end" in report.waiting["keyed"]
    assert account.instances  # still there: nothing claimed it was ended
    with sessions() as session:
        assert session.get(Job, "keyed").state == "running"


def test_storage_credentials_quoted_in_a_provider_message_are_never_stored_or_served(db_url, cli, monkeypatch):
    from planner.config import load_settings
    from planner.run.backends.base import BackendError
    from planner.run.credentials import secret_values

    secret, key_id = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY", "AKIAIOSFODNN7SECRET"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_provider_key_never_stored")
    monkeypatch.setenv("PLANNER_STORAGE_URI", "s3://planner-bucket/runs")
    secrets = secret_values(load_settings())
    assert {secret, key_id, "rpa_provider_key_never_stored"} <= set(secrets)
    sessions, account = session_factory(db_url), Account()
    add_job(sessions, "echo")

    def echoing_create():  # a provider rejecting the request and quoting its env back
        raise BackendError(f"400: invalid env {{'AWS_ACCESS_KEY_ID': '{key_id}', 'AWS_SECRET_ACCESS_KEY': '{secret}'}}")

    account.during_create = echoing_create
    supervisor = Supervisor(sessions, {"runpod": Cloud(account)}, place(), budget=budget.Ledger(), secrets=secrets)
    supervisor.tick()
    account.during_create = lambda: None

    def failing_poll(self, handle):
        raise RuntimeError(f"GET https://bucket.s3/?X-Amz-Credential={key_id}&token=rpa_provider_key_never_stored")

    supervisor.tick()  # launched now
    monkeypatch.setattr(Cloud, "poll", failing_poll)
    report = supervisor.tick()
    shown = cli("jobs", "show", "echo", "--json").stdout + json.dumps(report.faults)
    with sessions() as session:
        stored = json.dumps([[a.detail for a in session.scalars(select(Attempt))], session.get(Job, "echo").error])
    assert "launch failed: 400: invalid env" in stored and "***" in stored
    for text in (stored, shown):
        assert secret not in text and key_id not in text and "rpa_provider_key_never_stored" not in text


def test_a_relaunch_is_not_refused_by_its_own_reservation_under_a_monthly_budget(db_url):
    """The drill found it: with a monthly budget near the job's, a preempted job's relaunch was planned
    against the month less its own reservation, and stopped by budget having spent cents."""
    from planner.config import load_settings
    from planner.plan.plans import limits_for

    sessions = session_factory(db_url)
    with sessions() as session:
        budget.set_monthly_budget(session, 10.3)
    add_job(sessions, "again")
    with sessions() as session:
        job = session.get(Job, "again")
        job.budget_usd = 10.0
        session.commit()
        assert budget.Ledger().reserve(session, job, 9.9) is None  # the first attempt's worst case
        limits = limits_for(job, load_settings(db_url=db_url), session)
    assert limits.budget_left_usd == pytest.approx(10.0)  # the job's own budget binds, not 10.3 - 9.9


def test_the_reaper_reads_live_attempts_after_its_listing(db_url, monkeypatch):
    """A reaper pass (the dashboard's Cancel runs one beside serve's own) that read live attempts before
    listing ended an instance another supervisor launched in between."""
    from planner.run import reaper

    sessions, account = session_factory(db_url), Account()
    add_job(sessions, "meanwhile")
    launcher = Supervisor(sessions, {"runpod": Cloud(account)}, place(), budget=budget.Ledger())
    real_list = Cloud.list_labeled
    launched = []

    def list_while_another_launches(self):
        if not launched:  # the other supervisor's launch lands during the listing (its own reaper lists too)
            launched.append(None)
            launched[0] = launcher.tick().launched
        return real_list(self)

    monkeypatch.setattr(Cloud, "list_labeled", list_while_another_launches)
    assert reaper.reap(sessions, {"runpod": Cloud(account)}) == []
    assert launched == [["meanwhile"]] and list(account.instances) == ["pod-1"]


def test_a_launch_claim_of_a_supervisor_killed_on_this_host_is_taken_at_once(db_url):
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sessions, account = session_factory(db_url), Account()
    add_job(sessions, "claimed")
    with sessions() as session:  # claimed for 10 minutes by a supervisor that was then killed with -9
        session.execute(update(Job).values(lease_owner=f"{socket.gethostname()}:{dead.pid}:abc123",
                                           lease_until=database_now(session) + timedelta(minutes=10)))
        session.commit()
    supervisor = Supervisor(sessions, {"runpod": Cloud(account)}, place(), budget=budget.Ledger())
    assert supervisor.tick().launched == ["claimed"]
    with sessions() as session:  # a live holder (another host's, or this host's running process) keeps it
        session.add(Job(id="held", name="held", kind="merge", backend="runpod", spec=JobSpec(
            "held", "merge", "/tmp/held", {"models": ["x"], "weights": [1]}).to_json(),
            lease_owner="other-host:1:abc", lease_until=database_now(session) + timedelta(minutes=10)))
        session.commit()
    assert supervisor.tick().launched == []
