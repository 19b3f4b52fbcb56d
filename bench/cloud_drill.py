"""Cloud reliability drill: randomized fault schedules against the supervisor, its RunPod and Vast.ai
backends and the simulated cloud (tests/simcloud), each running the real train-bag job on the tiny model.

    .venv/bin/python bench/cloud_drill.py [--schedules 20] [--seed 0] [--out bench/out/cloud_drill.md]
    .venv/bin/python bench/cloud_drill.py --money [--schedules 20]    # the faults that cost money
    .venv/bin/python bench/cloud_drill.py --project-faults [--schedules 10]    # issue 24's faults

One wheel build, one moto S3 server and one uninterrupted reference run (the job run directly, on
local files) serve every schedule. Each schedule is one train-bag job on a fresh database, fresh fake
providers (so each has its own billing ledger) and its own bucket, launched with `--backend vast` (spot),
`runpod` (on-demand) or `auto` (any, or on-demand), and supervised by a separate process
(`cloud_drill.py --supervise CONFIG`: build_supervisor, then tick every 0.3 s until no job is open, then
one last tick, whose reaper pass ends any labelled instance nobody owns) that the drill kill -9s and
restarts. Faults drawn from the schedule's seed:

  outbids           Vast spot boxes only: 0-2, each once the box has logged 1-6 training steps;
  no capacity       RunPod in play: p 0.6, a burst of 1-3 `400 There are no longer any instances available`
                    answered to the first creates;
  429 storms        1-2, at 0-35 s, 2-8 in a row on one route (RunPod's with `Retry-After: 1`, Vast's with
                    none, as each documents): creates, polls, searches of the providers in play, and both
                    listings (the reaper lists both every tick);
  5xx on polls      1-2, at 3-40 s, 1-12 in a row of 500/502/503 on the poll route (rp.get, vast.list);
  orphans           RunPod in play: p 0.35, the 1st or 2nd create makes the pod and answers 502 (the launch
                    fails, the pod carries our label: the reaper must end it); Vast spot: p 0.35, the minimum
                    bid rises 15 % between the search and the create, so the bid loses (400 invalid_price with
                    a stopped `new_contract` the client destroys), and with p 0.5 that destroy meets five 503s
                    (the reaper must end it);
  supervisor kills  p 0.5 and p 0.2, kill -9 at a random moment (2-40 s); p 0.5, kill -9 mid-launch: inside
                    the fake's create handler, after the instance exists and before the answer (the database
                    never learns its id: the restarted supervisor must adopt it); restarts come 0.5-3 s later;
  out of funds      two schedules in twenty (index 6 of each ten, on RunPod): `402` on the first create, or
                    on the second after the first pod's host died mid-training; the job must fail with the
                    balance message.

The supervisor process runs with the create claim (CREATE_LEASE, renewed every quarter of it while a create
is in flight) cut from 60 s to 6 s and LAUNCH_LEASE from 10 min to 30 s (time compression), and with the
interrupted-offer cool-down at 20 s (`preempted_cooldown`), so a schedule does not wait out
production-length timers. Checked for every schedule: the job ends as expected (succeeded; failed with
the balance message for the 402 ones); a succeeded job's weights are bitwise those of the reference;
the supervisor never crashed (only our kills ended it); no instance is left at either fake (running or
stopped: a stopped Vast instance still bills its disk) and no attempt is left open; spend within the
job's budget; the dollars settled over its attempts are not below the fakes' billing ledger (within the
tolerance test_simcloud uses: 5 % or $0.0002), and summed over the run they equal it within that
tolerance, as test_simcloud compares a campaign's sum (a schedule may settle more than was billed: a box
stopped by its provider, or that deleted itself once its job ended (jobs.boxend), while the supervisor was
dead, rate-limited, between polls or waiting to adopt a cut-off launch is settled up to when the supervisor
saw it gone, as no provider says when a box ended: the drill takes those ends from the fakes); no secret
(the store's key, either provider key) in the database, the supervisor's log or any request the fakes
received (the Authorization header aside), and no provider key in any box's environment.

`--money` runs the faults that cost money instead, one per schedule in turn (the provider alternating
between Vast spot and RunPod on-demand where both apply), each checked for 0 instances billing at the end
and billed <= the job's budget:

  killed for good   the supervisor is kill -9'd once the box has trained a step (or is KILL_BY_S old) and
                    not restarted until
                    every box is gone: each box must end itself when its job ends or by its deadline (the
                    attempt's max_hours from its reservation; its script starts at the create here, so the
                    deadline is create + max_hours), and what those boxes billed <= what the job's
                    reservation holds for them (the reservation less what earlier attempts settled). The plan's startup allowance is
                    cut to DEADLINE_STARTUP_HOURS in the supervisor process (time compression) so the
                    reservation, and with it the deadline, is ~1.5 min (spot: at the bid cap) and some boxes
                    stop at it mid-training
                    (checkpoint, exit 75). Then the supervisor comes back and the job must succeed, its
                    weights bitwise those of the reference;
  install fails     PLANNER_JOBS_INSTALL names a wheel that does not exist, the startup window is 6 s and
                    max failures 3: the job fails after 3 boxes naming why, nothing left billing;
  key rotated       the account key is rotated at the provider once the box has trained a step; the
                    supervisor, still on the old key, must wait, not call the box lost: once the box has
                    ended itself (its job done, its instance-scoped key) and the old key has been refused
                    for more polls than MAX_POLL_FAILURES, the job must still be running with its one attempt
                    live and its error naming the key (checked as "waited"); then the lab's fix, a
                    supervisor started with the new key, must see the box ended as its job did: the job
                    succeeds, its weights those of the reference, settled = billed as for any box that
                    ended itself (settled up to when the supervisor saw it gone);
  balance runs out  RunPod only (its $0 behaviour and 402 are documented; what Vast answers to a create at
                    $0 is not): the balance is spent once the box has trained a step, RunPod terminates the
                    pod, and the relaunch meets a 402: the job fails naming the balance.

`--project-faults` runs issue 24's faults instead, all in every schedule, the job on Vast spot or RunPod
on-demand in turn (class ProjectWatch):

  second project    a second database (its own project identity) on the same account (both keys, both fakes)
                    and runs directory: its supervisor process ticks every 0.3 s, its reaper listing both
                    providers, until the drill ends; it must end none of this project's boxes;
  clock skew        a second supervisor process of this project, its clock (`Supervisor.clock` and its
                    budget's, as bench/drill.py skews them) SKEW_S = 3 min ahead, ticks beside the first all along
                    (leases and claims stay on the database's clock);
  slow creates      the 1st, the 2nd or both creates answer SLOW_CREATE_S = 15 s after the instance exists
                    (2.5 create claims of 6 s: the claim must be renewed, not taken over) while both supervisors
                    tick;
  store down        the corpus lives in the schedule's bucket (as a lab's often does: the planner sizes it
                    there at every placement); 1-2 bursts at 0-40 s of 2-8 s in which the moto S3 server refuses
                    every request (tests/simcloud/s3.py `outage`), answering 503 ServiceUnavailable or resetting the
                    connection: the supervisors' reads and the boxes' uploads see it (a box rides it out through
                    botocore's retries and its checkpoint upload retry, or fails and is relaunched from its
                    checkpoint); and, as the first attempt ends (the Vast box outbid, or the RunPod host dead,
                    after 1-4 steps), 40-50 s in which the corpus's object is refused, so the relaunch is planned
                    while its store is down: it must wait ("waiting: the store holding ... is unreachable (...);
                    retrying"), never be sized by the 1 M-record assumption and stopped by budget;
  poisoned job      a job whose spec is torn JSON, beside the drilled one: failed in one line, nothing else stops;
  key missing       a job whose live attempt runs on the provider the drilled job does not use, whose key is not
                    set where the supervisors run (RUNPOD_API_KEY on Vast schedules, VAST_API_KEY on RunPod
                    ones): it waits, saying "set <KEY>";
plus one 429 storm on the provider in play and the supervisor kills of the default draw (p 0.5 at 2-40 s,
p 0.4 mid-launch). The monthly budget is the job's + $0.30. Checked per schedule, beside outcome, weights, no
crash, no orphan and no secret: double launches 0 (instances created per attempt label at the fakes' billing
ledgers, plus attempts of the job live at once), unbilled boxes 0 (an instance no attempt row knows, sampled every 0.25 s, for more than
UNOWNED_GRACE_S), boxes the second project ended 0 (its reaper's report), budgets held while attempts run
(sampled every second: the job's settled + accruing and what the fakes billed <= its budget; the month's
settled + accruing, committed and billed <= the monthly budget), the poisoned job failed in one line, the keyed
one waiting with its key's name, and the other two supervisors ran to the end. Settled = billed is not
checked here: the skewed supervisor's times are 3 minutes off by design (production supervisors use the
database's clock); what the fakes billed is compared with the budgets instead.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# a chunk every offer holds, so the reference run and every box chunk alike (as test_simcloud pins it: a chunk the
# planner picks for a card may differ from the reference's, and sorted chunks of another size round differently)
TRAIN = {"batch_size": 4, "max_steps": 8, "save_every_steps": 2, "mini_batch_size": 8}
FRACTION, SEED, METHOD = 0.5, 3, "full"
BUDGET = 2.0
CREATE_LEASE_S, LAUNCH_LEASE_S, COOLDOWN_S = 6, 30, 20
SCHEDULE_TIMEOUT_S = 600
MONEY_FAULTS = ("killed for good", "install fails", "key rotated", "balance runs out")
DEADLINE_STARTUP_HOURS = 0.012  # killed-for-good schedules: the plan's startup allowance (0.15 h in production)
DEADLINE_ENV = "DRILL_STARTUP_HOURS"
KILL_BY_S = 20  # killed for good: a box up this long counts as started (a loaded machine trains slowly)
SELF_END_TIMEOUT_S = 240  # how long the boxes of a dead supervisor get to end themselves
DEADLINE_SLACK_S = 2.0  # an instance gone this long after create + max_hours still ended "by its deadline"
                        # (the box's delete call and the fake's per-second clock)
BACKENDS = [("vast", "spot"), ("runpod", "on-demand"), ("auto", "any"), ("auto", "on-demand")]
NO_CAPACITY = {"title": "Bad Request", "status": 400, "detail": "There are no longer any instances available with "
               "the requested specifications. Please refresh and try again."}
OUT_OF_FUNDS = {"title": "Payment Required", "status": 402, "detail": "Insufficient balance to create this pod."}
POLL_ROUTES = {"runpod": "rp.get", "vast": "vast.list"}
STORM_ROUTES = ["rp.create", "rp.get", "rp.list", "vast.search", "vast.create", "vast.list"]
PROJECT_BACKENDS = [("vast", "spot"), ("runpod", "on-demand")]  # --project-faults: the key of the other is missing
MONTHLY_OVER_JOB = 0.3  # --project-faults: the monthly budget, this much above the job's
SLOW_CREATE_S = 15.0  # a slow create answers this long after the instance exists: 2.5 create claims
SKEW_S = 180.0  # the second supervisor's clock, this far ahead
UNOWNED_GRACE_S = 5.0  # an instance no attempt row knows for longer than this bills outside every ledger
SKEW_ENV, ROLE_ENV = "DRILL_SKEW_S", "DRILL_ROLE"
CORPUS_KEY = "data/train.jsonl"  # --project-faults: where the corpus lives in the schedule's bucket


# ---------------------------------------------------------------------------------------------- supervisor


def supervise(config_path: str) -> int:
    """The supervisor process: tick until no job is open, then one last tick (the reaper), exit 0."""
    from datetime import timedelta

    import planner.run.supervisor as supervisor_module
    from planner.config import load_settings
    from planner.run.launching import build_supervisor
    from pricing.db import session_factory

    supervisor_module.CREATE_LEASE = timedelta(seconds=CREATE_LEASE_S)
    if os.environ.get(DEADLINE_ENV):  # a short reservation, so a box's deadline comes within the drill
        import planner.plan.choose as choose_module

        choose_module.STARTUP_HOURS = choose_module.RESTART_HOURS = float(os.environ[DEADLINE_ENV])
    supervisor_module.LAUNCH_LEASE = timedelta(seconds=LAUNCH_LEASE_S)
    settings = load_settings(**json.loads(Path(config_path).read_text()))  # the API keys: from the environment
    supervisor = build_supervisor(settings, session_factory(settings.db_url))
    if os.environ.get(SKEW_ENV):  # a host whose clock runs ahead (as bench/drill.py skews it): this supervisor's
        skew = timedelta(seconds=float(os.environ[SKEW_ENV]))  # times and its budget's; leases and claims keep
        clock = supervisor.clock  # the database's
        supervisor.clock = supervisor.budget.clock = lambda: clock() + skew
    neighbour = os.environ.get(ROLE_ENV) == "neighbour"  # another project's: it ticks (its reaper) until killed
    print(json.dumps({"t": time.time(), "event": "started", "pid": os.getpid()}), flush=True)
    waiting = 0  # jobs the last tick left waiting for a backend this process lacks (a key not set here)
    while True:
        done = not neighbour and supervisor.open_jobs() <= waiting
        report = supervisor.tick()
        waiting = len(report.waiting)
        for line in report.lines():
            print(json.dumps({"t": time.time(), "event": line}), flush=True)
        for label in report.reaped:
            print(json.dumps({"t": time.time(), "reaped": label}), flush=True)
        if done:
            return 0
        time.sleep(settings.poll_interval_s)


# ---------------------------------------------------------------------------------------------- a schedule


@dataclass
class Faults:
    backend: str
    spot: str
    outbid_after_steps: list[int] = field(default_factory=list)
    no_capacity: list[int] = field(default_factory=list)  # bursts answered to the first creates
    storms: list[tuple[float, str, int]] = field(default_factory=list)  # (at s, route, count)
    poll_5xx: list[tuple[float, str, int, int]] = field(default_factory=list)  # (at s, route, count, status)
    kill_at: list[float] = field(default_factory=list)
    kill_mid_launch_at_create: set[int] = field(default_factory=set)
    out_of_funds_at_create: int | None = None
    lost_answer_at_create: set[int] = field(default_factory=set)  # RunPod makes the pod, answers 502
    losing_bid_at_create: set[int] = field(default_factory=set)  # Vast's min_bid rises just before our bid lands
    destroy_fails: bool = False  # ... and the losing bid's new_contract cannot be destroyed at once (503s)
    host_failure_after_steps: int | None = None  # the first RunPod pod's host dies (the 402-on-relaunch case)
    money: str | None = None  # one of MONEY_FAULTS
    money_after_steps: int = 1  # ... done once a box has trained this many steps
    project: bool = False  # --project-faults (issue 24): the fields below, and the side jobs and neighbours
    slow_create_at: set[int] = field(default_factory=set)  # these creates answer SLOW_CREATE_S after the instance
    outages: list[tuple[float, float, str]] = field(default_factory=list)  # (at s, seconds, mode): the store down
    outage_at_relaunch: tuple[float, str] | None = None  # (seconds, mode): the store goes down as the attempt ends
    missing_key: str | None = None  # absent where the supervisors run; the keyed side job's attempt is there

    @property
    def expected(self) -> str:
        return "failed" if self.out_of_funds_at_create or self.money in (
            "install fails", "balance runs out") else "succeeded"

    @property
    def expected_words(self) -> str:
        """What the job's error must say, for the failures expected."""
        return {"install fails": "did not start the job", "balance runs out": "balance"}.get(self.money or "", "balance" if self.out_of_funds_at_create else "")


