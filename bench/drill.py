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
This machine is priced at $3.60 an hour; one schedule in five has a tight job budget ($1.20, just
above one launch's worst case as the planner reckons it, startup included), which the minutes billed
across supervisor restarts can exhaust. Checked for every schedule: the job ends succeeded or stopped-by-budget; a
succeeded job's weights are bitwise those of an uninterrupted run; no process carrying our label
outlives the job; the spend recorded over its attempts is within its budget.
"""
from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.plan import campaigns  # noqa: E402
from planner.run.backends.base import BackendError  # noqa: E402
from planner.run.backends.local import LocalBackend  # noqa: E402
from planner.config import load_settings  # noqa: E402
from planner.run.launching import JobOptions, add_jobs, attempts_of, build_supervisor  # noqa: E402
from planner.records import FINAL_STATES, Job  # noqa: E402
from planner.run.backends.base import Handle  # noqa: E402
from planner.run.supervisor import ADOPT_AFTER  # noqa: E402
from pricing.db import session_factory, upgrade  # noqa: E402
from pricing.db import utcnow  # noqa: E402

TRAIN = {"batch_size": 6, "epochs": 2, "lr": 1e-3, "save_every_steps": 2}
USD_PER_HOUR = 3.6
TICK_S = 0.3


class SupervisorKilled(Exception):
    """The drill's kill -9 of the supervisor, raised out of a launch after the instance started."""


class FaultyLocal(LocalBackend):
    """The local backend with a provider's weather and a supervisor that can die mid-launch."""

    def __init__(self, runs_dir: Path, rng: random.Random):
        super().__init__(runs_dir)
        self.rng = rng
        self.failing_polls = 0
        self.counts = {"launch faults": 0, "poll faults": 0, "kills mid-launch": 0}

    def launch(self, plan):
        if self.rng.random() < 0.2:
            self.counts["launch faults"] += 1
            raise BackendError("HTTP 503 on /launch (gave up after 5 attempts)")
        handle = super().launch(plan)
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
    with sessions() as session:
        add_jobs(session, [job], JobOptions(backend="local", budget_usd=budget))
    backend = FaultyLocal(settings.runs_dir, rng)
    offset = [timedelta(0)]

    def supervisor():
        made = build_supervisor(settings, sessions, {"local": backend})
        made.clock = made.budget.clock = lambda: utcnow() + offset[0]
        return made

    current = supervisor()
    faults = {"interruptions": 0, "supervisor kills": 0}
    started = time.monotonic()
    while True:
        try:
            current.tick()
        except SupervisorKilled:
            faults["supervisor kills"] += 1
            offset[0] += ADOPT_AFTER + timedelta(minutes=1)  # the restart comes later
            current = supervisor()
            continue
        with sessions() as session:
            state = session.get(Job, job.spec.job_id).state
            live = [a for a in attempts_of(session, job.spec.job_id) if a.outcome == "running" and a.instance_id]
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
            faults["supervisor kills"] += 1
            current = supervisor()
        time.sleep(TICK_S)
    backend.failing_polls = 0
    current.tick()  # one more pass: the reaper
    deadline = time.monotonic() + 30
    while backend.list_labeled() and time.monotonic() < deadline:
        time.sleep(0.2)
    with sessions() as session:
        attempts = attempts_of(session, job.spec.job_id)
        spent = sum(a.dollars for a in attempts)
    output = Path(job.spec.output_uri)
    return {"index": index, "state": state, "tight": tight, "budget": budget, "spent": spent,
            "attempts": len(attempts), "outcomes": [a.outcome for a in attempts],
            "digest": weights_digest(output) if state == "succeeded" else None,
            "orphans": len(backend.list_labeled()), "seconds": time.monotonic() - started,
            **faults, **backend.counts}


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
              f"${row['spent']:.4f} of ${row['budget']:.3f}, weights equal: {row['equal']}, orphans {row['orphans']}",
              file=sys.stderr, flush=True)
    ok = [r for r in rows if r["state"] in ("succeeded", "stopped-by-budget") and r["equal"] is not False
          and r["orphans"] == 0 and r["spent"] <= r["budget"] + 1e-9]
    totals = {k: sum(r[k] for r in rows) for k in ("interruptions", "supervisor kills", "kills mid-launch",
                                                   "launch faults", "poll faults")}
    lines = [f"{args.schedules} schedules, seed {args.seed}: **{len(ok)}/{len(rows)} passed every check**; "
             f"{sum(r['state'] == 'succeeded' for r in rows)} succeeded (weights bitwise equal to the uninterrupted "
             f"run: {sum(bool(r['equal']) for r in rows)}), {sum(r['state'] == 'stopped-by-budget' for r in rows)} "
             f"stopped by budget ({sum(r['tight'] for r in rows)} had a tight budget), orphans left: "
             f"{sum(r['orphans'] for r in rows)}, spend over budget: {sum(r['spent'] > r['budget'] + 1e-9 for r in rows)}.",
             "", "Faults injected in all: " + ", ".join(f"{v} {k}" for k, v in totals.items()) + ".", "",
             "| schedule | budget | outcome | attempts | spent | interruptions | kills (tick / mid-launch) | "
             "launch faults | poll faults | weights equal | orphans | seconds |",
             "|---:|---:|---|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['index']} | ${r['budget']:.3f} | {r['state']} | {' > '.join(r['outcomes'])} | "
                     f"${r['spent']:.4f} | {r['interruptions']} | {r['supervisor kills'] - r['kills mid-launch']} / "
                     f"{r['kills mid-launch']} | {r['launch faults']} | {r['poll faults']} | "
                     f"{'n/a' if r['equal'] is None else r['equal']} | {r['orphans']} | {r['seconds']:.0f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:3]))
    sys.exit(0 if len(ok) == len(rows) else 1)


if __name__ == "__main__":
    main()
