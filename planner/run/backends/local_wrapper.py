"""Run a job command and write its exit code to a file, so a supervisor that is not its parent can read it.

    python -m planner.run.backends.local_wrapper EXIT_FILE -- COMMAND...

SIGTERM is passed on to the command (the job checkpoints and exits 75); when the whole process
group is SIGKILLed, as a preemption does, no exit file appears and the supervisor sees the attempt
as preempted or lost.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m planner.run.backends.local_wrapper EXIT_FILE -- COMMAND...", file=sys.stderr)
        return 2
    exit_file = Path(argv[0])
    child = subprocess.Popen(argv[2:])
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
    code = child.wait()
    code = code if code >= 0 else 128 - code  # killed by signal N -> 128 + N, as a shell reports it
    partial = exit_file.with_suffix(".tmp")
    partial.write_text(f"{code}\n")
    os.replace(partial, exit_file)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
