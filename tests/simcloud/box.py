"""A simulated box: the create request's command run as a local subprocess in a scratch directory.

The box's environment is only what the create request carried, plus what the provider injects into
every container (`provided_env`: the instance's id and instance-scoped key), plus what a stock PyTorch
image provides: an interpreter on PATH (this test environment's, so torch is there), HOME, and a pip
configured to install into the box's own site directory without dependencies (PIP_TARGET,
PIP_NO_DEPS, PIP_NO_INDEX: the image already has torch and friends), which is first on PYTHONPATH.
Nothing else of the test process's environment reaches it, so a credential the request forgot
fails the box as it would fail a real one. Hub access is off (the image has no network here).
Stopping a box is what providers do: SIGTERM to its process group, SIGKILL after a grace period.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

IMAGE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "PIP_NO_DEPS": "1", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_QUIET": "1",
             "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Box:
    def __init__(self, root: Path, name: str, argv: list[str], env: dict[str, str], *, grace_s: float = 5.0,
                 provided_env: dict[str, str] | None = None):
        self.dir = Path(root) / name
        (self.dir / "work").mkdir(parents=True, exist_ok=True)
        site = self.dir / "site"
        site.mkdir(exist_ok=True)
        self.argv, self.request_env, self.grace_s = list(argv), dict(env), grace_s
        self.env = {**self.request_env, **(provided_env or {}), **IMAGE_ENV, "HOME": str(self.dir),
                    "PYTHONPATH": str(site), "PIP_TARGET": str(site),
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])}
        self.log_path = self.dir / "log"
        self.started_at = now()
        self.stopped_at: datetime | None = None
        self.stop_reason: str | None = None
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.dir / "work", stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._reaper = threading.Thread(target=self._wait, daemon=True)
        self._reaper.start()

    def _wait(self) -> None:
        self.process.wait()
        if self.stopped_at is None:
            self.stopped_at = now()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return self.process.poll()

    def stop(self, reason: str, *, wait: bool = False) -> None:
        """SIGTERM to the box's processes, SIGKILL after the grace period (in the background unless `wait`)."""
        self.stop_reason = self.stop_reason or reason
        if not self.alive:
            return
        if wait:
            self._signal_then_kill()
        else:
            threading.Thread(target=self._signal_then_kill, daemon=True).start()

    def _signal_then_kill(self) -> None:
        self._killpg(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            if not self.alive:
                return
            time.sleep(0.05)
        self._killpg(signal.SIGKILL)
        self.process.wait()

    def _killpg(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def environ_of_processes(self) -> list[bytes]:
        """/proc/PID/environ and cmdline of every process in the box's group (for the secrets checks)."""
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) != self.process.pid:
                    continue
                out.append((entry / "cmdline").read_bytes())
            except (OSError, ProcessLookupError):
                continue
        return out
