"""What one supervisor tick did, for people watching (`jobs tick`, `launch --wait`, `serve`'s log) and for
scripts (`jobs tick --json`)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TickReport:
    launched: list[str] = field(default_factory=list)
    finished: list[tuple[str, str]] = field(default_factory=list)  # (job id, state)
    relaunching: list[str] = field(default_factory=list)
    reaped: list[str] = field(default_factory=list)  # labels
    why: dict[str, str] = field(default_factory=dict)  # job id -> how its attempt ended (relaunching)
    launch_failed: set[str] = field(default_factory=set)  # of relaunching: never started, placed again
    waiting: dict[str, str] = field(default_factory=dict)  # job id -> what it waits for (a key, a backend)
    faults: dict[str, str] = field(default_factory=dict)  # job id -> the error its step raised (recorded on it)

    def relaunch(self, job_id: str, why: str) -> None:
        """The job's attempt ended early; it resumes from its checkpoint on the next placement."""
        self.relaunching.append(job_id)
        self.why[job_id] = why

    def launch_failure(self, job_id: str, why: str) -> None:
        """The job's launch failed before anything ran; it is placed again."""
        self.relaunch(job_id, why)
        self.launch_failed.add(job_id)

    def lines(self) -> list[str]:
        """What happened in this tick, one line per event."""
        return ([f"launched {job_id}" for job_id in self.launched]
                + [f"{job_id}: {self.why[job_id]}; placing it again" if job_id in self.launch_failed else
                   f"{job_id}: attempt ended early ({self.why.get(job_id, 'ended')}); relaunching from its checkpoint"
                   for job_id in self.relaunching]
                + [f"{job_id}: {state}" for job_id, state in self.finished]
                + [f"{job_id}: {why}" for job_id, why in self.waiting.items()]
                + [f"{job_id}: skipped this tick: {error}" for job_id, error in self.faults.items()]
                + [f"reaped orphan {label}" for label in self.reaped])
