"""Reliability drill: randomized fault schedules against the supervisor and the local backend running the
real train-bag job on the tiny model.

    .venv/bin/python bench/drill.py [--schedules 50] [--seed 0] [--out bench/out/drill.md]

Each schedule is one job on a fresh SQLite database, supervised tick by tick (0.3 s apart), with
faults drawn from its own seed:
  interruptions    per tick, p 0.06 (at most 3): the running attempt gets SIGTERM, then SIGKILL after 5 s;
  provider faults  per tick, p 0.05: a burst of 1-25 consecutive failed polls ("HTTP 503" or a
                   timeout; 20 in a row make the attempt count as lost); per launch, p 0.2, the launch
                   call fails before anything starts;
  supervisor kills per tick, p 0.04, the supervisor is dropped and a new one starts from the database;
                   per launch, p 0.15, it dies just after the instance started and before the database
                   learned its id (the restarted one comes 3 minutes later, on its clock, and must adopt
                   the instance, not start a second one).
  slow creates     per launch, p 0.25, the create takes 2.5 s, past two lengths of the create claim (shortened
                   to 1 s here, renewed at a quarter of it); while it is in flight a second supervisor of the
                   same project, its clock 3 minutes ahead, ticks (issue 24: exactly one launch per attempt);
  clock skew       that second supervisor also ticks beside the first on 1 tick in 4;
  store down       per tick, p 0.04, a burst of 1-10 ticks in which the object store answers botocore's
                   EndpointConnectionError to the supervisor (DONE marker, progress): weather, never an outcome;
  second project   a second database on the same runs directory (one account, two projects) ticks every tick
                   with its own reaper: it must leave this project's processes alone;
  poisoned job     a job whose spec cannot be read, beside the drilled job: failed, and the others go on;
  key missing      a job whose live attempt runs on RunPod, with no RUNPOD_API_KEY here: it waits, saying so.
This machine is priced at $3.60 an hour; one schedule in five has a tight job budget ($1.20, just
above one launch's worst case as the planner reckons it, startup included), which the minutes billed
across supervisor restarts can exhaust; every schedule has a monthly budget $0.30 above its job's budget.
Checked for every schedule: the job ends succeeded or stopped-by-budget; a succeeded job's weights are
bitwise those of an uninterrupted run; no process carrying our label outlives the job; the spend recorded
over its attempts is within its budget and the month's within the monthly one; no attempt was created
twice (double launches); no labelled process ran, at the end of any tick, without a live attempt owning
it (unbilled boxes); the second project reaped nothing; the poisoned job failed and the keyed one waited.
"""
from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from botocore.exceptions import EndpointConnectionError  # noqa: E402
from sqlalchemy import select  # noqa: E402

from planner.config import load_settings  # noqa: E402
from planner.plan import budget as budgets  # noqa: E402
from planner.plan import campaigns  # noqa: E402
from planner.records import FINAL_STATES, LIVE_ATTEMPT, Attempt, Job  # noqa: E402
from planner.run import progress as progress_module  # noqa: E402
from planner.run import supervisor as supervisor_module  # noqa: E402
from planner.run.backends import markers  # noqa: E402
from planner.run.backends.base import (  # noqa: E402
    BackendError,
    Handle,  # noqa: E402
    parse_label,
)
from planner.run.backends.local import LocalBackend  # noqa: E402
from planner.run.launching import JobOptions, add_jobs, attempts_of, build_supervisor  # noqa: E402
from pricing.db import (  # noqa: E402
    database_now,
    session_factory,
    upgrade,
    utcnow,  # noqa: E402
)

TRAIN = {"batch_size": 6, "epochs": 2, "lr": 1e-3, "save_every_steps": 2}
USD_PER_HOUR = 3.6
TICK_S = 0.3
CREATE_LEASE = timedelta(seconds=1)  # the create claim, shortened so slow creates outlast it many times over
SLOW_CREATE_S = 2.5
SKEW = timedelta(minutes=3)
supervisor_module.CREATE_LEASE = CREATE_LEASE


class SupervisorKilled(BaseException):
    """The drill's kill -9 of the supervisor, raised out of a launch after the instance started: a
    BaseException, as nothing in a killed process catches a SIGKILL (the per-job isolation must not)."""