def draw_money_faults(index: int, rng: random.Random) -> Faults:
    money = MONEY_FAULTS[index % len(MONEY_FAULTS)]
    backend, spot = ("vast", "spot") if (index // len(MONEY_FAULTS)) % 2 == 0 else ("runpod", "on-demand")
    if money == "balance runs out":
        backend, spot = "runpod", "on-demand"
    return Faults(backend, spot, money=money, money_after_steps=rng.randint(1, 3))


def draw_project_faults(index: int, rng: random.Random) -> Faults:
    from tests.simcloud.s3 import OUTAGE_MODES

    backend, spot = PROJECT_BACKENDS[index % len(PROJECT_BACKENDS)]
    faults = Faults(backend, spot, project=True, missing_key="RUNPOD_API_KEY" if backend == "vast" else "VAST_API_KEY")
    if backend == "vast":
        faults.outbid_after_steps = [rng.randint(1, 4)]
    else:
        faults.host_failure_after_steps = rng.randint(1, 4)
    faults.outage_at_relaunch = (rng.uniform(40, 50), rng.choice(OUTAGE_MODES))
    faults.outages = [(rng.uniform(0, 40), rng.uniform(2, 8), rng.choice(OUTAGE_MODES)) for _ in range(rng.randint(1, 2))]
    faults.slow_create_at = {1, 2} if rng.random() < 0.5 else {rng.choice([1, 2])}
    route = rng.choice(["rp.create", "rp.get", "rp.list"] if backend == "runpod" else ["vast.create", "vast.list"])
    faults.storms.append((rng.uniform(0, 35), route, rng.randint(2, 6)))
    if rng.random() < 0.5:
        faults.kill_at.append(rng.uniform(2, 40))
    if rng.random() < 0.4:
        faults.kill_mid_launch_at_create.add(rng.choice([1, 2]))
    return faults


def draw_faults(index: int, rng: random.Random) -> Faults:
    backend, spot = BACKENDS[index % len(BACKENDS)]
    out_of_funds = index % 10 == 6
    if out_of_funds:
        backend, spot = "runpod", "on-demand"
    faults = Faults(backend, spot)
    providers = {"vast": ["vast"], "runpod": ["runpod"]}.get(backend, ["runpod", "vast"])
    if "vast" in providers and spot != "on-demand":
        faults.outbid_after_steps = [rng.randint(1, 6) for _ in range(rng.choice([0, 1, 1, 2]))]
    if "runpod" in providers and not out_of_funds and rng.random() < 0.6:
        faults.no_capacity.append(rng.randint(1, 3))
    routes = [r for r in STORM_ROUTES if r.split(".")[0] in {"rp" if p == "runpod" else p for p in providers}]
    for _ in range(rng.randint(1, 2)):  # the reaper lists both providers every tick: their listings are in play
        faults.storms.append((rng.uniform(0, 35), rng.choice(routes + ["rp.list", "vast.list"]), rng.randint(2, 8)))
    for _ in range(rng.randint(1, 2)):
        faults.poll_5xx.append((rng.uniform(3, 40), POLL_ROUTES[rng.choice(providers)], rng.randint(1, 12),
                                rng.choice([500, 502, 503])))
    for chance in (0.5, 0.2):
        if rng.random() < chance:
            faults.kill_at.append(rng.uniform(2, 40))
    if rng.random() < 0.5:
        faults.kill_mid_launch_at_create.add(rng.choice([1, 2]))
    if "runpod" in providers and not out_of_funds and rng.random() < 0.35:
        faults.lost_answer_at_create.add(rng.choice([1, 2]))
    if "vast" in providers and spot != "on-demand" and rng.random() < 0.35:
        faults.losing_bid_at_create.add(rng.choice([1, 2]))
        faults.destroy_fails = rng.random() < 0.5
    faults.kill_mid_launch_at_create -= faults.lost_answer_at_create | faults.losing_bid_at_create
    if out_of_funds:
        faults.out_of_funds_at_create = rng.choice([1, 2])
        if faults.out_of_funds_at_create == 2:
            faults.host_failure_after_steps = rng.randint(1, 4)
        faults.kill_mid_launch_at_create.discard(faults.out_of_funds_at_create)
    return faults


class Driver:
    """The supervisor process: started, kill -9'd and restarted by the drill."""

    def __init__(self, config: Path, log: Path, env: dict[str, str]):
        self.config, self.log, self.env = config, log, env
        self.process: subprocess.Popen | None = None
        self.kills = self.crashes = self.starts = 0
        self.killed_by_us = False

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--supervise",
                                             str(self.config)], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=ROOT)
        self.starts += 1
        self.killed_by_us = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def kill(self) -> bool:
        if self.pid is None:
            return False
        self.killed_by_us = True
        os.kill(self.process.pid, signal.SIGKILL)
        self.kills += 1
        return True

    def ended(self) -> int | None:
        return None if self.process is None else self.process.poll()


