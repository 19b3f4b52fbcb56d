"""How the planner sizes each job kind: the needs of a spec, the efficiency prior, and which existing
model a job's output has the architecture of (so a campaign's later jobs can be sized before their
inputs exist). What a kind is (its runner module, inputs, checkpointing, data-parallel) is declared
once in jobs.spec.KINDS; tests/test_architecture.py holds this table, the campaign constructors and
the CLI commands to the same kinds.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jobs import recipe
from planner.plan.estimate import (
    CorpusStats,
    EstimateError,
    ModelShape,
    Needs,
    corpus_stats,
    encode_needs,
    merge_needs,
    model_shape,
    text_stats,
    train_needs,
)

ShapeOf = Callable[[str], ModelShape]
DEFAULT_EFFICIENCY = 0.3


@dataclass(frozen=True)
class KindPlan:
    size: Callable[[dict, ShapeOf], Needs]  # the job's params (its flags' names) -> what it needs
    efficiency_prior: dict[str, float]  # by Needs.kind (train-bag has one per method): achieved / peak FLOP/s
    shape_source: Callable[[dict], str | None]  # the model whose architecture the output has; None: no model


def _models(params: dict) -> list[str]:
    models = params["models"]
    return models if isinstance(models, list) else str(models).split(",")


def _size_train(p: dict, shape: ShapeOf) -> Needs:
    """Unset method, batch size and group size are the BOOM recipe's, as the job resolves them (jobs.recipe)."""
    group = int(p.get("group_size") or recipe.COMMON["group_size"])
    mini = p.get("mini_batch_size")
    return train_needs(shape(p["model"]), corpus_stats(p.get("data"), group_size=group, sampler=p.get("sampler")), fraction=float(p["fraction"]),
                       method=p.get("method"), epochs=int(p.get("epochs", 1)),
                       batch_size=int(p["batch_size"]) if p.get("batch_size") else None, group_size=group,
                       query_max_len=int(p.get("query_max_len", 512)), doc_max_len=int(p.get("doc_max_len", 512)),
                       mini_batch_size=None if mini is None else int(mini), max_steps=p.get("max_steps"))


def _text_stats(uri: str | None) -> CorpusStats:
    """An encode or evaluate input of any record shape (id/text documents, query/positive pairs)."""
    stats = text_stats(uri) if uri and uri.endswith((".jsonl", ".ndjson")) else None
    return stats or CorpusStats(1_000_000, 256.0, 0.0, measured=False)


def _size_encode(p: dict, shape: ShapeOf) -> Needs:
    stats = _text_stats(p.get("input") or p.get("data"))
    return encode_needs(shape(p["model"]), stats.records, stats.mean_tokens, dtype=p.get("dtype", "bfloat16"),
                        batch_tokens=int(p.get("batch_tokens", 32768)))


def _size_merge(p: dict, shape: ShapeOf) -> Needs:
    models = _models(p)
    return merge_needs(shape(models[0]), len(models) + bool(p.get("base_model")))  # the base is one more input


KINDS: dict[str, KindPlan] = {
    "train-bag": KindPlan(_size_train, {"train-bag/full": 0.35, "train-bag/lora": 0.25}, lambda p: p.get("model")),
    "merge": KindPlan(_size_merge, {"merge": 1.0}, lambda p: _models(p)[0]),
    "encode": KindPlan(_size_encode, {"encode": 0.30}, lambda p: None),
    "evaluate": KindPlan(_size_encode, {"encode": 0.30}, lambda p: None),  # an encode of queries and documents
}


def kind_plan(kind: str) -> KindPlan:
    try:
        return KINDS[kind]
    except KeyError:
        raise EstimateError(f"no estimate for job kind {kind}; known kinds: {', '.join(KINDS)}") from None


def efficiency_prior(job_kind: str, needs_kind: str) -> float:
    return kind_plan(job_kind).efficiency_prior.get(needs_kind, DEFAULT_EFFICIENCY)


def size(kind: str, params: dict, shapes: dict[str, str] | None = None) -> Needs:
    """What a job of `kind` with these params needs; `shapes` maps models that do not exist yet to one
    with their architecture (campaigns.CampaignPlan.model_shapes)."""
    return kind_plan(kind).size(params, lambda model: model_shape((shapes or {}).get(model, model)))
