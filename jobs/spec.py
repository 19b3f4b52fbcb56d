"""JobSpec: everything a runner needs to do one job, and nothing else (no keys, no prices).

The planner writes it, a backend passes it to the GPU box as JSON in the PLANNER_JOB_SPEC environment
variable (or a file), and `python -m jobs.run` turns it into the kind's own command line, so a spec
runs exactly what a user typing the flags would run. The job id is stable across attempts: every
attempt of a job resumes from the same checkpoint URI and finishes at the same output URI.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SPEC_ENV = "PLANNER_JOB_SPEC"

# kind -> (module run by `python -m`, whether it takes --checkpoint, whether it runs data-parallel)
KINDS: dict[str, tuple[str, bool, bool]] = {
    "train-bag": ("jobs.train_bag", True, True),
    "merge": ("jobs.merge", False, False),
    "encode": ("jobs.encode", False, False),
    "evaluate": ("jobs.evaluate", False, False),
}


class SpecError(ValueError):
    """A spec that cannot run: one line naming what is wrong."""


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    kind: str
    output_uri: str
    params: dict[str, Any] = field(default_factory=dict)
    checkpoint_uri: str | None = None
    ranks: int = 1  # processes, one per GPU; more than one only for a data-parallel kind

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SpecError(f"unknown job kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if not self.job_id or not self.output_uri:
            raise SpecError("a job spec needs a job_id and an output_uri")
        if self.ranks < 1 or (self.ranks > 1 and not KINDS[self.kind][2]):
            raise SpecError(f"{self.kind} runs as one process; ranks must be 1, got {self.ranks}")
        reserved = {"output", "checkpoint", "spec"} & set(self.params)
        if reserved:
            raise SpecError(f"params must not set {', '.join(sorted(reserved))}: they come from the spec's URIs")

    @property
    def module(self) -> str:
        return KINDS[self.kind][0]

    def argv(self) -> list[str]:
        """The kind's command-line flags: params as --flag value (lists comma-joined, True as a bare flag)."""
        args: list[str] = []
        for key, value in self.params.items():
            if value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif isinstance(value, (list, tuple)):
                args += [flag, ",".join(str(v) for v in value)]
            else:
                args += [flag, str(value)]
        args += ["--output", self.output_uri]
        if self.checkpoint_uri and KINDS[self.kind][1]:
            args += ["--checkpoint", self.checkpoint_uri]
        return args

    def to_json(self) -> str:
        data = {"job_id": self.job_id, "kind": self.kind, "params": self.params,
                "checkpoint_uri": self.checkpoint_uri, "output_uri": self.output_uri}
        return json.dumps(data | ({"ranks": self.ranks} if self.ranks != 1 else {}), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> JobSpec:
        try:
            data = json.loads(text) if isinstance(text, str) else dict(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"the job spec is not valid JSON: {exc}") from None
        known = {"job_id", "kind", "params", "checkpoint_uri", "output_uri", "ranks"}
        if unknown := set(data) - known:
            raise SpecError(f"unknown job spec fields: {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise SpecError(f"incomplete job spec: {exc}") from None