def box_steps(box) -> int:
    return sum(1 for line in box.lines() if line.lstrip().startswith("step "))


def bill_spans(fake) -> dict[str, tuple]:
    """instance id -> (created, ended or None, $/h at the end) from a fake's billing ledger (UTC, aware)."""
    from datetime import timezone

    def aware(t):
        return None if t is None else t.replace(tzinfo=timezone.utc)

    spans = {}
    for instance_id, bill in fake.bills.items():
        if "segments" in bill:  # Vast: segments [start, end, rate]
            first, last = bill["segments"][0], bill["segments"][-1]
            spans[str(instance_id)] = (aware(first[0]), aware(last[1]), last[2])
        else:  # RunPod: one span
            spans[str(instance_id)] = (aware(bill["start"]), aware(bill["end"]), bill["rate"])
    return spans


def money_fault(kind: str, fake, driver: "Driver", sessions, job_id: str, reservation_table) -> dict:
    """Do one fault that costs money to the running schedule; returns what it did and saw."""
    import json as json_module

    from planner.records import Attempt
    from pricing.db import utcnow
    from tests.simcloud.runpod import FakeRunPod

    provider = "runpod" if isinstance(fake, FakeRunPod) else "vast"
    if kind == "key rotated":
        return {"new_key": fake.rotate_key(), "key_env": "RUNPOD_API_KEY" if provider == "runpod" else "VAST_API_KEY"}
    if kind == "balance runs out":
        alive = {pod_id: pod["cost"] for pod_id, pod in fake.pods.items()}
        fake.funds = fake.billed_usd()  # spent: the provider stops (and, without a volume, deletes) its pods
        return {"stops": {(provider, pod_id): (utcnow(), rate) for pod_id, rate in alive.items()}}
    # killed for good: nobody settles, reaps or cancels; each box must end itself
    left_running = [str(i) for i, box in list(fake.boxes.items()) if box.alive]
    driver.kill()
    killed_at = time.monotonic()
    while (fake.live() or (fake.pods if provider == "runpod" else fake.instances)) and \
            time.monotonic() - killed_at < SELF_END_TIMEOUT_S:
        time.sleep(0.25)
    spans = bill_spans(fake)
    with sessions() as session:
        attempts = session.query(Attempt).filter(Attempt.job_id == job_id).all()
        reserved = session.get(reservation_table, job_id)
        spent_before = sum(a.dollars or 0.0 for a in attempts if a.ended_at is not None)  # what the rest holds
        deadlines = {a.instance_id: json_module.loads(a.handle or "{}").get("data", {}).get("max_hours")
                     for a in attempts if a.instance_id}
    late, stops = [], {}
    for instance_id, (created, ended, rate) in spans.items():
        hours = deadlines.get(instance_id)
        if ended is None or not hours:
            late.append(1e9)  # still billing, or a box we cannot judge
            continue
        late.append((ended - created).total_seconds() - hours * 3600)
        stops[(provider, instance_id)] = (ended, rate)
    driver.env.pop(DEADLINE_ENV, None)  # the supervisor comes back with production timings
    labels = {str(i): bill.get("label", bill.get("name", "")) for i, bill in fake.bills.items()}
    return {"all_ended": not fake.live() and not (fake.pods if provider == "runpod" else fake.instances),
            "late_s": late, "billed": sum(fake.billed_usd(labels[i]) for i in left_running),
            "reserved": (reserved.usd - spent_before) if reserved else 0.0,
            "dead_s": time.monotonic() - killed_at, "stops": stops}