class StoreDown:
    """The object store refusing the supervisor's reads of a job's outputs (botocore's error, which is no
    OSError): the DONE marker and the progress file. (The corpus here is a local file; a relaunch planned
    while the store holding the corpus is down, found by this drill, waits now: bench/cloud_drill.py
    --project-faults drills it against a real S3 API.)"""

    def __init__(self):
        self.ticks_left = 0
        self.real = (markers.storage, progress_module.read_json)
        self.refused = 0

    def _down(self, *args, **kwargs):
        self.refused += 1
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/planner-bucket")

    def tick(self) -> None:
        down = self.ticks_left > 0
        self.ticks_left = max(0, self.ticks_left - 1)
        markers.storage = SimpleNamespace(exists=self._down, read_json=self._down) if down else self.real[0]
        progress_module.read_json = self._down if down else self.real[1]


class FaultyLocal(LocalBackend):
    """The local backend with a provider's weather, slow creates and a supervisor that can die mid-launch."""

    def __init__(self, runs_dir: Path, rng: random.Random):
        super().__init__(runs_dir)
        self.rng = rng
        self.failing_polls = 0
        self.created: list[str] = []  # every label a create started, in order
        self.during_slow_create = lambda: None
        self.counts = {"launch faults": 0, "poll faults": 0, "kills mid-launch": 0, "slow creates": 0}

    def launch(self, plan):
        if self.rng.random() < 0.2:
            self.counts["launch faults"] += 1
            raise BackendError("HTTP 503 on /launch (gave up after 5 attempts)")
        if self.rng.random() < 0.25:  # 429 retries, a host search: the create outlasts its claim
            self.counts["slow creates"] += 1
            deadline = time.monotonic() + SLOW_CREATE_S
            while time.monotonic() < deadline:
                self.during_slow_create()
                time.sleep(0.3)
        handle = super().launch(plan)
        self.created.append(plan.label)
        if self.rng.random() < 0.15:
            self.counts["kills mid-launch"] += 1
            raise SupervisorKilled
        return handle

    def poll(self, handle):
        if self.failing_polls > 0:
            self.failing_polls -= 1
            self.counts["poll faults"] += 1
            raise BackendError(self.rng.choice(["HTTP 503 on /poll", "timeout after 30s on /poll"]))
        return super().poll(handle)


def faults_injected(rows: list[dict], kinds: tuple[str, ...], how: str = "") -> list[str]:
    """The report's line of every fault injected across the schedules (this drill's and bench/cloud_drill.py's)."""
    totals = {k: sum(r[k] for r in rows) for k in kinds}
    return ["", f"Faults injected in all{how}: " + ", ".join(f"{v} {k}" for k, v in totals.items()) + ".", ""]


