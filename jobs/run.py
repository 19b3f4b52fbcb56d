"""Run the job a JobSpec describes: `python -m jobs.run [--spec FILE.json]` (default: $PLANNER_JOB_SPEC).

This is what a backend starts on the GPU box. It translates the spec into the kind's own flags and
calls that job's main() in this process, so exit codes pass through unchanged (0 done, 2 bad input,
75 interrupted and resumable).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from jobs.spec import SPEC_ENV, JobSpec, SpecError


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
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"job {spec.job_id}: python -m {spec.module} {' '.join(spec.argv())}", file=sys.stderr, flush=True)
    return importlib.import_module(spec.module).main(spec.argv())


if __name__ == "__main__":
    raise SystemExit(main())
