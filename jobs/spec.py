"""JobSpec: everything a runner needs to do one job, and nothing else (no keys, no prices); and KINDS,
the one declaration of each job kind both the box and the planner read.

The planner writes a spec, a backend passes it to the GPU box as JSON in the PLANNER_JOB_SPEC environment
variable (jobs.protocol.SPEC_ENV; or a file), and `python -m jobs.run` turns it into the kind's own
command line, so a spec runs exactly what a user typing the flags would run. The job id is stable across
attempts: every attempt of a job resumes from the same checkpoint URI and finishes at the same output URI.

Adding a job kind (ARCHITECTURE.md, "Adding a job kind"): its runner module in jobs/, an entry in KINDS
below, its sizing in planner/plan/kinds.py, a constructor in planner/plan/campaigns.py and a command in
the CLI; tests/test_architecture.py fails until all of them exist.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Kind:
    """A job kind as the box runs it and the planner stages it (its sizing: planner/plan/kinds.py)."""
    module: str  # run by `python -m` on the box; takes the spec's params as --flags
    inputs: dict[str, str]  # param naming a file, directory or model the job reads -> the CLI flag that sets it
    model_inputs: tuple[str, ...] = ()  # those inputs that name a model: a hub id there is no local path
    checkpointed: bool = False  # takes --checkpoint URI and resumes from it (else it resumes from its output)
    data_parallel: bool = False  # may run as several ranks, one per GPU of the offer

    def flag(self, param: str) -> str:
        return self.inputs.get(param) or "--" + param.replace("_", "-")


KINDS: dict[str, Kind] = {
    "train-bag": Kind("jobs.train_bag", {"model": "--model (or --previous)", "data": "--data (or --new-data)",
                                         "replay_data": "--replay-data"},
                      model_inputs=("model",), checkpointed=True, data_parallel=True),
    "merge": Kind("jobs.merge", {"models": "--models (or --previous)", "base_model": "--base-model"},
                  model_inputs=("models", "base_model")),
    "encode": Kind("jobs.encode", {"model": "--model", "input": "--input (or bagging's --encode)"},
                   model_inputs=("model",)),
    "evaluate": Kind("jobs.evaluate", {"model": "--model", "data": "--eval"}, model_inputs=("model",)),
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
        if self.ranks < 1 or (self.ranks > 1 and not KINDS[self.kind].data_parallel):
            raise SpecError(f"{self.kind} runs as one process; ranks must be 1, got {self.ranks}")
        reserved = {"output", "checkpoint", "spec"} & set(self.params)
        if reserved:
            raise SpecError(f"params must not set {', '.join(sorted(reserved))}: they come from the spec's URIs")

    @property
    def module(self) -> str:
        return KINDS[self.kind].module

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
        if self.checkpoint_uri and KINDS[self.kind].checkpointed:
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