class ProjectWatch:
    """--project-faults: what sits beside the drilled job (a poisoned job, a keyed one, a monthly budget near the
    job's), the other supervisors on the account (the same project's, its clock SKEW_S ahead; a second project's,
    its own database), and what is watched while they run: instances no attempt row knows, the money."""

    def __init__(self, faults: Faults, session, directory: Path, overrides: dict):
        from bench.drill import poisoned_and_keyed
        from planner.plan import budget as budgets
        from planner.records import project_id
        from pricing.db import upgrade
        from tests.simcloud.world import keys

        self.faults, self.directory = faults, directory
        self.monthly = BUDGET + MONTHLY_OVER_JOB
        budgets.set_monthly_budget(session, self.monthly)
        poisoned_and_keyed(session, keyed_on="runpod" if faults.missing_key == "RUNPOD_API_KEY" else "vast")
        self.project = project_id(session)
        neighbour_db = f"sqlite:///{directory / 'neighbour.db'}"  # the second project: same keys, fakes, runs dir
        upgrade(neighbour_db)
        (directory / "neighbour.json").write_text(json.dumps({**overrides, "db_url": neighbour_db}))
        env = {**os.environ, **keys()}
        self.second = Driver(directory / "settings.json", directory / "second.log", {**env, SKEW_ENV: str(SKEW_S)})
        self.second.env.pop(faults.missing_key)
        self.neighbour = Driver(directory / "neighbour.json", directory / "neighbour.log", {**env, ROLE_ENV: "neighbour"})
        self.unknown_since: dict[tuple[str, str], float] = {}
        self.unbilled: set[str] = set()
        self.concurrent: set[tuple[int, ...]] = set()
        self.peak_job = self.peak_month = 0.0
        self.store_waits, self.waiting_for_store, self.budget_read_at = 0, False, 0.0
        self.reported: set[str] = set()

    def start(self) -> None:
        self.second.start()
        self.neighbour.start()

    def stop(self) -> None:
        for driver in (self.second, self.neighbour):
            if driver.pid is not None:
                driver.kill()

    def watch(self, sessions, runpod, vast, job_id: str, problems: list[str]) -> None:
        """Once per drill loop: instances no attempt row knows (for longer than UNOWNED_GRACE_S: unbilled), the
        job's and the month's money (settled + accruing, committed, and what the fakes billed), the relaunch
        waiting for the store, and the other supervisors still running as they should."""
        from sqlalchemy import select

        from planner.plan import budget as budgets
        from planner.records import LIVE_ATTEMPT, Attempt, Job
        from planner.run.backends.base import parse_label
        from pricing.db import database_now

        listed = ([("runpod", pod_id, pod.get("name") or "") for pod_id, pod in list(runpod.pods.items())]
                  + [("vast", str(i), instance.get("label") or "") for i, instance in list(vast.instances.items())])
        at = time.monotonic()
        with sessions() as session:
            rows = {(a.job_id, a.number): (a.instance_id, a.outcome) for a in session.scalars(select(Attempt))}
            live = sorted(number for (job, number), (_, outcome) in rows.items() if job == job_id and outcome in LIVE_ATTEMPT)
            if len(live) > 1:  # two attempts of the job at once: a launch made twice (the job's claim, not the attempt's)
                self.concurrent.add(tuple(live))
            unknown = set()
            for provider, instance_id, label in listed:
                parsed = parse_label(label)
                if parsed is None or parsed.project not in (self.project, None):
                    continue
                owner, outcome = rows.get((parsed.job_id, parsed.attempt), ("", ""))
                if owner == instance_id or (owner is None and outcome in LIVE_ATTEMPT):
                    continue  # known (a create in flight has its row; the id comes with the answer)
                unknown.add((provider, instance_id))
                if at - self.unknown_since.setdefault((provider, instance_id), at) > UNOWNED_GRACE_S:
                    self.unbilled.add(f"{provider}:{instance_id} {label}")
            self.unknown_since = {k: v for k, v in self.unknown_since.items() if k in unknown}
            waiting = (session.get(Job, job_id).error or "").startswith("waiting: the store holding")
            self.store_waits += waiting and not self.waiting_for_store
            self.waiting_for_store = waiting
            if at - self.budget_read_at >= 1.0:
                self.budget_read_at = at
                now = database_now(session)
                live, month = budgets.accruing(session, now), budgets.month_spend(session, now)
                billed = runpod.billed_usd("planner-") + vast.billed_usd("planner-")
                self.peak_job = max(self.peak_job, budgets.job_spent(session, job_id) + live.get(job_id, 0.0), billed)
                self.peak_month = max(self.peak_month, month.settled_usd + month.accruing_usd, month.committed_usd, billed)
        for name, driver in (("the second supervisor", self.second), ("the second project's supervisor", self.neighbour)):
            code = driver.ended()
            if code is not None and not driver.killed_by_us and (code != 0 or driver is self.neighbour) \
                    and name not in self.reported:
                self.reported.add(name)
                driver.crashes += 1
                tail = driver.log.read_text(errors="replace").splitlines()[-1:]
                problems.append(f"{name} ended (exit {code}): {' '.join(tail)[-200:]}")

    def logs(self) -> str:
        return "\n".join(d.log.read_text(errors="replace") for d in (self.second, self.neighbour) if d.log.exists())

    def results(self, sessions, runpod, vast, billed: float) -> tuple[dict, dict]:
        """The checks of issue 24 (see the docstring) and the row's numbers."""
        from collections import Counter

        from planner.records import Job

        creates = Counter(bill.get("label", bill.get("name", "")) for fake in (runpod, vast) for bill in fake.bills.values())
        doubles = sum(n - 1 for n in creates.values() if n > 1) + sum(len(c) - 1 for c in self.concurrent)
        neighbour_reaped = sum('"reaped"' in line for line in self.neighbour.log.read_text(errors="replace").splitlines())
        with sessions() as session:
            poisoned, keyed = session.get(Job, "poisoned"), session.get(Job, "keyed")
            poisoned_ok = poisoned.state == "failed" and "\n" not in (poisoned.error or "x\n")
            keyed_ok = keyed.state == "running" and (keyed.error or "").startswith("waiting: ") and \
                f"set {self.faults.missing_key}" in keyed.error
            side = f"poisoned {poisoned.state}: {(poisoned.error or '')[:60]}; keyed {keyed.state}: {keyed.error}"
        checks = {"0 double launches": doubles == 0, "0 unbilled": not self.unbilled,
                  "second project ended none": neighbour_reaped == 0,
                  "budgets held": self.peak_job <= BUDGET + 1e-9 and self.peak_month <= self.monthly + 1e-9
                  and billed <= BUDGET, "poisoned failed in one line": poisoned_ok,
                  f"keyed waits for {self.faults.missing_key}": keyed_ok,
                  "other supervisors ran": not self.reported}
        return checks, {"double launches": doubles, "unbilled": len(self.unbilled), "unbilled labels": sorted(self.unbilled),
                        "concurrent attempts": sorted(self.concurrent), "neighbour reaped": neighbour_reaped, "peak job": self.peak_job, "peak month": self.peak_month,
                        "monthly": self.monthly, "store waits": self.store_waits,
                        "side jobs": side, "side jobs ok": poisoned_ok and keyed_ok,
                        "missing key": self.faults.missing_key}


