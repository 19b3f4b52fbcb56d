"""What a job needs: VRAM per GPU, disk, RAM, and its work in FLOPs (or bytes, for the merge).

Imports no torch: the model's shape comes from its config.json (a local directory) or, for hub ids
offline, from the built-in Qwen3 table below; the corpus is measured from its file when reachable.

Memory per GPU (bytes), with P parameters, h hidden size, L layers, S sequences in one forward chunk
of at most T tokens each:
  train full  bf16 weights 2P + gradients 2P + Kahan compensation 2P + fp32 AdamW moments 8P
              (jobs.optim.KahanAdamW: 14 bytes per parameter, the precision-safe bf16 update)
  train LoRA  bf16 base 2P + the fp32 adapter's weights, gradients and moments (16 bytes per LoRA parameter)
  activations with gradient checkpointing: 2*S*T*h per layer (the saved layer inputs) plus one layer
              recomputed in full, ACT_PER_TOKEN_LAYER*S*T*h bytes; without it that full layer cost x L
  gradient cache (jobs.train_bag --mini-batch-size): the step's whole batch (Q queries x a group of
              G documents) is embedded in chunks of S sequences, so activations scale with S, not with
              Q*(1+G); the chunk is chosen per GPU: the largest power of two that fits its VRAM
              (Needs.mini_batch_on); the cached first pass costs one more forward, 2P per token
  encode      weights P x (2 bf16 | 1 int8 | 0.56 nf4) + ENCODE_ACT*T*h for the largest batch
  all         + CUDA context and allocator slack (WORKSPACE_GB), and never under MIN_VRAM_GB (3 GB)
Work: FLOPs per trained token from jobs.recipe.train_flops_per_token, the formula the job itself uses
to report achieved TFLOP/s (full 8P with checkpointing, LoRA 6P, + 2P with the gradient cache); encode
2*P*tokens; merge: bytes read and written. Hours on N GPUs = FLOPs / (N x peak bf16 FLOP/s x
efficiency x data-parallel scaling(N)); efficiency is a prior per kind (planner.plan.kinds) until
finished attempts measure it (planner.plan.choose), and only train-bag runs data-parallel (torchrun).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from jobs import recipe, storage

GB = 1024**3
MIN_VRAM_GB = 3.0
WORKSPACE_GB = 1.5
ACT_PER_TOKEN_LAYER = 34  # bytes per token per hidden unit for one bf16 decoder layer's saved activations
ENCODE_ACT = 12  # inference keeps ~a few hidden-sized tensors per token alive at once
CHARS_PER_TOKEN = 4.0  # planning estimate of tokens from text length (no tokenizer in the planner)
DISK_GBPS = 0.5  # sustained read+write of a rented box's local disk, for the merge
ASSUMED_QUERY_TOKENS, ASSUMED_DOC_TOKENS = 64, 128  # an unreadable corpus: instruction + query, one document
CHECKPOINTS_KEPT = 2  # jobs.checkpoint.KEEP: the newest and the one before it
MIN_CHUNK = 4  # the smallest gradient-cache chunk worth running: smaller chunks leave the GPU idle
VRAM_USABLE = 0.92  # of a GPU's VRAM; the allocator's fragmentation takes the rest
LORA_RANK = recipe.LORA["r"]


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


def _model_config(model: str) -> dict | None:
    """The model's config.json: a local directory, or an fsspec URI (an uploaded input, a job's output)."""
    if storage.is_remote(model):
        try:
            return storage.read_json(storage.join(model, "config.json"))
        except (OSError, ValueError):
            return None
    config_file = Path(model) / "config.json"
    return json.loads(config_file.read_text()) if config_file.exists() else None


def model_shape(model: str) -> ModelShape:
    config = _model_config(model)
    if config is not None:
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


def corpus_stats(uri: str | None, assumed_records: int = 1_000_000, *, group_size: int = 8) -> CorpusStats:
    """Estimated from a sample of the JSONL and its size when it is reachable (jobs.data.sample_stats
    reads a few thousand lines at spread offsets, never the whole file), else a stated assumption.
    `mean_tokens` is what one record costs to train on: its query and its group's documents."""
    from jobs import storage
    from jobs.data import BadData, sample_stats

    try:  # a remote URI this machine cannot read (no credentials, no network) is assumed, not an error
        reachable = uri is not None and storage.exists(uri)
    except Exception:
        reachable = False
    if not reachable:  # assumed: bge-style records, a full group of ~128-token documents
        return CorpusStats(assumed_records, ASSUMED_QUERY_TOKENS + group_size * ASSUMED_DOC_TOKENS, group_size - 1.0,
                           measured=False)
    try:
        sample = sample_stats(uri, group_size=group_size)
    except BadData as exc:
        raise EstimateError(str(exc)) from None
    return CorpusStats(sample.records, sample.mean_tokens_per_record, sample.mean_group_docs - 1, measured=True)


