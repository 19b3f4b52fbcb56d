"""The BOOM recipe as job graphs: five bags then their merge (then encode / evaluate), and the
incremental stage (new data plus replayed old data, merged with the previous model)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from jobs import storage
from jobs.spec import JobSpec
from planner.config import Settings
from planner.plan import kinds

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
WEIGHTS = (0.2, 0.4, 0.6, 0.8, 1.0)
INCREMENTAL_WEIGHTS = (2.8, 4.3)


@dataclass(frozen=True)
class NewJob:
    name: str
    spec: JobSpec
    depends_on: tuple[str, ...] = ()


@dataclass
class CampaignPlan:
    kind: str
    params: dict
    jobs: list[NewJob] = field(default_factory=list)

    def model_shapes(self) -> dict[str, str]:
        """Each model this plan will produce -> an existing model with its architecture (a bag: its base;
        a merge: its first input), so later jobs can be sized before their inputs exist."""
        shapes: dict[str, str] = {}
        for item in self.jobs:
            source = kinds.kind_plan(item.spec.kind).shape_source(item.spec.params)
            if source is not None:
                shapes[item.spec.output_uri] = shapes.get(source, source)
        return shapes


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def job_dirs(settings: Settings, job_id: str, output: str | None, checkpoint: str | None) -> tuple[str, str]:
    """Default output and checkpoint locations for a job, named by the job id: under PLANNER_STORAGE_URI
    when set (a cloud box can reach it), else under the local runs directory."""
    base = storage.join(settings.storage_uri, job_id) if settings.storage_uri else \
        str(Path(settings.runs_dir) / "outputs" / job_id)
    return output or storage.join(base, "output"), checkpoint or storage.join(base, "checkpoints")


def train_bag_job(settings: Settings, *, model: str, data: str, fraction: float, seed: int, method: str | None,
                  extra: dict | None = None, output: str | None = None, checkpoint: str | None = None,
                  job_id: str | None = None) -> NewJob:
    job_id = job_id or new_id(f"bag{round(fraction * 100)}")
    output, checkpoint = job_dirs(settings, job_id, output, checkpoint)
    params = {"model": model, "data": data, "fraction": fraction, "seed": seed, **(extra or {})}
    if method is not None:  # else the job resolves the BOOM recipe's for the model's size (jobs.recipe)
        params["method"] = method
    return NewJob(f"train-bag {fraction:g}", JobSpec(job_id, "train-bag", output, params, checkpoint))


def merge_job(settings: Settings, models: list[str], weights: list[float], depends_on: tuple[str, ...],
              output: str | None = None) -> NewJob:
    job_id = new_id("merge")
    output, _ = job_dirs(settings, job_id, output, None)
    return NewJob("merge", JobSpec(job_id, "merge", output, {"models": models, "weights": weights}), depends_on)


def encode_job(settings: Settings, model: str, corpus: str, depends_on: tuple[str, ...]) -> NewJob:
    job_id = new_id("encode")
    output, _ = job_dirs(settings, job_id, None, None)
    return NewJob("encode", JobSpec(job_id, "encode", output, {"model": model, "input": corpus}), depends_on)


def evaluate_job(settings: Settings, name: str, model: str, data: str, depends_on: tuple[str, ...]) -> NewJob:
    job_id = new_id("eval")
    output, _ = job_dirs(settings, job_id, None, None)
    return NewJob(f"evaluate {name}", JobSpec(job_id, "evaluate", output, {"model": model, "data": data}), depends_on)


def bagging(settings: Settings, *, model: str, data: str, fractions=FRACTIONS, weights=WEIGHTS, method: str | None = None,
            seed: int = 0, encode: str | None = None, evaluate: str | None = None,
            train_extra: dict | None = None) -> CampaignPlan:
    if len(fractions) != len(weights):
        raise ValueError(f"{len(fractions)} fractions but {len(weights)} weights; give one weight per bag")
    if not all(0 < f <= 1 for f in fractions) or not all(w > 0 for w in weights):
        raise ValueError("fractions must be in (0, 1] and weights positive")
    repeated = sorted({f for f in fractions if list(fractions).count(f) > 1})
    if repeated:  # a bag's draw is seeded by its fraction (jobs.data.draw_seed): a twin trains the same model again
        raise ValueError(f"--fractions gives {', '.join(map(str, repeated))} more than once: bags of one fraction are "
                         "the same draw and would train the same model twice; give each bag its own fraction")
    bags = [train_bag_job(settings, model=model, data=data, fraction=f, seed=seed, method=method, extra=train_extra)
            for f in fractions]
    bag_ids = tuple(b.spec.job_id for b in bags)
    merged = merge_job(settings, [b.spec.output_uri for b in bags], list(weights), bag_ids)
    plan = CampaignPlan("bagging", {"model": model, "data": data, "fractions": list(fractions),
                                    "weights": list(weights), "method": method, "seed": seed,
                                    "encode": encode, "evaluate": evaluate}, [*bags, merged])
    if encode:
        plan.jobs.append(encode_job(settings, merged.spec.output_uri, encode, (merged.spec.job_id,)))
    if evaluate:
        for bag in bags:
            plan.jobs.append(evaluate_job(settings, bag.name.removeprefix("train-"), bag.spec.output_uri, evaluate,
                                          (bag.spec.job_id,)))
        plan.jobs.append(evaluate_job(settings, "merged", merged.spec.output_uri, evaluate, (merged.spec.job_id,)))
    return plan


def incremental(settings: Settings, *, previous: str, new_data: str, replay_data: str, replay_fraction: float = 0.4,
                weights=INCREMENTAL_WEIGHTS, method: str | None = None, seed: int = 0,
                train_extra: dict | None = None) -> CampaignPlan:
    if len(weights) != 2:
        raise ValueError("the incremental merge takes two weights: the previous model's and the update's")
    update = train_bag_job(settings, model=previous, data=new_data, fraction=1.0, seed=seed, method=method,
                           extra={"replay_data": replay_data, "replay_fraction": replay_fraction, **(train_extra or {})})
    merged = merge_job(settings, [previous, update.spec.output_uri], list(weights), (update.spec.job_id,))
    return CampaignPlan("incremental", {"previous": previous, "new_data": new_data, "replay_data": replay_data,
                                        "replay_fraction": replay_fraction, "weights": list(weights)},
                        [update, merged])
