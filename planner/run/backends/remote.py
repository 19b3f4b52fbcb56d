"""What every cloud backend shares: the box's start script, and how an attempt ended.

A cloud attempt runs in a stock PyTorch image. Its start script installs this project's `jobs`
extra (PLANNER_JOBS_INSTALL, a pip requirement pinned to the launching version), then execs
`python -m jobs.run --report REPORT --hold` with the spec in the environment. REPORT sits next to
the job's output (`OUTPUT/.attempts/LABEL.json`), so the job's outputs and how each attempt ended
live in the same durable store (s3://, gs://, ...) that every provider's boxes and the supervisor
can reach. The provider's status only says whether the box is still there.

A box ends itself (jobs.boxend): once its report is written it deletes its own instance with the
instance-scoped identity its provider injects, and at its deadline (the script's start plus the attempt's
`max_hours`, what its budget reservation pays for) it stops the job to checkpoint, reports and ends, so
no box spends past its reservation even with the supervisor gone. The script starts jobs.boxend on its
own first (compressed into the script: it needs only the standard library) as the deadline's watchdog,
and runs it again when the install fails, to end the box after its startup window. A box that ends
without a report, or that has not started the job within that window, is a failure of the attempt
(counted toward the job's max failures), not a preemption, except where the provider took a spot box.
"""
from __future__ import annotations

import ast
import base64
import functools
import inspect
import math
import shlex
import zlib
from datetime import datetime

from jobs import boxend, storage
from jobs.protocol import EXIT_INTERRUPTED, duration, report_uri
from planner.run.backends.base import (
    Backend,
    BackendError,
    Handle,
    LaunchPlan,
    PollResult,
    Status,
    attempt_env,
    instance_label,
)
from planner.run.backends.markers import done_marker_exists
from planner.run.credentials import storage_credentials
from pricing.gpus import image_compute_caps, image_cuda  # noqa: F401 (image_cuda: the backends import it from here)
from pricing.providers.http import RetryPolicy
from pricing.providers.registry import has_spot

BID_MARGIN = 0.05  # over the current minimum bid, read just before launch
BID_CAP_OVER_PLAN = 1.2  # a bid may exceed the planned spot price by this much, so the reserved budget holds


DEFAULT_DISK_GB = 50.0  # when the job's requirements give none
RELIABILITY_FLOOR = 0.9  # Vast hosts below this are not rented (dstack's floor; docs/providers/vast.md, "Host filters")
# From the create to the job's start (the runner's started note): the image pull (a ~10 GB PyTorch image at
# >= 50 MB/s, 4 min) and the jobs install (2 min), with room for a slow host; the model download is the
# job's own first work, inside its hours. PLANNER_BOX_STARTUP_MINUTES overrides it.
DEFAULT_STARTUP_S = 20 * 60.0
DEADLINE_SLACK_S = 120.0  # past the box's own deadline and stop grace: its delete call landing
STOP_GRACE_SHARE, STOP_GRACE_MAX_S = 0.1, boxend.DEFAULT_STOP_GRACE_S  # of the box's hours: to checkpoint and end


class CloudBackend(Backend):
    """A provider reached through its API client (pricing.providers.<name>_api); boxes start from `image`
    and install `jobs_install`."""

    logs_hint = "the job's log tail arrives with its report when it ends"

    def __init__(self, api, *, image: str, jobs_install: str, disk_gb: float = DEFAULT_DISK_GB,
                 startup_s: float = DEFAULT_STARTUP_S):
        self.api = api
        self.image = image
        self.jobs_install = jobs_install
        self.disk_gb = disk_gb
        self.startup_s = startup_s

    @classmethod
    def from_settings(cls, settings, retry: RetryPolicy) -> CloudBackend:
        """Built from planner settings with the shared RetryPolicy (planner.run.launching.build_backends)."""
        raise NotImplementedError

    def logs(self, handle: Handle, tail: int = 200) -> str:
        return report_logs(handle, tail, self.logs_hint)

    def reported(self, label: str, output_uri: str) -> PollResult | None:
        return ended(output_uri, label)

    def past_deadline(self, handle: Handle, launched_at: datetime, now: datetime) -> str | None:
        """Why a box still up is past its deadline, or None. The box's own watchdog (jobs.boxend) ends it
        `max_hours` after its script starts, which is within the startup window of its create, plus the stop
        grace and DEADLINE_SLACK_S for the delete to land: a box still up after that is spending past its
        reservation (a watchdog that died, a delete the provider lost)."""
        max_hours = handle.data.get("max_hours")
        if not max_hours:
            return None
        grace = min(STOP_GRACE_MAX_S, max(5.0, STOP_GRACE_SHARE * max_hours * 3600))
        late = (now - launched_at).total_seconds() - (max_hours * 3600 + self.startup_s + grace + DEADLINE_SLACK_S)
        if late <= 0:
            return None
        return (f"the box is still up {duration(late)} past its deadline ({max_hours:.2f} h of reservation after "
                f"a startup window of {duration(self.startup_s)}): ended by the supervisor")

    def stalled(self, handle: Handle, launched_at: datetime, now: datetime) -> str | None:
        """Why a box that is up has not started its job within the startup window, or None: no started
        note and no report from it that long after its create (the install failed, the image cannot run
        the runner, the host hangs)."""
        waited = (now - launched_at).total_seconds()
        output = handle.data.get("output_uri")
        if waited <= self.startup_s or not output:
            return None
        report = report_uri(output, handle.label)
        for uri in (boxend.started_uri(report), report):
            try:
                storage.read_json(uri)
                return None
            except (OSError, ValueError):
                continue
        return (f"the box did not start the job within {duration(waited)} of its create (the startup window is "
                f"{duration(self.startup_s)}: image pull and install; PLANNER_BOX_STARTUP_MINUTES): ended")