TEXT_SAMPLE_BYTES = 4 * 1024 * 1024  # what text_stats reads of a large file: its first 4 MiB


def text_stats(uri: str) -> CorpusStats | None:
    """Records and tokens per record of a JSONL whose records may have any shape: tokens count every
    string in a record (characters / CHARS_PER_TOKEN); records are the file's size over the sampled
    lines' mean size (exact when the whole file fits the sample). None: unreadable, or no JSON lines."""
    import fsspec

    from jobs import storage

    try:
        if not storage.exists(uri):
            return None
        fs, path = fsspec.core.url_to_fs(uri)
        size = fs.size(path)
        with fs.open(path, "rb") as handle:
            head = handle.read(TEXT_SAMPLE_BYTES)
    except (OSError, ValueError, ImportError):
        return None
    lines = head.split(b"\n")
    if size > len(head):
        lines = lines[:-1]  # the last one was cut by the sample's end
    chars, parsed, sampled_bytes = 0, 0, 0
    for line in lines:
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if record is None:
            continue
        parsed += 1
        sampled_bytes += len(line) + 1
        chars += sum(len(v) if isinstance(v, str) else sum(len(x) for x in v if isinstance(x, str))
                     for v in (record.values() if isinstance(record, dict) else [record]) if isinstance(v, (str, list)))
    if not parsed:
        return None
    records = parsed if size <= len(head) else round(size / (sampled_bytes / parsed))
    return CorpusStats(records, chars / parsed / CHARS_PER_TOKEN, 0.0, measured=True)


@dataclass(frozen=True)
class Needs:
    kind: str  # "train-bag/full", "train-bag/lora", "encode", "merge", "evaluate"
    vram_gb: float  # per GPU, floor applied
    disk_gb: float
    ram_gb: float
    flops: float  # 0 for the merge
    io_bytes: float  # the merge's bytes; 0 otherwise
    gpu_count: int = 1
    breakdown: dict[str, float] = field(default_factory=dict)  # GB per component, at the smallest chunk
    notes: tuple[str, ...] = ()
    data_parallel: bool = False  # runs on every GPU of an offer (torchrun), not on one
    # The gradient cache, for train-bag: chunks are chosen per GPU (mini_batch_on); 0 = not chunked
    sequences_per_step: int = 0  # queries + their group documents in one optimizer step, all GPUs
    fixed_gb: float = 0.0  # what does not scale with the chunk: weights, optimizer, workspace
    gb_per_sequence: float = 0.0  # activations of one sequence in a chunk
    fixed_mini_batch: int | None = None  # the user chose --mini-batch-size
    cache_flops: float = 0.0  # the gradient cache's extra first forward, when the batch is chunked

    def remaining(self, fraction: float) -> Needs:
        """The same job with only `fraction` of its work left (a relaunch from a checkpoint): every
        per-token cost scales, the gradient cache's first pass included; memory does not."""
        if fraction >= 1.0:
            return self
        return replace(self, flops=self.flops * fraction, io_bytes=self.io_bytes * fraction,
                       cache_flops=self.cache_flops * fraction)

    def gpus_used(self, gpu_count: int) -> int:
        return gpu_count if self.data_parallel else 1

    def mini_batch_on(self, vram_gb: float, gpu_count: int = 1) -> int | None:
        """The gradient-cache chunk (sequences per forward) for a GPU of `vram_gb`: the largest power
        of two up to the job's default (jobs.recipe.DEFAULT_MINI_BATCH) whose activations fit beside the
        fixed part, so the chunk, and with it the job's floating-point results, only changes where a card
        cannot hold the default; None when not even MIN_CHUNK fits (or the job is not chunked)."""
        if not self.sequences_per_step:
            return None
        per_gpu = math.ceil(self.sequences_per_step / self.gpus_used(gpu_count))
        if self.fixed_mini_batch is not None:
            return min(self.fixed_mini_batch, per_gpu)
        room = vram_gb * VRAM_USABLE - self.fixed_gb
        if room < MIN_CHUNK * self.gb_per_sequence:
            return None
        chunk = MIN_CHUNK
        while chunk * 2 <= recipe.DEFAULT_MINI_BATCH and chunk * 2 * self.gb_per_sequence <= room:
            chunk *= 2
        return min(chunk, per_gpu)

    def flops_on(self, vram_gb: float, gpu_count: int = 1) -> float:
        """The work on this GPU: the cached first pass counts when the chunk is smaller than a GPU's share."""
        chunk = self.mini_batch_on(vram_gb, gpu_count)
        per_gpu = math.ceil(self.sequences_per_step / self.gpus_used(gpu_count)) if self.sequences_per_step else 0
        return self.flops + (self.cache_flops if chunk is not None and chunk < per_gpu else 0.0)

    def hours_on(self, peak_tflops: float, efficiency: float, gpus: int = 1, flops: float | None = None) -> float:
        """Hours of work on `gpus` GPUs of `peak_tflops` each at `efficiency` (achieved per GPU / peak,
        data-parallel losses included)."""
        if self.kind == "merge":
            return self.io_bytes / (DISK_GBPS * 1e9) / 3600 + 0.05
        return (self.flops if flops is None else flops) / (peak_tflops * 1e12 * efficiency * gpus) / 3600


