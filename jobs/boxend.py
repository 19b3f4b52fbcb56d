"""A cloud box ends itself: its own instance deleted with the identity its provider injects, at the
job's end or at the box's deadline, so no box outlives its job or its reservation even when the
planner that rented it is gone for good.

The providers put an instance-scoped identity in every container's environment; no account key is
ever sent to a box:

- RunPod: `RUNPOD_POD_ID` and `RUNPOD_API_KEY`, "Pod-scoped API key" (runpod/docs
  pods/templates/environment-variables.mdx @a900806e, "Runpod-provided variables"; the older
  pods/references/environment-variables.mdx: "limited in scope to only the pod"). The box deletes
  itself with `DELETE /v2/pods/{id}` (docs/providers/runpod.md, "Pods"). Unverified: that the
  pod-scoped key is accepted by REST v2's DELETE (RunPod's docs show it only for the pod's own calls).
- Vast.ai: `CONTAINER_ID` and `CONTAINER_API_KEY`, a "per-instance API key" (vast-ai/docs
  guides/instances/docker-environment.mdx @c6246226, "Predefined Variables"; api-reference/hello-world.mdx:
  "a restricted key injected into the container as CONTAINER_API_KEY, it can only start, stop, or destroy
  that specific instance"). The box deletes itself with `DELETE /api/v0/instances/{id}/`; a 404 is "gone"
  only when its `error` is `no_such_instance`, since a revoked key also answers 404 (`auth_error`).

Every request names its own User-Agent: RunPod's API sits behind Cloudflare, whose edge answers the standard
library's default (`Python-urllib/3.x`) with 403 "error code: 1010" before it reads the key (docs/providers/
runpod.md, "Box identity"); the box would read that as a refused key and never end itself.

The launch names the provider and its API base (PLANNER_PROVIDER, PLANNER_PROVIDER_URL), the Unix time
by which the box must be gone (PLANNER_BOX_DEADLINE: the attempt's worst-case hours from its budget
reservation), how long before it the job is stopped to checkpoint (PLANNER_BOX_STOP_GRACE_S), and how
long the box may take to start the job (PLANNER_BOX_STARTUP_S).

Standard library only: the box script runs this file by itself (`python -c`, compressed), before the
install of the jobs package: `guard` in the background deletes the instance at the deadline whatever
else happens on the box, and `install-failed` (when the install fails, so even a box that never gets to
run the job ends itself) waits out the startup window (the supervisor, if alive, reads the container
log and ends the box first), then deletes the instance.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

PROVIDER_ENV = "PLANNER_PROVIDER"
URL_ENV = "PLANNER_PROVIDER_URL"
DEADLINE_ENV = "PLANNER_BOX_DEADLINE"
STOP_GRACE_ENV = "PLANNER_BOX_STOP_GRACE_S"
STARTUP_ENV = "PLANNER_BOX_STARTUP_S"
DEFAULT_STOP_GRACE_S = 300.0
KILL_MARGIN_S = 0.2  # of the grace: past this share of it, a job that has not saved is killed
# provider -> (instance id variable, instance-scoped key variable, default API base, DELETE path)
IDENTITY = {
    "runpod": ("RUNPOD_POD_ID", "RUNPOD_API_KEY", "https://api.runpod.io", "/v2/pods/{id}"),
    "vast": ("CONTAINER_ID", "CONTAINER_API_KEY", "https://console.vast.ai", "/api/v0/instances/{id}/"),
}
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
USER_AGENT = "planner-box/1 (jobs.boxend)"  # never urllib's default, which RunPod's edge refuses


def own_instance(environ=None) -> tuple[str, str, str] | None:
    """(provider, instance id, DELETE URL) for this box, or None where no provider identity is present."""
    environ = os.environ if environ is None else environ
    provider = environ.get(PROVIDER_ENV, "")
    if provider not in IDENTITY:
        return None
    id_var, key_var, default_url, path = IDENTITY[provider]
    instance, key = environ.get(id_var), environ.get(key_var)
    if not instance or not key:
        return None
    base = (environ.get(URL_ENV) or default_url).rstrip("/")
    return provider, instance, base + path.format(id=instance)


def end_self(environ=None, *, tries: int = 8, sleep=time.sleep, log=print) -> str | None:
    """Delete this box's own instance; None when it is gone, else why not (one line, no key in it).

    Retries 429, 5xx and connection errors with backoff (1, 2, 4 ... 30 s); an authentication failure
    (a 401/403, or Vast's 404 `auth_error`) is not retried: the key will not come back."""
    environ = os.environ if environ is None else environ
    found = own_instance(environ)
    if found is None:
        return "no instance identity in the environment"
    provider, instance, url = found
    key = environ[IDENTITY[provider][1]]
    why = "not tried"
    for attempt in range(tries):
        request = urllib.request.Request(url, method="DELETE",
                                         headers={"Authorization": f"Bearer {key}", "User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(request, timeout=30):
                return None
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and _gone(provider, exc):
                return None
            why = f"HTTP {exc.code} deleting {provider} instance {instance}"
            if exc.code not in RETRYABLE:
                return why
        except (urllib.error.URLError, OSError) as exc:
            why = f"{type(exc).__name__} deleting {provider} instance {instance}"
        if attempt + 1 < tries:
            log(f"box: {why}; retrying", file=sys.stderr, flush=True)
            sleep(min(2 ** attempt, 30))
    return why


def _gone(provider: str, exc: urllib.error.HTTPError) -> bool:
    """A 404 that means the instance no longer exists (RunPod: any 404 on the pod's own path)."""
    if provider != "vast":
        return True
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("error") in ("no_such_instance", "not_found")


def deadline(environ=None) -> float | None:
    """The Unix time by which this box must be gone, or None when the launch set none."""
    environ = os.environ if environ is None else environ
    try:
        return float(environ[DEADLINE_ENV])
    except (KeyError, ValueError):
        return None


def stop_grace_s(environ=None) -> float:
    environ = os.environ if environ is None else environ
    try:
        return max(0.0, float(environ.get(STOP_GRACE_ENV, DEFAULT_STOP_GRACE_S)))
    except ValueError:
        return DEFAULT_STOP_GRACE_S


def stop_times(environ=None) -> tuple[float, float] | None:
    """(when to ask the job to checkpoint and stop, when to kill it if it has not), Unix times; None
    without a deadline. Both leave the rest of the grace for the report and the delete."""
    end = deadline(environ)
    if end is None:
        return None
    grace = stop_grace_s(environ)
    return end - grace, end - grace * KILL_MARGIN_S


def started_uri(report_uri: str) -> str:
    """Where `jobs.run --report` notes that the box started the job (the install worked): beside the report."""
    return report_uri.removesuffix(".json") + ".started.json"


def watch_deadline(child, environ=None, *, clock=time.time, log=print) -> threading.Event:
    """At the box's stop time, SIGTERM `child` (the job checkpoints and exits 75); at the kill time, SIGKILL
    it. Returns an event set once the deadline acted (a daemon thread watches; nothing without a deadline)."""
    acted = threading.Event()
    times = stop_times(environ)
    if times is None:
        return acted

    def watch():
        for when, sig, what in ((times[0], signal.SIGTERM, "asking the job to checkpoint and stop"),
                                (times[1], signal.SIGKILL, "the job did not stop in time: killing it")):
            while child.poll() is None and clock() < when:
                time.sleep(min(1.0, max(0.01, when - clock())))
            if child.poll() is not None:
                return
            acted.set()
            log(f"box: the box's deadline (its reservation) is near: {what}", file=sys.stderr, flush=True)
            child.send_signal(sig)

    threading.Thread(target=watch, daemon=True).start()
    return acted


def end_or_wait(environ=None, *, every_s: float = 60.0, clock=time.time, sleep=time.sleep, log=print) -> None:
    """After the job's report is written: delete this instance, and return once it is deleted (the
    provider's stop follows). Where that fails, keep trying every `every_s` (sooner near the deadline).
    A box without an identity (another backend) waits to be terminated, as it always did."""
    environ = os.environ if environ is None else environ
    if own_instance(environ) is None:
        while True:
            sleep(3600)
    while True:
        why = end_self(environ, log=log)
        if why is None:
            log("box: deleted its own instance", file=sys.stderr, flush=True)
            return
        log(f"box: cannot end itself ({why}); trying again, or waiting to be terminated", file=sys.stderr, flush=True)
        end = deadline(environ)
        sleep(every_s if end is None or clock() >= end else min(every_s, max(1.0, end - clock())))


def install_failed(environ=None, *, clock=time.time, sleep=time.sleep, log=print) -> int:
    """The box could not install the jobs package: wait out the startup window (so the container log
    can be read), then end the box. Returns 1 (what the box script exits with)."""
    environ = os.environ if environ is None else environ
    if own_instance(environ) is None:  # another backend's box: its own machinery ends it
        log("box: the jobs package did not install", file=sys.stderr, flush=True)
        return 1
    try:
        window = float(environ.get(STARTUP_ENV, "600"))
    except ValueError:
        window = 600.0
    until = clock() + window * 1.5  # past the supervisor's own startup check, which reads this log first
    end = deadline(environ)
    if end is not None:
        until = min(until, end - stop_grace_s(environ) * KILL_MARGIN_S)
    log(f"box: the jobs package did not install; this box ends itself in {max(0, until - clock()):.0f} s",
        file=sys.stderr, flush=True)
    while clock() < until:
        sleep(min(5.0, max(0.0, until - clock())))
    end_or_wait(environ, clock=clock, sleep=sleep, log=log)
    return 1


def guard(environ=None, *, clock=time.time, sleep=time.sleep, log=print) -> int:
    """The box's watchdog, started before anything else on it: at the deadline the instance is deleted,
    whatever the job, the install or the planner are doing (jobs.run has stopped the job to checkpoint
    just before). Returns at once where the launch set no deadline."""
    environ = os.environ if environ is None else environ
    end = deadline(environ)
    if end is None or own_instance(environ) is None:
        return 0
    while clock() < end:
        sleep(min(60.0, max(0.0, end - clock())))
    log("box: its deadline (the attempt's reservation) has come: ending the box", file=sys.stderr, flush=True)
    end_or_wait(environ, clock=clock, sleep=sleep, log=log)
    return 0


if __name__ == "__main__":
    mode = sys.argv[-1]
    sys.exit(install_failed() if mode == "install-failed" else guard() if mode == "guard"
             else 0 if end_self() is None else 1)