def compute_cap_filter(image: str) -> dict:
    """Vast's `compute_cap` (x100) search filter for the image's PyTorch build: the placement's rule
    (pricing.gpus.image_compute_caps; docs/providers/vast.md, "Host filters") in Vast's units; {} when the tag names
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


def require_remote_output(spec) -> None:
    """Cloud boxes cannot see this machine's disk: outputs and checkpoints must be fsspec URIs."""
    for what, uri in (("output", spec.output_uri), ("checkpoint", spec.checkpoint_uri)):
        if uri and not storage.is_remote(uri):
            raise BackendError(f"job {spec.job_id}: its {what} {uri} is a local path a cloud box cannot reach; "
                               "set PLANNER_STORAGE_URI (e.g. s3://bucket/planner) or pass an s3://... URI")


def box_plan(backend: str, spec, offer, *, attempt: int, spot: bool, usd_per_hour: float, image: str,
             jobs_install: str, disk_gb: float, request: dict | None = None, hold: bool = True,
             secret_env: dict[str, str] | None = None, project: str = "", max_hours: float | None = None,
             api_url: str | None = None, startup_s: float = DEFAULT_STARTUP_S) -> LaunchPlan:
    """The attempt as a start script for a stock image (pure but for the storage credentials, read from this
    machine's environment unless given; the provider request is the caller's). `hold` ends the box after the
    job (jobs.boxend, through the provider's API at `api_url`), or keeps it until it is terminated; the box
    is gone `max_hours` after its script starts (None: when its job ends)."""
    require_remote_output(spec)
    if spot and offer is not None and not has_spot(offer.provider):  # the registry's word; prices: pricing.offer
        raise BackendError(f"{offer.provider} has no spot instances: plan this offer on-demand")
    if not jobs_install:
        raise BackendError("PLANNER_JOBS_INSTALL is not set: give the pip requirement that installs this "
                           "project's jobs extra on the box, e.g. 'planner[jobs] @ git+https://HOST/REPO@COMMIT'")
    label = instance_label(spec.job_id, attempt, project)
    env = attempt_env(spec, attempt) | {boxend.PROVIDER_ENV: backend, boxend.STARTUP_ENV: f"{startup_s:.0f}"}
    env |= {boxend.URL_ENV: api_url} if api_url else {}
    deadline = ()
    if max_hours:
        seconds = max_hours * 3600
        env[boxend.STOP_GRACE_ENV] = f"{min(STOP_GRACE_MAX_S, max(5.0, STOP_GRACE_SHARE * seconds)):.0f}"
        now_plus = f"python -c 'import time;print(int(time.time()+{seconds:.0f}))'"
        deadline = (f"export {boxend.DEADLINE_ENV}=$({now_plus})",)
    setup = (*deadline, f"B={shlex.quote(_boxend_inline())}",  # jobs.boxend, before the install: the watchdog
             '{ python -c "$B" guard & }',
             f'pip install --quiet --no-cache-dir {shlex.quote(jobs_install)} || {{ python -c "$B" install-failed; '
             'exit 1; }')
    command = ("python", "-m", "jobs.run", "--report", report_uri(spec.output_uri, label)) + (("--hold",) if hold else ())
    return LaunchPlan(backend=backend, job_id=spec.job_id, attempt=attempt, spot=spot, usd_per_hour=usd_per_hour,
                      project=project,
                      command=command, env=env, offer=offer, image=image, setup=setup, disk_gb=disk_gb,
                      request={"output_uri": spec.output_uri, "max_hours": max_hours, **(request or {})},
                      secret_env=storage_credentials(spec.output_uri) if secret_env is None else dict(secret_env))


@functools.cache
def _boxend_inline() -> str:
    """jobs.boxend's own code as a `python -c` program, run where the install failed and the package cannot
    be imported: its docstrings dropped, zlib-compressed and base64-encoded, so the box script stays within
    Vast's 4096 characters for args + onstart (create_instance.yaml)."""
    tree = ast.parse(inspect.getsource(boxend))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            body[:1] = [] if len(body) > 1 else [ast.Pass()]
    packed = base64.b64encode(zlib.compress(ast.unparse(tree).encode(), 9)).decode()
    return f"import zlib,base64;exec(zlib.decompress(base64.b64decode('{packed}')))"


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
    """The box is gone or stopped: a report says how the job ended. Without one, a spot box (`spot`: the
    provider may have taken it) was preempted; any other box broke before the job could end, a failure
    counted toward the job's max failures (an install that failed, an image that cannot start, a host
    that died): relaunching such a box without a count would rent boxes without end."""
    result = ended(output_uri, label)
    if result is not None:
        return result
    if done_marker_exists(output_uri):
        return PollResult(Status.SUCCEEDED, exit_code=0)
    if spot:
        return PollResult(Status.PREEMPTED, detail=why)
    return PollResult(Status.FAILED, detail=f"{why} without a report: the box ended before its job did")
