"""The local backend: the job as a subprocess on this machine (a lab's own GPU box, the demo, the tests).

Each attempt gets a run directory under Settings.runs_dir named by its label, holding the log, the
process id and, once the job ends, its exit code (written by planner.run.backends.local_wrapper, so a
restarted supervisor that is not the job's parent still learns how it ended). The job runs in its own
session, so cancel, a graceful stop (SIGTERM only: a budget stop) and preemption reach the whole process group.

`preempt(handle, grace_s=5)` is the test and demo hook for an interruption as RunPod delivers one:
SIGTERM to the group, then SIGKILL after the grace period.
"""
from __future__ import annotations

import codecs
import functools
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from planner.config import secret_env_names
from planner.run.backends.base import (
    Backend,
    BackendError,
    Handle,
    LaunchPlan,
    PollResult,
    Status,
    attempt_env,
    job_of_label,
)
from planner.run.backends.markers import done_marker_exists
from pricing import gpus as gpus_table
from pricing.db import utcnow
from pricing.offer import Offer

LOCAL_OFFER_KEY = "local"
KILL_SETTLE_S = 5.0  # how long a cancel waits for a SIGKILLed group to be gone
# A job's output goes to a log file: progress bars (tqdm, huggingface_hub and transformers, which follows
# huggingface_hub's switch) would fill it with carriage-return redraws. jobs.lifecycle does the same on a box.
QUIET_PROGRESS_BARS = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
# What a local job inherits from the supervisor's environment: the process basics, the Python and GPU stack's
# settings, and the store's credentials (its outputs may live there); nothing else (a planner setting such
# as PLANNER_DB_URL, any key of any tool) reaches a job's code. Names are matched upper case.
JOB_ENV_NAMES = frozenset({"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR",
                           "TMP", "TEMP", "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "CONDA_PREFIX",
                           "LD_LIBRARY_PATH", "GOOGLE_APPLICATION_CREDENTIALS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"})
JOB_ENV_PREFIXES = ("LC_", "XDG_", "CUDA_", "NVIDIA_", "NCCL_", "TORCH_", "PYTORCH_", "OMP_", "MKL_", "HF_",
                    "TRANSFORMERS_", "AWS_", "FSSPEC_", "TOKENIZERS_")


def job_environment(environ) -> dict[str, str]:
    """The part of `environ` a local job gets (JOB_ENV_NAMES, JOB_ENV_PREFIXES), exact names only: a
    lower-case `runpod_api_key` or `path` is not PATH."""
    return {name: value for name, value in environ.items()
            if name.isupper() and (name in JOB_ENV_NAMES or name.startswith(JOB_ENV_PREFIXES))}


def local_offer(usd_per_hour: float = 0.0, gpus: int | None = None) -> Offer:
    """This machine as an offer like the others: its GPUs and VRAM as measured (torch when importable,
    else nvidia-smi), or on a CPU-only machine its cores, RAM and a measured CPU speed (Offer.tflops);
    `gpus` (PLANNER_LOCAL_GPUS) overrides how many a data-parallel job runs on. Measured once per process."""
    name, vram_gb, count = _local_gpu()
    cpus, ram_gb, cpu_tflops = _local_cpu()
    spec = gpus_table.resolve(name, vram_gb) if vram_gb > 0 else None
    count = gpus or count
    return Offer(provider="local", offer_key=LOCAL_OFFER_KEY, gpu_model=spec.model if spec else name,
                 gpu_name_raw=name, vram_gb=vram_gb, gpu_count=count,
                 on_demand_usd_per_gpu_hour=usd_per_hour / max(count, 1), spot_usd_per_gpu_hour=None, tier="local",
                 location="localhost", available=True, fetched_at=utcnow(), known_gpu=spec is not None,
                 vcpus=float(cpus), ram_gb=ram_gb, tflops=None if vram_gb > 0 else cpu_tflops)


GPU_DEVICES = ("/dev/nvidia0", "/dev/kfd", "/dev/dxg")  # CUDA, ROCm, WSL: without one, no GPU to ask torch about
TORCH_PROBE = ("import json, torch; ok = torch.cuda.is_available(); p = torch.cuda.get_device_properties(0) if ok "
               "else None; print(json.dumps([p.name, p.total_memory / 1024**3, torch.cuda.device_count()] if p else None))")


