"""Run the job a JobSpec describes: `python -m jobs.run [--spec FILE.json]` (default: $PLANNER_JOB_SPEC).

This is what a backend starts on the GPU box. It translates the spec into the kind's own flags and
calls that job's main() in this process, so exit codes pass through unchanged (0 done, 2 bad input,
75 interrupted and resumable).

On a cloud box (`--report URI --hold`) the job runs as a child process instead: SIGTERM and SIGINT
are forwarded to it (the runner is the container's PID 1), its output passes through to the
provider's log, and when it ends the runner writes `URI` (JSON: exit code, the log's last lines)
atomically, so the supervisor learns how the attempt ended from the durable store, not from a
provider status that cannot tell "exited" from "interrupted". `--hold` then keeps the container
alive until the supervisor terminates it: a provider that restarts exited containers must not rerun
a finished or failed job behind the supervisor's back.
"""
from __future__ import annotations

import argparse
import collections
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from jobs import boxenv, storage
from jobs.spec import SPEC_ENV, JobSpec, SpecError

LOG_TAIL_LINES = 200


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
    parser.add_argument("--hold", action="store_true", help="after --report, wait until terminated")
    args = parser.parse_args(argv)
    boxenv.restore()  # entries a provider's length limit split, and a GCS key passed by value
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"job {spec.job_id}: python -m {spec.module} {' '.join(spec.argv())}", file=sys.stderr, flush=True)
    if args.report is None:
        return importlib.import_module(spec.module).main(spec.argv())
    code = run_and_report(spec, args.report)
    if args.hold:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(code))
        while True:
            time.sleep(3600)
    return code


def run_and_report(spec: JobSpec, report_uri: str) -> int:
    """Run the job in a child process, forwarding signals and keeping its log tail; then write the report."""
    child = subprocess.Popen([sys.executable, "-m", spec.module, *spec.argv()], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: child.send_signal(number))
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    for raw in child.stdout:
        line = raw.decode(errors="replace")
        sys.stderr.write(line)
        sys.stderr.flush()
        tail.append(line.rstrip("\n"))
    code = child.wait()
    storage.write_json_atomic(report_uri, {"job_id": spec.job_id, "exit_code": code, "log_tail": "\n".join(tail)})
    return code


if __name__ == "__main__":
    raise SystemExit(main())