def _floor(breakdown: dict[str, float]) -> float:
    return max(MIN_VRAM_GB, sum(breakdown.values()))


def train_needs(shape: ModelShape, stats: CorpusStats, *, fraction: float, method: str | None = None,
                epochs: int = 1, batch_size: int | None = None, group_size: int = recipe.COMMON["group_size"],
                query_max_len: int = 512, doc_max_len: int = 512, mini_batch_size: int | None = None,
                gradient_checkpointing: bool = True, max_steps: int | None = None) -> Needs:
    """A train-bag job's needs. `method` and `batch_size` default to the BOOM recipe for the model's
    size (jobs.recipe.recipe_for: LoRA with 128 queries per step from 1 B parameters up, full below);
    `mini_batch_size` None lets the planner choose the gradient-cache chunk per GPU, 0 turns caching off."""
    boom = recipe.recipe_for(shape.params)
    method, batch_size = method or boom["method"], batch_size or boom["batch_size"]
    P = shape.params
    docs_per_query = min(group_size, 1 + math.ceil(stats.negatives))
    sequences = batch_size * (1 + docs_per_query)
    per_token = (2 * shape.hidden * shape.layers + ACT_PER_TOKEN_LAYER * shape.hidden if gradient_checkpointing
                 else ACT_PER_TOKEN_LAYER * shape.hidden * shape.layers) / GB
    per_sequence = per_token * max(query_max_len, doc_max_len)  # a chunk of the longer kind sets the peak
    if method == "lora":
        model = {"weights": 2 * P / GB, "lora weights+grads+adam": 16 * shape.lora_params(LORA_RANK) / GB}
    else:
        model = {"weights": 2 * P / GB, "gradients": 2 * P / GB, "compensation": 2 * P / GB,
                 "adam moments": 8 * P / GB}
    embeddings = sequences * shape.hidden * 4 * 2 / GB  # the cached fp32 embeddings and their gradients
    fixed = sum(model.values()) + embeddings + WORKSPACE_GB
    chunked = mini_batch_size != 0
    step_tokens = batch_size * (query_max_len + docs_per_query * doc_max_len)
    activations = min(mini_batch_size or MIN_CHUNK, sequences) * per_sequence if chunked else step_tokens * per_token
    breakdown = model | {"activations": activations, "workspace": WORKSPACE_GB}
    if chunked:
        breakdown["embedding cache"] = embeddings
    tokens = stats.records * fraction * epochs * stats.mean_tokens
    if max_steps is not None:
        tokens = min(tokens, max_steps * batch_size * stats.mean_tokens)
    flops = recipe.train_flops_per_token(P, method, gradient_checkpointing=gradient_checkpointing) * tokens
    # a checkpoint: bf16 weights + compensation and fp32 moments (full), or the fp32 adapter and its moments
    checkpoint_gb = (12 * P if method == "full" else 12 * shape.lora_params(LORA_RANK)) / GB
    disk_gb = 2 * P / GB + 4 * P / GB + CHECKPOINTS_KEPT * checkpoint_gb + 10  # bf16 base, float32 output, slack
    notes = () if stats.measured else (f"corpus not reachable: assumed {stats.records:,} records of "
                                       f"{stats.mean_tokens:.0f} tokens",)
    notes += (f"{method}, {batch_size} queries per step x a group of {docs_per_query} documents",)
    return Needs(f"train-bag/{method}", _floor(breakdown), disk_gb=disk_gb,
                 ram_gb=max(8.0, 2 * P / GB * 1.5), flops=flops, io_bytes=0.0, breakdown=breakdown, notes=notes,
                 data_parallel=True, sequences_per_step=sequences if chunked else 0, fixed_gb=fixed,
                 gb_per_sequence=per_sequence, fixed_mini_batch=mini_batch_size or None,
                 cache_flops=2 * P * tokens if chunked else 0.0)


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
    if needs.sequences_per_step:
        tips.append(f"several GPUs per box (data parallel: {needs.fixed_gb:.1f} GB of weights and optimizer on each)")
    elif "activations" in needs.breakdown and needs.breakdown["activations"] > 1:
        tips.append("a smaller --batch-size, --mini-batch-size or shorter --doc-max-len (activations are "
                    f"{needs.breakdown['activations']:.1f} GB)")
    if needs.kind == "encode":
        tips.append("--dtype int8 or nf4 (bitsandbytes), or a smaller --batch-tokens")
    tips.append(f"a GPU with at least {needs.vram_gb:.0f} GB (the largest offered has {largest_vram_gb:.0f} GB)")
    return tips
