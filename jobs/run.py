"""Run the job a JobSpec describes: `python -m jobs.run [--spec FILE.json]` (default: $PLANNER_JOB_SPEC).

This is what a backend starts on the GPU box. It translates the spec into the kind's own flags and
calls that job's main() in this process, so exit codes pass through unchanged (0 done, 2 bad input,
75 interrupted and resumable).

On a cloud box (`--report URI --hold`) the job runs as a child process instead: SIGTERM and SIGINT
are forwarded to it (the runner is the container's PID 1), its output passes through to the
provider's log, and when it ends the runner writes `URI` (JSON: exit code, the log's last lines)
atomically, so the supervisor learns how the attempt ended from the durable store, not from a
provider status that cannot tell "exited" from "interrupted". It notes first that the job started
(jobs.boxend.started_uri: the install worked), and at the box's deadline (its reservation, from the
launch) stops the job to checkpoint (exit 75). `--hold` then ends the box: it deletes its own instance
with its provider's instance-scoped identity (jobs.boxend), or, without one, waits to be terminated.
A container that its provider restarts finds its report and does not run the job twice.

A spec with `ranks` N > 1 (a data-parallel job on an N-GPU offer) starts N copies of the job with
torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT; jobs.distributed reads it),
forwards signals to all of them and exits with their common outcome: 0 when all succeed, 2 when one
saw bad input, 75 when the ones that stopped were interrupted and resumable, else the first crash's
code. torchrun itself would do the starting, but it reports any failed rank as exit 1, which would
turn a resumable interruption (75) into a crash.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from jobs import boxend, boxenv, storage
from jobs.protocol import EXIT_BAD_INPUT, EXIT_DONE, EXIT_INTERRUPTED, SPEC_ENV
from jobs.spec import JobSpec, SpecError

LOG_TAIL_LINES = 200
RANK_GRACE_S = 60.0  # after one rank ends badly, how long the others get to finish their own save


def load_spec(path: Path | None) -> JobSpec:
    if path is not None:
        try:
            return JobSpec.from_json(path.read_text())
        except OSError as exc:
            raise SpecError(f"cannot read the spec file {path}: {exc.strerror}") from None
    text = os.environ.get(SPEC_ENV)
    if not text:
        raise SpecError(f"no job spec: pass --spec FILE.json or set {SPEC_ENV}")
    return JobSpec.from_json(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, help=f"a JobSpec JSON file (default: ${SPEC_ENV})")
    parser.add_argument("--report", metavar="URI", help="run the job as a child and write its exit report here")
    parser.add_argument("--hold", action="store_true", help="after --report, end this box (jobs.boxend) or wait "
                        "until terminated")
    args = parser.parse_args(argv)
    boxenv.restore()  # entries a provider's length limit split, and a GCS key passed by value
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"job {spec.job_id}: python -m {spec.module} {' '.join(spec.argv())}", file=sys.stderr, flush=True)
    if args.report is None:
        if spec.ranks > 1:
            return run_ranks(spec)
        return importlib.import_module(spec.module).main(spec.argv())
    reported = _report(args.report)
    if reported is not None:  # a container its provider restarted: the job ran; do not run it twice
        print(f"job {spec.job_id}: this attempt already ended (exit {reported.get('exit_code')}); not rerunning it",
              file=sys.stderr, flush=True)
        code = reported.get("exit_code", EXIT_INTERRUPTED)
    else:
        code = run_and_report(spec, args.report)
    if args.hold:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(code))
        boxend.end_or_wait()  # the box deletes its own instance; the provider's SIGTERM follows
        while True:
            time.sleep(3600)
    return code


def _report(uri: str) -> dict | None:
    try:
        report = storage.read_json(uri)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def run_and_report(spec: JobSpec, report_uri: str) -> int:
    """Run the job in a child process, forwarding signals and keeping its log tail; then write the report."""
    command = [sys.executable, "-m", spec.module, *spec.argv()] if spec.ranks == 1 else [sys.executable, "-m", "jobs.run"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=os.environ | {SPEC_ENV: spec.to_json()})
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: child.send_signal(number))
    storage.write_json_atomic(boxend.started_uri(report_uri), {"job_id": spec.job_id, "started_at": time.time()})
    deadline = boxend.watch_deadline(child)  # the box's reservation ends: checkpoint, report, end the box
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    for raw in child.stdout:
        line = raw.decode(errors="replace")
        sys.stderr.write(line)
        sys.stderr.flush()
        tail.append(line.rstrip("\n"))
    code = child.wait()
    if deadline.is_set() and code not in (EXIT_DONE, EXIT_BAD_INPUT):
        code = EXIT_INTERRUPTED  # stopped at the box's deadline: it resumes from its last checkpoint
    storage.write_json_atomic(report_uri, {"job_id": spec.job_id, "exit_code": code, "log_tail": "\n".join(tail),
                                           "deadline": deadline.is_set()})
    return code


def run_ranks(spec: JobSpec) -> int:
    """Start the job's `spec.ranks` processes on this machine, forward signals, combine their exit codes."""
    with socket.socket() as probe:  # a free port for the ranks' rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    world = {"WORLD_SIZE": str(spec.ranks), "LOCAL_WORLD_SIZE": str(spec.ranks), "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(port)}
    ranks = [subprocess.Popen([sys.executable, "-m", spec.module, *spec.argv()], stdin=subprocess.DEVNULL,
                              env=os.environ | world | {"RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(spec.ranks)]
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: [p.send_signal(number) for p in ranks if p.poll() is None])
    deadline = None
    while any(p.poll() is None for p in ranks):
        if deadline is None and any(p.returncode not in (None, 0) for p in ranks):
            deadline = time.monotonic() + RANK_GRACE_S  # the others are stuck in a collective, or saving
        if deadline is not None and time.monotonic() > deadline:
            for p in ranks:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.2)
    return combined_exit([p.wait() for p in ranks])


def combined_exit(codes: list[int]) -> int:
    """One exit code for a job's ranks (negative: killed by that signal, e.g. by us after another failed)."""
    ended = [c for c in codes if c != EXIT_DONE]
    if not ended:
        return EXIT_DONE
    if EXIT_BAD_INPUT in ended:
        return EXIT_BAD_INPUT
    own = [c for c in ended if c > 0]
    if own and all(c == EXIT_INTERRUPTED for c in own):
        return EXIT_INTERRUPTED
    crashes = [c for c in own if c != EXIT_INTERRUPTED] or ended
    return crashes[0]


if __name__ == "__main__":
    raise SystemExit(main())
