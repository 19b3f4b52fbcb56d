"""What a job needs: VRAM per GPU, disk, RAM, and its work in FLOPs (or bytes, for the merge).

Imports no torch: the model's shape comes from its config.json (a local directory) or, for hub ids
offline, from the built-in Qwen3 table below; the corpus is measured from its file when reachable.

Memory per GPU (bytes), with P parameters, h hidden size, L layers, T tokens in one micro-batch:
  train full  weights 2P + gradients 2P + AdamW moments 4P (the job trains in pure bf16 on a GPU)
  train LoRA  weights 2P + the adapter's weights, gradients and moments (8 bytes per LoRA parameter)
  activations with gradient checkpointing: 2*T*h per layer (the saved layer inputs) plus one layer
              recomputed in full, ACT_PER_TOKEN_LAYER*T*h bytes; without it that full layer cost x L
  encode      weights P x (2 bf16 | 1 int8 | 0.56 nf4) + ENCODE_ACT*T*h for the largest batch
  all         + CUDA context and allocator slack (WORKSPACE_GB), and never under MIN_VRAM_GB (3 GB)
Work: train 6*P*tokens (8*P*tokens with checkpointing's second forward), LoRA 4*P*tokens (6 with
checkpointing: no weight gradients for the frozen base), encode 2*P*tokens, merge: bytes read and
written. Hours on a GPU = FLOPs / (peak bf16 FLOP/s x efficiency); efficiency is a prior per kind
(planner.plan.kinds) until finished attempts measure it (planner.plan.choose).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

GB = 1024**3
MIN_VRAM_GB = 3.0
WORKSPACE_GB = 1.5
ACT_PER_TOKEN_LAYER = 34  # bytes per token per hidden unit for one bf16 decoder layer's saved activations
ENCODE_ACT = 12  # inference keeps ~a few hidden-sized tensors per token alive at once
CHARS_PER_TOKEN = 4.0  # planning estimate of tokens from text length (no tokenizer in the planner)
DISK_GBPS = 0.5  # sustained read+write of a rented box's local disk, for the merge


@dataclass(frozen=True)
class ModelShape:
    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool = True

    @property
    def params(self) -> int:
        """Parameters of the embedder (the decoder without an LM head)."""
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads) + 2 * self.head_dim
        mlp = 3 * self.hidden * self.intermediate
        return self.vocab * self.hidden + self.layers * (attention + mlp + 2 * self.hidden) + self.hidden

    def lora_params(self, rank: int = 16) -> int:
        q_o = 2 * rank * (self.hidden + self.heads * self.head_dim)
        k_v = 2 * rank * (self.hidden + self.kv_heads * self.head_dim)
        mlp = 3 * rank * (self.hidden + self.intermediate)
        return self.layers * (q_o + k_v + mlp)


# Qwen3 dense models' configs (hub config.json), for planning offline by hub id.
QWEN3 = {
    "Qwen/Qwen3-0.6B": ModelShape("Qwen/Qwen3-0.6B", 151936, 1024, 3072, 28, 16, 8, 128),
    "Qwen/Qwen3-1.7B": ModelShape("Qwen/Qwen3-1.7B", 151936, 2048, 6144, 28, 16, 8, 128),
    "Qwen/Qwen3-4B": ModelShape("Qwen/Qwen3-4B", 151936, 2560, 9728, 36, 32, 8, 128),
    "Qwen/Qwen3-8B": ModelShape("Qwen/Qwen3-8B", 151936, 4096, 12288, 36, 32, 8, 128, tied=False),
    "Qwen/Qwen3-14B": ModelShape("Qwen/Qwen3-14B", 151936, 5120, 17408, 40, 40, 8, 128, tied=False),
}
QWEN3 |= {name.replace("Qwen3-", "Qwen3-Embedding-"): shape for name, shape in QWEN3.items()
          if name.endswith(("0.6B", "4B", "8B"))}


class EstimateError(ValueError):
    """The model or data cannot be sized: one line saying what to give instead."""


def model_shape(model: str) -> ModelShape:
    config_file = Path(model) / "config.json"
    if config_file.exists():
        config = json.loads(config_file.read_text())
        config = config.get("text_config", config)
        heads = config["num_attention_heads"]
        return ModelShape(model, config["vocab_size"], config["hidden_size"], config["intermediate_size"],
                          config["num_hidden_layers"], heads, config.get("num_key_value_heads", heads),
                          config.get("head_dim") or config["hidden_size"] // heads,
                          config.get("tie_word_embeddings", True))
    if model in QWEN3:
        return QWEN3[model]
    raise EstimateError(f"cannot size model {model!r}: give a local model directory with config.json or one of "
                        f"{', '.join(sorted(QWEN3))}")


@dataclass(frozen=True)
class CorpusStats:
    records: int
    mean_tokens: float  # per record: query + positive + negatives, prompt included
    negatives: float  # mean hard negatives per record
    measured: bool  # False: assumed, because the file was not reachable


def corpus_stats(uri: str | None, assumed_records: int = 1_000_000) -> CorpusStats:
    """Measured from the JSONL when it is reachable (first 100k lines), else a stated assumption."""
    from jobs import storage

    if uri is None or not storage.exists(uri):
        return CorpusStats(assumed_records, 300.0, 1.0, measured=False)
    text = storage.read_bytes(uri).decode("utf-8", errors="replace").splitlines()
    lines = [line for line in text if line.strip()]
    sample = lines[:100_000]
    chars = negatives = 0
    for line in sample:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        negs = record.get("negatives") or []
        negatives += len(negs)
        chars += len(record.get("query", "")) + 60 + len(record.get("positive", "")) + sum(len(n) for n in negs)
    n = max(len(sample), 1)
    return CorpusStats(len(lines), chars / n / CHARS_PER_TOKEN, negatives / n, measured=True)


@dataclass(frozen=True)
class Needs:
    kind: str  # "train-bag/full", "train-bag/lora", "encode", "merge", "evaluate"
    vram_gb: float  # per GPU, floor applied
    disk_gb: float
    ram_gb: float
    flops: float  # 0 for the merge
    io_bytes: float  # the merge's bytes; 0 otherwise
    gpu_count: int = 1
    breakdown: dict[str, float] = field(default_factory=dict)  # GB per component
    notes: tuple[str, ...] = ()

    def hours_on(self, peak_tflops: float, efficiency: float) -> float:
        if self.kind == "merge":
            return self.io_bytes / (DISK_GBPS * 1e9) / 3600 + 0.05
        return self.flops / (peak_tflops * 1e12 * efficiency) / 3600


def _floor(breakdown: dict[str, float]) -> float:
    return max(MIN_VRAM_GB, sum(breakdown.values()))


def train_needs(shape: ModelShape, stats: CorpusStats, *, fraction: float, method: str = "full", epochs: int = 1,
                batch_size: int = 32, query_max_len: int = 512, doc_max_len: int = 512,
                gradient_checkpointing: bool = True, max_steps: int | None = None) -> Needs:
    P = shape.params
    docs_per_record = 1 + math.ceil(stats.negatives)
    micro_tokens = batch_size * (query_max_len + docs_per_record * doc_max_len)
    full_layer = ACT_PER_TOKEN_LAYER * micro_tokens * shape.hidden
    activations = (2 * micro_tokens * shape.hidden * shape.layers + full_layer if gradient_checkpointing
                   else full_layer * shape.layers)
    if method == "lora":
        model = {"weights": 2 * P / GB, "lora weights+grads+adam": 8 * shape.lora_params() / GB}
        per_token_flops = (6 if gradient_checkpointing else 4) * P
    else:
        model = {"weights": 2 * P / GB, "gradients": 2 * P / GB, "adam moments": 4 * P / GB}
        per_token_flops = (8 if gradient_checkpointing else 6) * P
    breakdown = model | {"activations": activations / GB, "workspace": WORKSPACE_GB}
    records = stats.records * fraction
    tokens = records * epochs * stats.mean_tokens
    if max_steps is not None:
        tokens = min(tokens, max_steps * batch_size * stats.mean_tokens)
    checkpoint_gb = (2 * P + (4 * P if method == "full" else 8 * shape.lora_params())) / GB
    notes = () if stats.measured else (f"corpus not reachable: assumed {stats.records:,} records of "
                                       f"{stats.mean_tokens:.0f} tokens",)
    return Needs(f"train-bag/{method}", _floor(breakdown), disk_gb=2 * P / GB * 2 + 2 * checkpoint_gb + 10,
                 ram_gb=max(8.0, 2 * P / GB * 1.5), flops=per_token_flops * tokens, io_bytes=0.0,
                 breakdown=breakdown, notes=notes)


ENCODE_BYTES = {"bfloat16": 2.0, "float16": 2.0, "float32": 4.0, "int8": 1.0, "nf4": 0.56}


def encode_needs(shape: ModelShape, records: int, mean_tokens: float, *, dtype: str = "bfloat16",
                 batch_tokens: int = 32768) -> Needs:
    P = shape.params
    breakdown = {"weights": ENCODE_BYTES[dtype] * P / GB, "activations": ENCODE_ACT * batch_tokens * shape.hidden / GB,
                 "workspace": WORKSPACE_GB}
    return Needs("encode", _floor(breakdown), disk_gb=4 * P / GB + records * shape.hidden * 4 / GB + 10,
                 ram_gb=8.0, flops=2 * P * records * mean_tokens, io_bytes=0.0, breakdown=breakdown)


def merge_needs(shape: ModelShape, models: int, dtype_bytes: int = 4) -> Needs:
    """The merge streams tensor by tensor on the CPU: a few tensors of RAM, disk for inputs and output."""
    size = shape.params * dtype_bytes
    largest = shape.vocab * shape.hidden * 4
    return Needs("merge", MIN_VRAM_GB, disk_gb=(models + 1) * size / GB + 5, ram_gb=max(4.0, 3 * models * largest / GB),
                 flops=0.0, io_bytes=(models + 1) * size, breakdown={"floor": MIN_VRAM_GB})


def suggestions(needs: Needs, largest_vram_gb: float) -> list[str]:
    """What would fit when nothing does."""
    tips = []
    if needs.kind == "train-bag/full":
        tips.append("--method lora (frozen base in bf16, only the adapter trains)")
    if "activations" in needs.breakdown and needs.breakdown["activations"] > 1:
        tips.append("a smaller --batch-size or shorter --doc-max-len (activations are "
                    f"{needs.breakdown['activations']:.1f} GB)")
    if needs.kind == "encode":
        tips.append("--dtype int8 or nf4 (bitsandbytes), or a smaller --batch-tokens")
    tips.append(f"a GPU with at least {needs.vram_gb:.0f} GB (the largest offered has {largest_vram_gb:.0f} GB)")
    return tips
