"""What every cloud backend shares: the box's start script, and how an attempt ended.

A cloud attempt runs in a stock PyTorch image. Its start script installs this project's `jobs`
extra (PLANNER_JOBS_INSTALL, a pip requirement pinned to the launching version), then execs
`python -m jobs.run --report REPORT --hold` with the spec in the environment. REPORT sits next to
the job's output (`OUTPUT/.attempts/LABEL.json`), so the job's outputs and how each attempt ended
live in the same durable store (s3://, gs://, ...) that every provider's boxes and the supervisor
can reach. The provider's status only says whether the box is still there.
"""
from __future__ import annotations

import math
import shlex

from jobs import storage
from jobs.lifecycle import EXIT_INTERRUPTED
from planner.run.backends.base import (
    Backend, BackendError, Handle, LaunchPlan, PollResult, Status, attempt_env, instance_label,
)
from planner.run.backends.markers import done_marker_exists
from planner.run.credentials import storage_credentials
from pricing.gpus import image_compute_caps, image_cuda  # noqa: F401 (image_cuda: the backends import it from here)
from pricing.providers.http import RetryPolicy

BID_MARGIN = 0.05  # over the current minimum bid, read just before launch
BID_CAP_OVER_PLAN = 1.2  # a bid may exceed the planned spot price by this much, so the reserved budget holds


DEFAULT_DISK_GB = 50.0  # when the job's requirements give none
RELIABILITY_FLOOR = 0.9  # Vast hosts below this are not rented (dstack's floor, reference note §4)


class CloudBackend(Backend):
    """A provider reached through its API client (pricing.providers.<name>_api); boxes start from `image`
    and install `jobs_install`."""

    logs_hint = "the job's log tail arrives with its report when it ends"

    def __init__(self, api, *, image: str, jobs_install: str, disk_gb: float = DEFAULT_DISK_GB):
        self.api = api
        self.image = image
        self.jobs_install = jobs_install
        self.disk_gb = disk_gb

    @classmethod
    def from_settings(cls, settings, retry: RetryPolicy) -> CloudBackend:
        """Built from planner settings with the shared RetryPolicy (planner.run.launching.build_backends)."""
        raise NotImplementedError

    def logs(self, handle: Handle, tail: int = 200) -> str:
        return report_logs(handle, tail, self.logs_hint)


def compute_cap_filter(image: str) -> dict:
    """Vast's `compute_cap` (x100) search filter for the image's PyTorch build: the placement's rule
    (pricing.gpus.image_compute_caps, reference note §4 table) in Vast's units; {} when the tag names
    no CUDA version."""
    caps = image_compute_caps(image)
    if caps is None:
        return {}
    low, high = caps
    return {"lt": round(high * 100)} if high != math.inf else {"gte": round(low * 100)}


def bid_cap(offer, usd_per_hour: float) -> float:
    """The most a spot attempt may bid per instance-hour: the lower of the offer's on-demand price and
    120 % of the planned price (unrounded; callers round in their provider's unit)."""
    on_demand = offer.on_demand_usd_per_gpu_hour
    return min([usd_per_hour * BID_CAP_OVER_PLAN] + ([on_demand * offer.gpu_count] if on_demand else []))


def spot_bid(minimum: float, cap: float, what: str) -> float:
    """min(cap, current minimum + 5 %); a BackendError (re-plan) when the minimum has risen above the cap."""
    bid = round(min(cap, minimum * (1 + BID_MARGIN)), 4)
    if bid < minimum:
        raise BackendError(f"the minimum bid for {what} rose to ${minimum:.3f}, above our cap ${cap:.3f}; "
                           "re-planning")
    return bid


def report_uri(output_uri: str, label: str) -> str:
    return storage.join(output_uri, ".attempts", f"{label}.json")


def require_remote_output(spec) -> None:
    """Cloud boxes cannot see this machine's disk: outputs and checkpoints must be fsspec URIs."""
    for what, uri in (("output", spec.output_uri), ("checkpoint", spec.checkpoint_uri)):
        if uri and not storage.is_remote(uri):
            raise BackendError(f"job {spec.job_id}: its {what} {uri} is a local path a cloud box cannot reach; "
                               "set PLANNER_STORAGE_URI (e.g. s3://bucket/planner) or pass an s3://... URI")


def box_plan(backend: str, spec, offer, *, attempt: int, spot: bool, usd_per_hour: float, image: str,
             jobs_install: str, disk_gb: float, request: dict | None = None, hold: bool = True,
             secret_env: dict[str, str] | None = None) -> LaunchPlan:
    """The attempt as a start script for a stock image (pure but for the storage credentials, read from this
    machine's environment unless given; the provider request is the caller's). `hold` keeps the container
    alive after the job, for providers that restart exited containers."""
    require_remote_output(spec)
    if not jobs_install:
        raise BackendError("PLANNER_JOBS_INSTALL is not set: give the pip requirement that installs this "
                           "project's jobs extra on the box, e.g. 'planner[jobs] @ git+https://HOST/REPO@COMMIT'")
    label = instance_label(spec.job_id, attempt)
    env = attempt_env(spec, attempt)
    setup = (f"pip install --quiet --no-cache-dir {shlex.quote(jobs_install)}",)
    command = ("python", "-m", "jobs.run", "--report", report_uri(spec.output_uri, label)) + (("--hold",) if hold else ())
    return LaunchPlan(backend=backend, job_id=spec.job_id, attempt=attempt, spot=spot, usd_per_hour=usd_per_hour,
                      command=command, env=env, offer=offer, image=image, setup=setup, disk_gb=disk_gb,
                      request={"output_uri": spec.output_uri, **(request or {})},
                      secret_env=storage_credentials(spec.output_uri) if secret_env is None else dict(secret_env))


def ended(output_uri: str, label: str) -> PollResult | None:
    """How the attempt ended, from its report; None while there is none."""
    try:
        report = storage.read_json(report_uri(output_uri, label))
    except (OSError, ValueError):
        return None
    code = report.get("exit_code")
    if code == 0 and done_marker_exists(output_uri):
        return PollResult(Status.SUCCEEDED, exit_code=0)
    if code == EXIT_INTERRUPTED:
        return PollResult(Status.FAILED, exit_code=code, detail="interrupted; resumable from its checkpoint")
    detail = "exited 0 but wrote no DONE marker" if code == 0 else f"exited {code}"
    return PollResult(Status.FAILED, exit_code=code, detail=detail)


def report_logs(handle: Handle, tail: int, hint: str) -> str:
    """The last `tail` lines of the log the attempt's report carries, or `hint` while there is none."""
    try:
        text = storage.read_json(report_uri(handle.data["output_uri"], handle.label)).get("log_tail", "")
    except (OSError, ValueError):
        text = ""
    return "\n".join(text.splitlines()[-tail:]) if text else f"({hint})"


def vanished(output_uri: str, label: str, spot: bool, why: str) -> PollResult:
    """The box is gone or stopped: a report says how the job ended; without one, a spot box was taken."""
    result = ended(output_uri, label)
    if result is not None:
        return result
    if done_marker_exists(output_uri):
        return PollResult(Status.SUCCEEDED, exit_code=0)
    return PollResult(Status.PREEMPTED if spot else Status.LOST, detail=why)