def weights_digest(output: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(output.glob("*.safetensors")):
        digest.update(file.read_bytes())
    return digest.hexdigest()


def run_schedule(index: int, seed: int, model: Path, corpus: Path, work: Path) -> dict:
    rng = random.Random(f"{seed}/{index}")
    directory = work / f"schedule-{index:03d}"
    db_url = f"sqlite:///{directory / 'planner.db'}"
    directory.mkdir(parents=True)
    upgrade(db_url)
    settings = load_settings(db_url=db_url, runs_dir=directory / "runs", local_usd_per_hour=USD_PER_HOUR,
                             poll_interval_s=TICK_S)
    sessions = session_factory(db_url)
    tight = index % 5 == 4
    budget = 1.2 if tight else 10.0  # 1.2: just above one launch's worst case; restarts after kills bill minutes
    job = campaigns.train_bag_job(settings, model=str(model), data=str(corpus), fraction=0.5, seed=3,
                                  method="full", extra=TRAIN)
    monthly = budget + 0.3
    with sessions() as session:
        add_jobs(session, [job], JobOptions(backend="local", budget_usd=budget))
        budgets.set_monthly_budget(session, monthly)
        poisoned_and_keyed(session)
    backend = FaultyLocal(settings.runs_dir, rng)
    offset = [timedelta(0)]

    def supervisor(skew=timedelta(0)):
        made = build_supervisor(settings, sessions, {"local": backend})
        made.clock = made.budget.clock = lambda: utcnow() + offset[0] + skew
        return made

    other = [supervisor(SKEW)]  # the same project's second supervisor, its clock 3 minutes ahead
    in_other = [False]

    def other_ticks():
        if not in_other[0]:
            in_other[0] = True
            try:
                other[0].tick()
            except SupervisorKilled:  # it died mid-launch: it restarts (the one it interrupted goes on)
                faults["supervisor kills"] += 1
                other[0] = supervisor(SKEW)
            finally:
                in_other[0] = False

    faults = {"interruptions": 0, "supervisor kills": 0, "store-down ticks": 0, "skewed ticks": 0}
    backend.during_slow_create = other_ticks
    neighbour = second_project(directory, settings.runs_dir)
    store = StoreDown()
    current = supervisor()
    unbilled = set()
    neighbour_reaped: list[str] = []
    started = time.monotonic()
    while True:
        store.tick()
        faults["store-down ticks"] += store.ticks_left > 0
        try:
            current.tick()
            if rng.random() < 0.25:
                faults["skewed ticks"] += 1
                other_ticks()
        except SupervisorKilled:
            faults["supervisor kills"] += 1
            offset[0] += CREATE_LEASE + timedelta(minutes=3)  # the restart comes later
            current = supervisor()
            continue
        neighbour_reaped += neighbour.tick().reaped
        with sessions() as session:
            state = session.get(Job, job.spec.job_id).state
            live = [a for a in attempts_of(session, job.spec.job_id) if a.outcome == "running" and a.instance_id]
            unbilled |= unowned(session, backend)
        if state in FINAL_STATES:
            break
        if time.monotonic() - started > 600:
            raise RuntimeError(f"schedule {index}: the job is still {state} after 10 minutes")
        if live and faults["interruptions"] < 3 and rng.random() < 0.06:
            backend.preempt(Handle.from_attempt(live[0]), grace_s=5.0)
            faults["interruptions"] += 1
        if rng.random() < 0.05:
            backend.failing_polls = rng.randint(1, 25)
        if rng.random() < 0.04:
            store.ticks_left = rng.randint(1, 10)
        if rng.random() < 0.04:
            faults["supervisor kills"] += 1
            current = supervisor()
        time.sleep(TICK_S)
    backend.failing_polls = store.ticks_left = 0
    store.tick()
    current.tick()  # one more pass: the reaper
    deadline = time.monotonic() + 30
    while backend.list_labeled() and time.monotonic() < deadline:
        time.sleep(0.2)
    with sessions() as session:
        attempts = attempts_of(session, job.spec.job_id)
        spent = sum(a.dollars for a in attempts)
        month = budgets.month_spend(session, database_now(session)).committed_usd
        side = {row.id: row for row in session.scalars(select(Job).where(Job.id.in_(("poisoned", "keyed"))))}
        side_ok = side["poisoned"].state == "failed" and (side["keyed"].error or "").startswith("waiting: ")
        error = session.get(Job, job.spec.job_id).error
    output = Path(job.spec.output_uri)
    doubles = sum(count - 1 for count in Counter(backend.created).values() if count > 1)
    return {"index": index, "state": state, "tight": tight, "budget": budget, "spent": spent,
            "monthly": monthly, "month": month, "attempts": len(attempts), "outcomes": [a.outcome for a in attempts],
            "digest": weights_digest(output) if state == "succeeded" else None,
            "orphans": len(backend.list_labeled()), "seconds": time.monotonic() - started,
            "double launches": doubles, "unbilled": len(unbilled), "neighbour reaped": len(neighbour_reaped),
            "side jobs ok": side_ok, "error": error, "store refusals": store.refused, **faults, **backend.counts}


def poisoned_and_keyed(session, keyed_on: str = "runpod") -> None:
    """Beside the drilled job: one whose spec cannot be read, and one whose live attempt runs on `keyed_on` (no
    key here). Neither may stop the drilled job; the keyed one's box costs nothing, so the month's money is the
    drilled job's. (bench/cloud_drill.py --project-faults puts them beside its job too.)"""
    session.add(Job(id="poisoned", name="poisoned", kind="merge", backend="local", spec="{torn"))
    session.add(Job(id="keyed", name="keyed", kind="merge", backend=keyed_on, spec="{}", state="running"))
    session.flush()
    session.add(Attempt(job_id="keyed", number=1, backend=keyed_on, provider=keyed_on, spot=False, usd_per_hour=0.0,
                        billing_seconds=1, outcome="running", launched_at=database_now(session), instance_id="pod-x"))
    session.commit()


def second_project(directory: Path, runs_dir: Path):
    """Another project (its own database, so its own identity) on the same runs directory: one account."""
    url = f"sqlite:///{directory / 'neighbour.db'}"
    upgrade(url)
    settings = load_settings(db_url=url, runs_dir=runs_dir, local_usd_per_hour=USD_PER_HOUR, poll_interval_s=TICK_S)
    return build_supervisor(settings, session_factory(url), {"local": LocalBackend(runs_dir)})


def unowned(session, backend: FaultyLocal) -> set[str]:
    """Labelled processes running now that no live attempt owns, once their create has answered (a create in
    flight has its row, the instance id comes with the answer): each bills outside every ledger."""
    live = {(a.job_id, a.number): a.instance_id for a in
            session.scalars(select(Attempt).where(Attempt.outcome.in_(LIVE_ATTEMPT)))}
    found = set()
    for handle in backend.list_labeled():
        label = parse_label(handle.label)
        owner = live.get((label.job_id, label.attempt), "") if label else ""
        if owner not in (None, handle.instance_id):
            found.add(handle.label)
    return found


def reference_digest(model: Path, corpus: Path, work: Path) -> str:
    """The same job run once with nothing going wrong."""
    from jobs.train_bag import main as train

    output = work / "reference"
    args = ["--model", str(model), "--data", str(corpus), "--fraction", "0.5", "--seed", "3", "--method", "full",
            "--output", str(output)] + [x for k, v in TRAIN.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    if train(args) != 0:
        raise RuntimeError("the reference run failed")
    return weights_digest(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "drill.md"))
    args = parser.parse_args()
    from jobs.toy import build_tiny_model, write_toy_corpus

    work = Path(tempfile.mkdtemp(prefix="drill-"))
    model = build_tiny_model(work / "model")
    corpus = write_toy_corpus(work / "train.jsonl")
    reference = reference_digest(model, corpus, work)
    rows = []
    for index in range(args.schedules):
        row = run_schedule(index, args.seed, model, corpus, work)
        row["equal"] = row["digest"] == reference if row["digest"] else None
        rows.append(row)
        print(f"schedule {index}: {row['state']} after {row['attempts']} attempts ({', '.join(row['outcomes'])}), "
              f"${row['spent']:.4f} of ${row['budget']:.3f} (month ${row['month']:.4f} of ${row['monthly']:.2f}), "
              f"weights equal: {row['equal']}, orphans {row['orphans']}, double launches {row['double launches']}, "
              f"unbilled {row['unbilled']}, neighbour reaped {row['neighbour reaped']}, "
              f"side jobs ok {row['side jobs ok']}, slow creates {row['slow creates']}"
              + (f"; {row['error']}" if row["error"] else ""),
              file=sys.stderr, flush=True)
    ok = [r for r in rows if r["state"] in ("succeeded", "stopped-by-budget") and r["equal"] is not False
          and r["orphans"] == 0 and r["spent"] <= r["budget"] + 1e-9 and r["month"] <= r["monthly"] + 1e-9
          and r["double launches"] == 0 and r["unbilled"] == 0 and r["neighbour reaped"] == 0 and r["side jobs ok"]]
    lines = [f"{args.schedules} schedules, seed {args.seed}: **{len(ok)}/{len(rows)} passed every check**; "
             f"{sum(r['state'] == 'succeeded' for r in rows)} succeeded (weights bitwise equal to the uninterrupted "
             f"run: {sum(bool(r['equal']) for r in rows)}), {sum(r['state'] == 'stopped-by-budget' for r in rows)} "
             f"stopped by budget ({sum(r['tight'] for r in rows)} had a tight budget), orphans left: "
             f"{sum(r['orphans'] for r in rows)}, spend over budget: {sum(r['spent'] > r['budget'] + 1e-9 for r in rows)}, "
             f"month over its budget: {sum(r['month'] > r['monthly'] + 1e-9 for r in rows)}; double launches: "
             f"{sum(r['double launches'] for r in rows)}, unbilled boxes: {sum(r['unbilled'] for r in rows)}, "
             f"boxes the second project reaped: {sum(r['neighbour reaped'] for r in rows)}, side jobs as expected "
             f"(poisoned failed, keyed waiting): {sum(bool(r['side jobs ok']) for r in rows)}/{len(rows)}.",
             *faults_injected(rows, ("interruptions", "supervisor kills", "kills mid-launch", "launch faults",
                                     "poll faults", "slow creates", "skewed ticks", "store-down ticks", "store refusals")),
             "| schedule | budget | outcome | attempts | spent | month | interruptions | kills (tick / mid-launch) | "
             "launch faults | poll faults | slow creates | store-down ticks | weights equal | orphans | double "
             "launches | unbilled | seconds |",
             "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['index']} | ${r['budget']:.3f} | {r['state']} | {' > '.join(r['outcomes'])} | "
                     f"${r['spent']:.4f} | ${r['month']:.4f} of ${r['monthly']:.2f} | {r['interruptions']} | "
                     f"{r['supervisor kills'] - r['kills mid-launch']} / {r['kills mid-launch']} | {r['launch faults']} | "
                     f"{r['poll faults']} | {r['slow creates']} | {r['store-down ticks']} | "
                     f"{'n/a' if r['equal'] is None else r['equal']} | {r['orphans']} | {r['double launches']} | "
                     f"{r['unbilled']} | {r['seconds']:.0f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:3]))
    sys.exit(0 if len(ok) == len(rows) else 1)


if __name__ == "__main__":
    main()