def own_instance(fake, attempt) -> str | None:
    """The instance a cut-off launch created, by its label (the attempt never learned its id: its box had
    reported and deleted itself before the takeover, and it was ended as its report said)."""
    label = json.loads(attempt.handle or "{}").get("label")
    return next((str(i) for i, bill in fake.bills.items() if label and bill.get("label", bill.get("name")) == label),
                None)


def run_schedule(index: int, seed: int, shared: dict, work: Path, money: bool = False, project: bool = False) -> dict:
    from sqlalchemy import text

    from planner.config import load_settings
    from planner.plan import campaigns
    from planner.plan.billing import attempt_cost
    from planner.records import FINAL_STATES, Job, Reservation
    from planner.run.launching import JobOptions, add_jobs, attempts_of, stage_for_cloud
    from planner.run.supervisor import MAX_POLL_FAILURES
    from pricing.db import session_factory, upgrade
    from pricing.db import utcnow as now  # aware, as the attempts' times read back
    from tests.simcloud.runpod import RATE_HEADERS, FakeRunPod
    from tests.simcloud.s3 import CREDENTIALS
    from tests.simcloud.server import Fault, Reply
    from tests.simcloud.vast import FakeVast
    from tests.simcloud.world import (
        BILLING_TOLERANCE,
        RUNPOD_KEY,
        VAST_KEY,
        keys,
        settings_overrides,
        stop_fakes,
        weight_files,
        write_book,
    )

    rng = random.Random(f"{seed}/{index}")
    faults = (draw_money_faults if money else draw_project_faults if project else draw_faults)(index, rng)
    directory = work / f"schedule-{index:03d}"
    directory.mkdir(parents=True)
    runpod = FakeRunPod(RUNPOD_KEY, directory / "boxes", grace_s=3.0)
    vast = FakeVast(VAST_KEY, directory / "boxes", grace_s=3.0)
    for fake in (runpod, vast):  # a supervisor killed mid-request resets its connection: expected here
        fake.server.handle_error = lambda request, address: None
    db_url = f"sqlite:///{directory / 'planner.db'}"
    upgrade(db_url)
    sessions = session_factory(db_url)
    write_book(sessions)
    overrides = settings_overrides(db_url=db_url, runs_dir=directory / "runs", runpod=runpod, vast=vast,
                                   storage_uri=f"s3://{shared['s3'].bucket()}/planner", wheel=shared["wheel"],
                                   preempted_cooldown=COOLDOWN_S,
                                   **({"jobs_install": "planner @ file:///nonexistent/planner-0-py3-none-any.whl",
                                       "box_startup_minutes": 0.1} if faults.money == "install fails" else {}))
    (directory / "settings.json").write_text(json.dumps(overrides))
    settings = load_settings(**overrides, runpod_api_key=RUNPOD_KEY, vast_api_key=VAST_KEY)
    data = str(shared["corpus"])
    if faults.project:  # the corpus in the store, as a lab's often is: the planner sizes it there, at every (re)launch
        from jobs import storage

        data = f"{settings.storage_uri.rsplit('/', 1)[0]}/{CORPUS_KEY}"
        storage.write_bytes_atomic(data, shared["corpus"].read_bytes())
    job = campaigns.train_bag_job(settings, model=str(shared["model"]), data=data, fraction=FRACTION,
                                  seed=SEED, method=METHOD, extra=dict(TRAIN))
    [job], _ = stage_for_cloud(settings, faults.backend, [job])
    with sessions() as session:
        add_jobs(session, [job], JobOptions(backend=faults.backend, spot=faults.spot, budget_usd=BUDGET))
        if faults.project:
            project = ProjectWatch(faults, session, directory, overrides)
    job_id = job.spec.job_id

    driver = Driver(directory / "settings.json", directory / "supervisor.log", {**os.environ, **keys()})
    if faults.project:
        driver.env.pop(faults.missing_key)
    if faults.money == "killed for good":
        driver.env[DEADLINE_ENV] = str(DEADLINE_STARTUP_HOURS)
    money_done: dict = {}  # what the money fault did and saw
    counts = {"outbids": 0, "no-capacity 400s": 0, "429s": 0, "5xx": 0, "lost create answers": 0, "losing bids": 0,
              "402s": 0, "host failures": 0, "kills": 0, "kills mid-launch": 0, "slow creates": 0, "store outages": 0}
    creates = [0]

    # ---- faults the fakes answer: a 402 at the n-th create, kill -9 of the supervisor inside a create
    def with_create_faults(fake, route):
        original_take, original_create = fake.take_fault, fake._create

        def take_fault(name):
            if name == route:
                creates[0] += 1
                if creates[0] == faults.out_of_funds_at_create:
                    counts["402s"] += 1
                    return Fault(route, 402, OUT_OF_FUNDS, 1, RATE_HEADERS)
            fault = original_take(name)
            if fault is not None:
                counts["429s" if fault.status == 429 else "no-capacity 400s" if fault.status == 400 else "5xx"] += 1
            return fault

        def create(*args):
            number = creates[0]
            if fake is vast and number in faults.losing_bid_at_create and (args[1] or {}).get("price") is not None:
                vast.min_bid[args[0]] = round(vast.min_bid[args[0]] * 1.15, 4)  # someone bid more, just now
                if faults.destroy_fails:
                    vast.inject("vast.delete", 503, "<html>service unavailable</html>", times=5)
            reply = original_create(*args)
            if reply.status in (200, 201) and number in faults.slow_create_at:
                counts["slow creates"] += 1  # the instance bills; its answer comes after 2.5 create claims
                time.sleep(SLOW_CREATE_S)
            if fake is vast and reply.status == 400 and isinstance(reply.body, dict) and reply.body.get("new_contract"):
                counts["losing bids"] += 1
            if reply.status in (200, 201) and number in faults.kill_mid_launch_at_create and driver.kill():
                counts["kills mid-launch"] += 1
            if fake is runpod and reply.status == 201 and number in faults.lost_answer_at_create:
                counts["lost create answers"] += 1  # the pod exists; the answer never arrives whole
                return Reply(502, {"title": "Bad Gateway", "status": 502, "detail": "upstream timed out"})
            return reply

        fake.take_fault, fake._create = take_fault, create

    with_create_faults(runpod, "rp.create")
    with_create_faults(vast, "vast.create")

    for burst in faults.no_capacity:  # answered to the first creates
        runpod.inject("rp.create", 400, NO_CAPACITY, times=burst, headers=RATE_HEADERS)
    timed = sorted([(at, "storm", (route, count)) for at, route, count in faults.storms]
                   + [(at, "5xx", (route, count, status)) for at, route, count, status in faults.poll_5xx]
                   + [(at, "kill", None) for at in faults.kill_at]
                   + [(at, "outage", (seconds, mode)) for at, seconds, mode in faults.outages], key=lambda e: e[0])
    outbids_left = list(faults.outbid_after_steps)
    outbid_ids: set[int] = set()
    stops: dict[tuple[str, str], tuple] = {}  # (provider, instance id) -> (when, $/h that stopped billing)
    host_failed = False
    problems: list[str] = []

    def relaunch_outage():  # the store goes down as the attempt ends: the relaunch is planned while it is down
        if faults.outage_at_relaunch:
            shared["s3"].outage(*faults.outage_at_relaunch, paths=lambda path: path.endswith(CORPUS_KEY))
            counts["store outages"] += 1
            faults.outage_at_relaunch = None

    refused_before = shared["s3"].refused
    started = time.monotonic()
    driver.start()
    if faults.project:
        project.start()
    state = "pending"
    try:
        while True:
            if faults.project:
                project.watch(sessions, runpod, vast, job_id, problems)
            elapsed = time.monotonic() - started
            while timed and timed[0][0] <= elapsed:
                _, kind, what = timed.pop(0)
                if kind == "storm":
                    route, count = what
                    if route.startswith("rp."):
                        runpod.inject(route, 429, {"title": "Too Many Requests", "status": 429,
                                                   "detail": "rate limit exceeded"}, times=count,
                                      headers={**RATE_HEADERS, "Retry-After": "1"})
                    else:
                        vast.inject(route, 429, {"success": False, "error": "rate_limited",
                                                 "msg": "API requests too frequent"}, times=count)
                elif kind == "5xx":
                    route, count, status = what
                    (runpod if route.startswith("rp.") else vast).inject(
                        route, status, {"title": "server error", "status": status, "detail": "upstream"}
                        if route.startswith("rp.") else "<html>bad gateway</html>", times=count)
                elif kind == "kill" and driver.kill():
                    counts["kills"] += 1
                elif kind == "outage":
                    shared["s3"].outage(*what)
                    counts["store outages"] += 1
            for instance_id, box in list(vast.boxes.items()):  # outbids, once a spot box has trained a little
                instance = vast.instances.get(instance_id)
                if (outbids_left and instance and instance["is_bid"] and instance_id not in outbid_ids and box.alive
                        and box_steps(box) >= outbids_left[0]):
                    outbids_left.pop(0)
                    outbid_ids.add(instance_id)
                    vast.outbid(instance_id)
                    stops[("vast", str(instance_id))] = (now(), instance["dph_total"] - instance["storage_rate"])
                    counts["outbids"] += 1
                    relaunch_outage()
            if faults.host_failure_after_steps and not host_failed:
                for pod_id, box in list(runpod.boxes.items()):
                    if box.alive and box_steps(box) >= faults.host_failure_after_steps:
                        runpod.kill_host(pod_id)
                        stops[("runpod", pod_id)] = (now(), runpod.pods[pod_id]["cost"])
                        host_failed = True
                        counts["host failures"] += 1
                        relaunch_outage()
                        break
            if faults.money and not money_done and faults.money != "install fails":
                fake = vast if faults.backend == "vast" else runpod
                if any(box.alive and (box_steps(box) >= faults.money_after_steps or (
                        faults.money == "killed for good" and (now() - box.started_at.replace(tzinfo=timezone.utc))
                        .total_seconds() > KILL_BY_S)) for box in list(fake.boxes.values())):
                    money_done.update(money_fault(faults.money, fake, driver, sessions, job_id, Reservation))
                    stops.update(money_done.get("stops", {}))
            if faults.money == "key rotated" and money_done and not (runpod.live() or vast.live()) and (
                    directory / "supervisor.log").read_text(errors="replace").count("poll refused") > MAX_POLL_FAILURES:
                with sessions() as session:  # the box ended itself; the old key was refused past the poll limit
                    row = session.get(Job, job_id)
                    money_done["waited"] = (row.state, row.error or "", [a.outcome for a in attempts_of(session, job_id)])
                break
            code = driver.ended()
            with sessions() as session:
                state = session.get(Job, job_id).state
            if code is not None:
                if code == 0 and state in FINAL_STATES:
                    break
                if code != 0 and not driver.killed_by_us:
                    driver.crashes += 1
                    tail = (directory / "supervisor.log").read_text(errors="replace").splitlines()[-1:]
                    problems.append(f"supervisor crashed (exit {code}): {' '.join(tail)[-200:]}")
                    if driver.crashes >= 3:
                        break
                time.sleep(rng.uniform(0.5, 3.0) if driver.killed_by_us else 1.0)
                driver.start()
            if elapsed > SCHEDULE_TIMEOUT_S:
                problems.append(f"still {state} after {SCHEDULE_TIMEOUT_S} s")
                break
            time.sleep(0.25)
        if faults.money == "key rotated" and money_done:  # the lab fixes the key: one pass with the new one
            if driver.pid is not None:  # the supervisor on the old key still waits: the lab restarts it
                driver.process.kill()
                driver.process.wait()
            driver.env[money_done["key_env"]] = money_done["new_key"]
            driver.start()
            deadline = time.monotonic() + 60
            while driver.ended() is None and time.monotonic() < deadline:
                time.sleep(0.25)
    finally:
        if driver.pid is not None:
            driver.kill()
        if faults.project:
            project.stop()
        shared["s3"].outage(0)
        deadline = time.monotonic() + 15  # boxes being terminated get SIGTERM, then SIGKILL after 3 s
        while time.monotonic() < deadline and (runpod.live() or vast.live()):
            time.sleep(0.2)
    seconds = time.monotonic() - started

    # ---- the checks
    with sessions() as session:
        row = session.get(Job, job_id)
        state, error = row.state, row.error or ""
        attempts = attempts_of(session, job_id)
        outcomes = [f"{a.provider}:{a.outcome}" for a in attempts]
        settled = sum(a.dollars or 0.0 for a in attempts)
        unseen = 0.0  # $ settled for time between a box's end (its provider's stop, or its own delete) and the
        for a in attempts:  # supervisor seeing it: no provider says when a box ended
            fake = runpod if a.provider == "runpod" else vast
            if (a.provider, a.instance_id) in stops and a.ended_at is not None:
                when, rate = stops[(a.provider, a.instance_id)]
                unseen += max(0.0, (a.ended_at - when).total_seconds()) * rate / 3600
            elif (instance := a.instance_id or own_instance(fake, a)) in fake.ended_by_itself and a.ended_at is not None:
                ended = fake.ended_by_itself[instance].replace(tzinfo=timezone.utc)
                unseen += attempt_cost(a, a.ended_at) - attempt_cost(a, ended)
        open_attempts = [a.number for a in attempts if a.outcome in ("launching", "running")]
        dump = "\n".join(str(r) for table in ("jobs", "attempts", "campaigns")
                         for r in session.execute(text(f"SELECT * FROM {table}")))
    billed = runpod.billed_usd("planner-") + vast.billed_usd("planner-")
    log_lines = (directory / "supervisor.log").read_text(errors="replace").splitlines()
    reaped = [json.loads(line)["reaped"] for line in log_lines if line.startswith("{") and '"reaped"' in line]
    left = [p["name"] for p in runpod.pods.values()] + [i["label"] for i in vast.instances.values()]
    checks = {}
    checks["outcome"] = state == faults.expected and faults.expected_words in error
    if state == "succeeded":
        files = weight_files(job.spec.output_uri)
        checks["weights"] = bool(files) and files.keys() == shared["reference"].keys() and all(
            files[name] == shared["reference"][name] for name in files)
        if not checks["weights"]:
            reference = shared["reference"]
            problems.append("weights: " + ", ".join(
                f"{name} {len(files.get(name, b''))} B vs {len(reference.get(name, b''))} B"
                + (" (differs)" if name in files and name in reference and files[name] != reference[name] else "")
                for name in sorted(set(files) | set(reference))))
    checks["no crash"] = driver.crashes == 0 and not any(p.startswith("still") for p in problems)
    checks["no orphan"] = not left and not runpod.live() and not vast.live() and not open_attempts
    checks["budget"] = settled <= BUDGET + 1e-9
    tolerance = max(BILLING_TOLERANCE["abs"], BILLING_TOLERANCE["rel"] * abs(billed))
    checks["settled = billed"] = abs(settled - unseen - billed) <= tolerance
    if faults.money:
        checks["fault done"] = bool(money_done) or faults.money == "install fails"
        checks["billed <= budget"] = billed <= BUDGET
    if faults.money == "install fails":
        checks["failed after the limit"] = outcomes == [f"{faults.backend}:failed"] * 3
    if faults.money == "killed for good":
        checks["boxes ended themselves by their deadline"] = money_done.get("all_ended", False) and all(
            late <= DEADLINE_SLACK_S for late in money_done.get("late_s", [1e9]))
        checks["billed <= reserved"] = money_done.get("billed", 1e9) <= money_done.get("reserved", 0.0) + 1e-9
    if faults.money == "key rotated":  # waited for the key: the attempt live, never lost, the key named
        waited_state, waited_error, waited_outcomes = money_done.get("waited", ("", "", []))
        checks["waited"] = (waited_state == "running" and waited_outcomes == ["running"]
                            and f"rejected {money_done['key_env']}" in waited_error)
        if not checks["waited"]:
            problems.append(f"while the key was refused: {waited_state} {waited_outcomes} {waited_error[:200]}")
    extra: dict = {}
    if faults.project:  # the skewed supervisor's times are off by SKEW_S by design: what the fakes billed is the truth
        del checks["settled = billed"]
        project_checks, extra = project.results(sessions, runpod, vast, billed)
        checks.update(project_checks)
        extra["store refusals"] = shared["s3"].refused - refused_before
    secret = CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    log_text = "\n".join(log_lines) + (project.logs() if faults.project else "")
    sent = runpod.everything_sent() + vast.everything_sent()
    boxes = [*runpod.boxes.values(), *runpod.gone.values(), *vast.boxes.values(), *vast.gone.values()]
    checks["no secret"] = (not any(s in dump or s in log_text for s in (secret, RUNPOD_KEY, VAST_KEY))
                           and RUNPOD_KEY not in sent and VAST_KEY not in sent
                           and not any({"RUNPOD_API_KEY", "VAST_API_KEY"} & set(b.request_env) for b in boxes)
                           and not any(RUNPOD_KEY in v or VAST_KEY in v for b in boxes for v in b.request_env.values()))
    stop_fakes(runpod, vast)
    failed = [name for name, ok in checks.items() if not ok]
    return {"index": index, "backend": f"{faults.backend} {faults.spot}", "expected": faults.expected, "state": state,
            "error": error.splitlines()[0][:160] if error else "", "outcomes": outcomes, "settled": settled,
            "billed": billed, "unseen": unseen, "reaped": len(reaped), "left": len(left), "kills": driver.kills,
            "crashes": driver.crashes, "checks": checks, "failed": failed, "problems": problems,
            "seconds": seconds, "money": faults.money or "", "money_done": {
                k: v for k, v in money_done.items() if k in ("billed", "reserved", "late_s", "dead_s")}, **counts,
            **extra}


