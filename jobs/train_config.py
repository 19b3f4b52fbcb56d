"""train-bag's configuration, declared once: the Config dataclass is also the command line (one --flag per
field, its help from the field's metadata) and the `--spec FILE.json` schema (the same field names).

Defaults are the BOOM recipe (jobs.recipe, each value's source there); None means "the recipe's value
for this model or device", filled by resolve() once the model's config.json is at hand.
"""
from __future__ import annotations

import argparse
import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

from jobs import protocol, recipe, storage
from jobs.data import DEFAULT_SAMPLER, SAMPLERS
from jobs.lifecycle import BadInput

METHODS = ("full", "lora")
DTYPES = ("bfloat16", "float32")
OPTIMIZERS = ("adamw", "torch-adamw")
KD_LOSSES = ("m3", "kl", "none")  # jobs.loss.LOSSES


def option(help: str, default=MISSING, choices: tuple | None = None):
    """A Config field and its flag's help (and choices)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Config:
    model: str = option("base model: directory, fsspec URI or hub id (Qwen/Qwen3-4B)")
    data: str = option("training corpus JSONL, ours or FlagEmbedding's (local path or fsspec URI)")
    fraction: float = option("share of each task to train on, in (0, 1]")
    seed: int = option("seeds the bag, the batch order, the groups and the initialisation")
    output: str = option("output directory or fsspec URI")
    checkpoint: str | None = option("checkpoint URI (default: OUTPUT/.checkpoints)", None)
    method: str | None = option("default: lora from 1 B parameters, else full (BOOM)", None, METHODS)
    dtype: str | None = option("weights' dtype; default: bfloat16 on a GPU, float32 on the CPU", None, DTYPES)
    max_steps: int | None = option("stop after this many optimizer steps", None)
    epochs: int = option("passes over the bag", recipe.COMMON["epochs"])
    batch_size: int | None = option("queries per optimizer step (default: the recipe's)", None)
    group_size: int = option("documents per query: 1 positive + hard negatives", recipe.COMMON["group_size"])
    mini_batch_size: int = option("sequences per gradient-cache chunk; 0: no caching", recipe.DEFAULT_MINI_BATCH)
    grad_accum: int = option("batches per optimizer step", 1)
    lr: float | None = option(f"peak learning rate (default {recipe.COMMON['lr']})", None)
    warmup: str = option("warmup shape: log (the BOOM scripts' DeepSpeed WarmupDecayLR) or linear (transformers')",
                         recipe.COMMON["warmup"], recipe.WARMUPS)
    warmup_ratio: float = option("share of the steps spent warming up", recipe.COMMON["warmup_ratio"])
    weight_decay: float = option("AdamW weight decay", recipe.COMMON["weight_decay"])
    temperature: float = option("InfoNCE temperature", recipe.COMMON["temperature"])
    in_batch_grad_scale: float = option(
        "gradient scale of batches with in-batch negatives (default: the BOOM run's, jobs.recipe); 1: the "
        "loss's own gradient", recipe.IN_BATCH_GRAD_SCALE)
    sampler: str = option("how batches and groups are cut: flagembedding (the authors' sampler) or keep-all "
                          "(every record, groups without repeated negatives; jobs.data)", DEFAULT_SAMPLER,
                          tuple(SAMPLERS))
    kd_loss: str | None = option("with teacher scores (default: m3 for LoRA, else none)", None, KD_LOSSES)
    query_max_len: int = option("tokens per query, prompt included", recipe.COMMON["query_max_len"])
    doc_max_len: int = option("tokens per document", recipe.COMMON["doc_max_len"])
    optimizer: str = option("adamw: compensated bf16 updates (default)", "adamw", OPTIMIZERS)
    save_every_steps: int = option("checkpoint every this many steps", 500)
    save_every_minutes: float = option("and every this many minutes", protocol.CHECKPOINT_MINUTES)
    replay_data: str | None = option("old corpus to replay a share of (incremental stage)", None)
    replay_fraction: float | None = option("share of each task of --replay-data to add", None)
    sigterm_grace_seconds: float = option("seconds from SIGTERM to SIGKILL (RunPod: 5)",
                                          protocol.SIGTERM_GRACE_S)
    gradient_checkpointing: bool = option("recompute activations in the backward (less memory)",
                                          recipe.COMMON["gradient_checkpointing"])
    cache_dir: str = option("where remote inputs are downloaded and remote checkpoints staged",
                            str(Path.home() / ".cache" / "planner-jobs"))

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else recipe.COMMON["lr"]

    @property
    def checkpoint_uri(self) -> str:
        return self.checkpoint or storage.join(self.output, ".checkpoints")

    def identity(self) -> dict:
        """What makes two runs the same run (a resume must match it); not where files go or how often."""
        skip = {"output", "checkpoint", "save_every_steps", "save_every_minutes", "sigterm_grace_seconds",
                "cache_dir"}
        return {k: v for k, v in asdict(self).items() if k not in skip} | {"lr": self.learning_rate}


REQUIRED = tuple(f.name for f in fields(Config) if f.default is MISSING)


def check_config(config: Config) -> None:
    problems = []
    if not 0 < config.fraction <= 1:
        problems.append(f"--fraction must be in (0, 1], got {config.fraction}")
    for f in fields(Config):
        choices, value = f.metadata["choices"], getattr(config, f.name)
        if choices and value is not None and value not in choices:
            problems.append(f"--{_flag(f.name)} must be one of {', '.join(choices)}, got {value!r}")
    for name in ("epochs", "grad_accum", "save_every_steps", "group_size"):
        if getattr(config, name) < 1:
            problems.append(f"--{_flag(name)} must be at least 1")
    if config.batch_size is not None and config.batch_size < 2:
        problems.append("--batch-size must be at least 2 (in-batch negatives need company)")
    if config.mini_batch_size < 0:
        problems.append("--mini-batch-size must be 0 (no gradient caching) or more")
    if config.max_steps is not None and config.max_steps < 1:
        problems.append("--max-steps must be at least 1")
    if config.learning_rate <= 0 or config.temperature <= 0 or config.save_every_minutes <= 0:
        problems.append("--lr, --temperature and --save-every-minutes must be positive")
    if not 0 < config.in_batch_grad_scale <= 1:
        problems.append(f"--in-batch-grad-scale must be in (0, 1], got {config.in_batch_grad_scale}")
    if not 0 <= config.warmup_ratio < 1 or config.weight_decay < 0:
        problems.append("--warmup-ratio must be in [0, 1) and --weight-decay at least 0")
    if config.query_max_len < 8 or config.doc_max_len < 8:
        problems.append("--query-max-len and --doc-max-len must be at least 8")
    if (config.replay_data is None) != (config.replay_fraction is None):
        problems.append("--replay-data and --replay-fraction go together")
    if config.replay_fraction is not None and not 0 < config.replay_fraction <= 1:
        problems.append(f"--replay-fraction must be in (0, 1], got {config.replay_fraction}")
    if problems:
        raise BadInput("; ".join(problems))


def resolve(config: Config, device_type: str, model_cfg: dict) -> tuple[Config, dict]:
    """Fill the defaults that depend on the model (the BOOM recipe for its size) and on the device."""
    boom = recipe.recipe_for(recipe.parameter_count(model_cfg))
    values = {"method": config.method or boom["method"], "batch_size": config.batch_size or boom["batch_size"],
              "lr": config.learning_rate, "kd_loss": config.kd_loss or boom["kd_loss"],
              "dtype": config.dtype or ("bfloat16" if device_type == "cuda" else "float32")}
    return replace(config, **values), boom


def _flag(name: str) -> str:
    return name.replace("_", "-")


def parser(description: str) -> argparse.ArgumentParser:
    """One --flag per Config field (bool fields: --no-NAME when they default to True, else --NAME)."""
    out = argparse.ArgumentParser(prog="python -m jobs.train_bag", description=description)
    out.add_argument("--spec", type=Path, help="a JSON file with these fields (flag names with underscores)")
    hints = typing.get_type_hints(Config)
    for f in fields(Config):
        kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
        if kind is bool:
            negate = f.default is True
            out.add_argument(f"--{'no-' if negate else ''}{_flag(f.name)}", dest=f.name, default=None,
                             action="store_false" if negate else "store_true", help=f.metadata["help"])
        else:
            out.add_argument(f"--{_flag(f.name)}", dest=f.name, type=kind, choices=f.metadata["choices"],
                             help=f.metadata["help"])
    return out


def parse_args(argv: list[str] | None, description: str = "") -> Config:
    """The Config from flags and/or a --spec file (flags win); BadInput names what is wrong."""
    args = parser(description).parse_args(argv)
    values = {}
    if args.spec is not None:
        try:
            values = json.loads(args.spec.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BadInput(f"cannot read --spec {args.spec}: {exc}") from None
        known = {f.name for f in fields(Config)}
        if not isinstance(values, dict) or set(values) - known:
            raise BadInput(f"--spec {args.spec}: unknown fields {sorted(set(values) - known)}; use the flag names")
    values |= {k: v for k, v in vars(args).items() if k != "spec" and v is not None}
    missing = [f"--{_flag(name)}" for name in REQUIRED if name not in values]
    if missing:
        raise BadInput(f"missing {', '.join(missing)}")
    try:
        return Config(**values)
    except TypeError as exc:
        raise BadInput(str(exc)) from None