@functools.lru_cache(maxsize=1)
def _local_gpu() -> tuple[str, float, int]:
    """(name, VRAM GB per GPU, count); ("CPU", 0, 1) without a GPU. nvidia-smi when it is there, else torch
    (when installed) asked in a child process: the planner never imports torch itself."""
    if shutil.which("nvidia-smi") is not None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            rows = [line.rsplit(",", 1) for line in out.strip().splitlines() if "," in line]
            if rows:
                return rows[0][0].strip(), float(rows[0][1]) / 1024, len(rows)
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    if importlib.util.find_spec("torch") is not None and any(os.path.exists(d) for d in GPU_DEVICES):
        try:
            out = subprocess.run([sys.executable, "-c", TORCH_PROBE], capture_output=True, text=True, timeout=120,
                                 check=True, env={**os.environ, "CUDA_MODULE_LOADING": "LAZY"}).stdout
            found = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
            if found:
                return str(found[0]), float(found[1]), int(found[2])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    return "CPU", 0.0, 1


@functools.lru_cache(maxsize=1)
def _local_cpu() -> tuple[int, float | None, float]:
    """(cores this process may use, RAM GB, fp32 TFLOP/s of a 256x256 matmul loop on them)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        ram_gb = None
    return cores, ram_gb, _cpu_tflops()


def _cpu_tflops(n: int = 256, windows: int = 3, seconds: float = 0.04) -> float:
    """fp32 matmul TFLOP/s: the best of a few short windows (a busy machine makes any one of them slow)."""
    try:
        import numpy
    except ImportError:
        return 0.5
    a = numpy.random.default_rng(0).standard_normal((n, n), dtype=numpy.float32)
    a @ a  # warm up the BLAS threads
    best = 0.0
    for _ in range(windows):
        done, start = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - start < seconds:
            a @ a
            done += 1
        best = max(best, 2 * n**3 * done / (time.perf_counter() - start) / 1e12)
    return max(0.001, best)


def read_tail(stream: BinaryIO, lines: int, block: int = 64 * 1024, max_bytes: int = 16 * 1024 * 1024) -> bytes:
    """The last `lines` complete lines of a binary stream and what follows the last newline, read in
    blocks back from the end (a 300 MB log costs a block, not 300 MB), at most `max_bytes`; the stream is
    left at its end."""
    end = stream.seek(0, os.SEEK_END)
    position, data = end, b""
    while position > 0 and data.count(b"\n") <= lines and end - position < max_bytes:
        step = min(block, position)
        position -= step
        stream.seek(position)
        data = stream.read(step) + data
    stream.seek(end)
    return b"\n".join(data.split(b"\n")[-(lines + 1):])


class LocalBackend(Backend):
    name = "local"

    def __init__(self, runs_dir: Path, *, python: str = sys.executable, extra_env: dict[str, str] | None = None):
        self.runs_dir = Path(runs_dir)
        self.python = python
        self.extra_env = dict(extra_env or {})

    def plan(self, spec, offer: Offer | None, *, attempt: int, spot: bool, usd_per_hour: float,
             disk_gb: float | None = None, max_hours: float | None = None) -> LaunchPlan:
        env = attempt_env(spec, attempt)
        return LaunchPlan(backend=self.name, job_id=spec.job_id, attempt=attempt, spot=spot,
                          usd_per_hour=usd_per_hour, command=(self.python, "-m", "jobs.run"), env=env,
                          offer=offer, request={"output_uri": spec.output_uri}, project=self.project)

    def launch(self, plan: LaunchPlan) -> Handle:
        run_dir = self.runs_dir / plan.label
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("exit", "preempted", "cancelled"):
            (run_dir / stale).unlink(missing_ok=True)
        env = {**job_environment(os.environ), **QUIET_PROGRESS_BARS, **self.extra_env, **plan.env}  # no terminal
        secrets = set(secret_env_names())  # the job needs none of them (read without regard to case)
        env = {name: value for name, value in env.items() if name.upper() not in secrets}
        with open(run_dir / "log", "ab") as log:
            try:
                process = subprocess.Popen(
                    [self.python, "-m", "planner.run.backends.local_wrapper", str(run_dir / "exit"), "--", *plan.command],
                    env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, cwd=run_dir)
            except OSError as exc:
                raise BackendError(f"cannot start the job: {exc.strerror}; check that {self.python} runs") from None
        data = {"pid": process.pid, "started": _start_time(process.pid), "run_dir": str(run_dir),
                "output_uri": plan.request["output_uri"]}
        torn = run_dir / "handle.json.tmp"  # written whole, then renamed: a kill -9 never leaves half a record
        torn.write_text(json.dumps({**data, "label": plan.label}))
        os.replace(torn, run_dir / "handle.json")
        # The process is reaped in the background so it never lingers as a zombie in a long-lived supervisor.
        threading.Thread(target=process.wait, daemon=True).start()
        return Handle(backend=self.name, instance_id=f"pid-{process.pid}", label=plan.label, data=data)

    def poll(self, handle: Handle) -> PollResult:
        run_dir = Path(handle.data["run_dir"])
        exit_file = run_dir / "exit"
        if _alive(handle):
            return PollResult(Status.RUNNING)
        preempted = (run_dir / "preempted").exists()
        if not exit_file.exists():
            if preempted:
                return PollResult(Status.PREEMPTED, detail="interrupted (SIGTERM, then SIGKILL)")
            return PollResult(Status.LOST, detail="the job process vanished without an exit code")
        code = int(exit_file.read_text().strip() or -1)
        if code == 0 and done_marker_exists(handle.data["output_uri"]):
            return PollResult(Status.SUCCEEDED, exit_code=0)
        if preempted:
            return PollResult(Status.PREEMPTED, exit_code=code, detail="interrupted (SIGTERM)")
        if code == 0:
            return PollResult(Status.FAILED, exit_code=0, detail="exited 0 but wrote no DONE marker")
        return PollResult(Status.FAILED, exit_code=code, detail=f"exited {code}")

    def cancel(self, handle: Handle) -> None:
        (Path(handle.data["run_dir"]) / "cancelled").touch()
        self._signal_then_kill(handle, grace_s=10.0)

    def stop(self, handle: Handle) -> bool:
        """SIGTERM to the job's process group, and return: the job checkpoints and exits 75, which the wrapper
        records (local_wrapper); the supervisor polls for it and cancels the attempt if it outlives its grace."""
        if _alive(handle):
            _killpg(handle, signal.SIGTERM)
        return True

    def preempt(self, handle: Handle, grace_s: float = 5.0, *, wait: bool = False) -> None:
        """Interrupt the attempt as a spot provider would: SIGTERM, SIGKILL after `grace_s`."""
        (Path(handle.data["run_dir"]) / "preempted").touch()
        if wait:
            self._signal_then_kill(handle, grace_s)
        else:
            threading.Thread(target=self._signal_then_kill, args=(handle, grace_s), daemon=True).start()

    def logs(self, handle: Handle, tail: int = 200) -> str:
        log = Path(handle.data["run_dir"]) / "log"
        if not log.exists():
            return ""
        with open(log, "rb") as stream:
            lines = read_tail(stream, tail).decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-tail:])

    def follow_logs(self, handle: Handle, stop: threading.Event, tail: int = 100,
                    poll_s: float = 0.2) -> Iterator[str]:
        """The last `tail` lines of the attempt's log, then each new line as it is written, until
        `stop` is set (what was written by then is still yielded). Lines come without their newline."""
        log = Path(handle.data["run_dir"]) / "log"
        while not log.exists():
            if stop.wait(poll_s):
                return
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a chunk may end mid-character
        with open(log, "rb") as stream:
            lines = decoder.decode(read_tail(stream, max(tail, 0))).split("\n")
            partial = lines.pop()  # after the last newline: a line still being written
            yield from lines[-tail:] if tail > 0 else []
            while True:
                stopping = stop.is_set()
                chunk = stream.read()
                if chunk:
                    lines = (partial + decoder.decode(chunk)).split("\n")
                    partial = lines.pop()
                    yield from lines
                elif stopping:
                    if partial:
                        yield partial
                    return
                else:
                    stop.wait(poll_s)

    def list_labeled(self) -> list[Handle]:
        handles = []
        for record in sorted(self.runs_dir.glob("*/handle.json")) if self.runs_dir.exists() else []:
            try:
                data = json.loads(record.read_text())
                label = data.pop("label")
            except (OSError, ValueError, KeyError, AttributeError):  # emptied by hand or a full disk: skipped, so
                continue  # one bad record never stops the reaper from ending the other orphans
            handle = Handle(backend=self.name, instance_id=f"pid-{data['pid']}", label=label, data=data)
            if job_of_label(label) and _alive(handle):
                handles.append(handle)
        return handles

    def _signal_then_kill(self, handle: Handle, grace_s: float) -> None:
        if not _alive(handle):
            return
        _killpg(handle, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not _alive(handle):
                return
            time.sleep(0.05)
        _killpg(handle, signal.SIGKILL)
        # SIGKILL is delivered at once but the exit is not: return once the group is gone, so the reaper's
        # listing right after a cancel does not find the wrapper still there and "reap" it a second time
        deadline = time.monotonic() + KILL_SETTLE_S
        while _alive(handle) and time.monotonic() < deadline:
            time.sleep(0.05)


def _killpg(handle: Handle, sig: int) -> None:
    try:
        os.killpg(handle.data["pid"], sig)  # the wrapper leads its own session, so its pid is the group id
    except ProcessLookupError:
        pass


def _alive(handle: Handle) -> bool:
    """The wrapper process of this handle still runs (not a later process that reused its pid)."""
    pid = handle.data["pid"]
    if not os.path.isdir("/proc"):  # no process start times to compare: trust the pid
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
    started = _start_time(pid)
    if started is None or started != handle.data.get("started"):
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), which tells pids apart."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