# ---------------------------------------------------------------------------------------------- the drill


def reference_files(model: Path, corpus: Path, work: Path) -> dict[str, bytes]:
    """The same job run once, directly, on local files, with nothing going wrong."""
    import contextlib

    from jobs.train_bag import main as train

    output = work / "reference"
    argv = ["--model", str(model), "--data", str(corpus), "--fraction", str(FRACTION), "--seed", str(SEED),
            "--method", METHOD, "--output", str(output)]
    argv += [x for k, v in TRAIN.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    with open(work / "reference.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = train(argv)
    if code != 0:
        raise RuntimeError(f"the reference run failed: see {work / 'reference.log'}")
    return {f.name: f.read_bytes() for f in sorted(output.glob("*.safetensors"))}


def faults_cell(r: dict) -> str:
    names = [("outbids", "outbid"), ("no-capacity 400s", "400"), ("429s", "429"), ("5xx", "5xx"),
             ("lost create answers", "create 502 after the pod"), ("losing bids", "losing bid"), ("kills", "kill"),
             ("kills mid-launch", "kill mid-launch"), ("host failures", "host died"), ("402s", "402"),
             ("slow creates", "slow create"), ("store outages", "store down")]
    money = r.get("money", "")
    if money == "killed for good" and r["money_done"]:
        seen = r["money_done"]
        money += (f" (dead {seen['dead_s']:.0f} s; boxes gone {max(seen['late_s']):+.1f} s from their deadline; billed "
                  f"${seen['billed']:.5f} <= reserved ${seen['reserved']:.5f})")
    return ", ".join([money] * bool(money) + [f"{r[key]} {short}" for key, short in names if r[key]]) or "none"


def totals_agree(rows: list[dict]) -> bool:
    """The run's settled dollars against the fakes' ledgers, summed, as test_simcloud compares a campaign's."""
    from tests.simcloud.world import BILLING_TOLERANCE

    settled, billed = sum(r["settled"] - r["unseen"] for r in rows), sum(r["billed"] for r in rows)
    return abs(settled - billed) <= max(BILLING_TOLERANCE["abs"], BILLING_TOLERANCE["rel"] * billed)


def outcome_cell(r: dict) -> str:
    return r["state"] + (f" ({r['error']})" if r["state"] != "succeeded" and r["error"] else "")


def checks_cell(r: dict) -> str:
    return "all pass" if not r["failed"] else "FAILED: " + ", ".join(r["failed"])


def problem_lines(rows: list[dict], more: list[str] = ()) -> list[str]:
    """What went wrong, a line each, after the table (nothing when nothing did)."""
    problems = [f"- schedule {r['index']}: {p}" for r in rows for p in r["problems"]] + list(more)
    return [""] + problems if problems else []


def table(rows: list[dict], args) -> list[str]:
    from bench.drill import faults_injected

    ok = [r for r in rows if not r["failed"]]
    succeeded = [r for r in rows if r["state"] == "succeeded"]
    lines = [f"{len(rows)} schedules, seed {args.seed}: **{len(ok)}/{len(rows)} passed every check**; "
             f"{len(succeeded)} succeeded (weights bitwise equal to the uninterrupted run: "
             f"{sum(r['checks'].get('weights', False) for r in succeeded)}), "
             f"{sum(r['state'] == 'failed' for r in rows)} failed ({sum(r['expected'] == 'failed' for r in rows)} "
             f"expected to), orphans reaped: {sum(r['reaped'] for r in rows)}, instances left: "
             f"{sum(r['left'] for r in rows)}, supervisor crashes: {sum(r['crashes'] for r in rows)}; in all settled "
             f"${sum(r['settled'] for r in rows):.5f}, of which ${sum(r['unseen'] for r in rows):.5f} for box ends "
             f"(a provider's stop, a box deleting itself) the supervisor could not see yet; billed ${sum(r['billed'] for r in rows):.5f} (the rest "
             f"{'within' if totals_agree(rows) else 'OUTSIDE'} test_simcloud's tolerance, 5 % or $0.0002).",
             *faults_injected(rows, ("outbids", "no-capacity 400s", "429s", "5xx", "lost create answers",
                                     "losing bids", "kills", "kills mid-launch", "host failures", "402s"),
                              " (answered by the fakes or done to the supervisor)"),
             "| schedule | backend | faults | attempts | outcome | $ settled / billed | orphans reaped | checks | s |",
             "|---:|---|---|---|---|---|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['index']} | {r['backend']} | {faults_cell(r)} | {' > '.join(r['outcomes'])} | {outcome_cell(r)} | "
                     f"{r['settled']:.5f} / {r['billed']:.5f}" + (f" (unseen ends {r['unseen']:.5f})" if r['unseen'] else "")
                     + f" | {r['reaped']} | {checks_cell(r)} | {r['seconds']:.0f} |")
    return lines + problem_lines(rows)


def project_table(rows: list[dict], args) -> list[str]:
    """--project-faults: the checks of issue 24 per schedule."""
    from bench.drill import faults_injected

    ok = [r for r in rows if not r["failed"]]
    succeeded = [r for r in rows if r["state"] == "succeeded"]
    lines = [f"{len(rows)} schedules, seed {args.seed}: **{len(ok)}/{len(rows)} passed every check**; {len(succeeded)} "
             f"succeeded (weights bitwise equal to the uninterrupted run: "
             f"{sum(r['checks'].get('weights', False) for r in succeeded)}); **double launches: "
             f"{sum(r['double launches'] for r in rows)}, unbilled boxes: {sum(r['unbilled'] for r in rows)}, boxes the "
             f"second project ended: {sum(r['neighbour reaped'] for r in rows)}**, budgets held: "
             f"{sum(r['checks']['budgets held'] for r in rows)}/{len(rows)}, orphans left: {sum(r['left'] for r in rows)}, "
             f"supervisor crashes: {sum(r['crashes'] for r in rows)}; poisoned job failed in one line and keyed job "
             f"waiting for its key: {sum(r['side jobs ok'] for r in rows)}/{len(rows)}. "
             f"In all settled ${sum(r['settled'] for r in rows):.5f}, billed at the fakes ${sum(r['billed'] for r in rows):.5f}.",
             *faults_injected(rows, ("outbids", "host failures", "slow creates", "store outages", "store refusals",
                                     "store waits", "429s", "kills", "kills mid-launch")),
             "| schedule | backend | key missing | faults | attempts | outcome | double launches | unbilled | second "
             "project ended | $ peak job / month (budgets 2.00 / 2.30) | $ settled / billed | relaunch waited for the "
             "store | store refusals | checks | s |",
             "|---:|---|---|---|---|---|---:|---:|---:|---|---|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['index']} | {r['backend']} | {r['missing key']} | {faults_cell(r)} | {' > '.join(r['outcomes'])} | "
                     f"{outcome_cell(r)} | {r['double launches']} | {r['unbilled']} | {r['neighbour reaped']} | "
                     f"{r['peak job']:.5f} / {r['peak month']:.5f} | {r['settled']:.5f} / {r['billed']:.5f} | "
                     f"{r['store waits']} | {r['store refusals']} | {checks_cell(r)} | {r['seconds']:.0f} |")
    return lines + problem_lines(rows, [f"- schedule {r['index']}: unbilled {label}" for r in rows
                                        for label in r["unbilled labels"]]
                                 + [f"- schedule {r['index']}: attempts {c} of the job live at once" for r in rows
                                    for c in r["concurrent attempts"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="where the table goes (bench/out/cloud_drill.md, with --money "
                        "cloud_drill_money.md, with --project-faults cloud_drill_project.md)")
    parser.add_argument("--only", type=int, nargs="*", help="run just these schedule indices (of --schedules)")
    parser.add_argument("--money", action="store_true", help="the faults that cost money (see the docstring)")
    parser.add_argument("--project-faults", action="store_true", help="issue 24's faults (see the docstring)")
    parser.add_argument("--supervise", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = args.out or str(ROOT / "bench" / "out" / ("cloud_drill_money.md" if args.money else "cloud_drill_project.md"
                                                       if args.project_faults else "cloud_drill.md"))
    if args.supervise:
        sys.exit(supervise(args.supervise))

    from jobs.toy import build_tiny_model, write_toy_corpus
    from tests.simcloud.s3 import S3Server
    from tests.simcloud.world import build_wheel

    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="cloud-drill-"))
    s3 = S3Server()
    os.environ.update(s3.env())  # the lab's shell: this machine (and its supervisor) reach the store with these
    try:
        wheel = build_wheel(work / "wheel")
        model = build_tiny_model(work / "model")
        corpus = write_toy_corpus(work / "train.jsonl")
        reference = reference_files(model, corpus, work)
        print(f"setup (wheel, model, reference run): {time.monotonic() - began:.0f} s; reference sha256 "
              f"{hashlib.sha256(b''.join(reference.values())).hexdigest()[:12]}; work in {work}",
              file=sys.stderr, flush=True)
        shared = {"s3": s3, "wheel": wheel, "model": model, "corpus": corpus, "reference": reference}
        rows = []
        for index in (args.only if args.only else range(args.schedules)):
            row = run_schedule(index, args.seed, shared, work, money=args.money, project=args.project_faults)
            rows.append(row)
            print(f"schedule {index} ({row['backend']}): {row['state']} after {' > '.join(row['outcomes'])}; "
                  f"faults: {faults_cell(row)}; ${row['settled']:.5f} settled / ${row['billed']:.5f} billed; "
                  f"reaped {row['reaped']}; {'all checks pass' if not row['failed'] else 'FAILED ' + str(row['failed'])}"
                  f"{'; ' + '; '.join(row['problems']) if row['problems'] else ''} ({row['seconds']:.0f} s)",
                  file=sys.stderr, flush=True)
    finally:
        s3.stop()
    lines = project_table(rows, args) if args.project_faults else table(rows, args)
    lines.append("")
    lines.append(f"Whole run: {(time.monotonic() - began) / 60:.1f} min.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if all(not r["failed"] for r in rows) and (args.project_faults or totals_agree(rows)) else 1)


if __name__ == "__main__":
    main()
