"""What a job needs: VRAM per GPU, disk, RAM, and its work in FLOPs (or bytes, for the merge).

Imports no torch: the model's shape comes from its config.json (a local directory) or, for hub ids
offline, from the built-in Qwen3 table below; the corpus is measured from its file when reachable.

Memory per GPU (bytes), with P parameters, h hidden size, L layers, S sequences in one forward chunk
of at most T tokens each:
  train full  bf16 weights 2P + gradients 2P + their fp32 sum over chunks 4P + Kahan compensation 2P
              + fp32 AdamW moments 8P (jobs.optim: 18 bytes per parameter, the precision-safe bf16 update)
  train LoRA  bf16 base 2P + the fp32 adapter's weights, gradients, their sum and moments (20 bytes per
              LoRA parameter)
  activations with gradient checkpointing: 2*S*T*h per layer (the saved layer inputs) plus one layer
              recomputed in full, SAVED_PER_LAYER[method] bytes per token (counted: tests/test_memory_model.py);
              without it that full layer cost x L; x ACTIVATION_MARGIN
  gradient cache (jobs.train_bag --mini-batch-size): the step's whole batch (Q queries x a group of
              G documents) is embedded in chunks of S sequences, so activations scale with S, not with
              Q*(1+G); the chunk is chosen per GPU: the largest power of two that fits its VRAM
              (Needs.mini_batch_on); the cached first pass costs one more forward, 2P per token
  encode      weights P x (2 bf16 | 1 int8 | 0.56 nf4), or as a quantized checkpoint stores them (Quantization),
              + ENCODE_PEAK bytes per token of the largest batch (the live peak of a no-grad forward)
  all         + CUDA context and allocator slack (WORKSPACE_GB), and never under MIN_VRAM_GB (3 GB); a card
              holds a need when need <= VRAM_USABLE x its VRAM
Host RAM: the process (PROCESS_RAM_GB) plus what the job builds on the CPU: train-bag's float32 output
(the LoRA merge re-reads the base in float32), encode's weights before they move to the GPU, the merge's
largest tensor of each input beside their merged float32 (merge_needs); each further data-parallel rank
loads the bf16 base there too (Needs.ram_on).
Work: FLOPs per trained token from jobs.recipe.train_flops_per_token, the formula the job itself uses
to report achieved TFLOP/s (full 8P with checkpointing, LoRA 6P, + 2P with the gradient cache), on the
tokens its forward computes: the real ones times the padding its sorted chunks leave (jobs.recipe.
SORTED_CHUNK_PADDING), as the job counts them, so an efficiency learned from its report predicts its hours; encode
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
from jobs.protocol import CHARS_PER_TOKEN, CHECKPOINTS_KEPT

GB = 1024**3
MIN_VRAM_GB = 3.0
WORKSPACE_GB = 1.5
DISK_GBPS = 0.5  # sustained read+write of a rented box's local disk, for the merge
ASSUMED_QUERY_TOKENS, ASSUMED_DOC_TOKENS = 64, 128  # an unreadable corpus: instruction + query, one document
MIN_CHUNK = 4  # the smallest gradient-cache chunk worth running: smaller chunks leave the GPU idle
VRAM_USABLE = 0.92  # of a GPU's VRAM; the allocator's fragmentation takes the rest
LORA_RANK = recipe.LORA["r"]
ACTIVATION_MARGIN = 1.25  # over the saved-tensor count: the recomputed layer's backward holds gradients of its
                          # activations beside them, and the caching allocator rounds every block up
TEXT_BYTES_PER_TOKEN = 4.0  # UTF-8 bytes per token of JSONL text (English prose with JSON keys): sizes downloads
PROCESS_RAM_GB = 3.0  # a job process's own RSS: Python, torch and CUDA's host side, transformers, the tokenizer


@dataclass(frozen=True)
class PerToken:
    """Bytes per token as coefficients of a Qwen3 decoder layer's widths: h (hidden), I (intermediate),
    q (heads x head_dim), kv (kv heads x head_dim), the head counts, head_dim, a constant, and the LoRA
    adapters' rank x targets. tests/test_memory_model.py counts the real tensors at two small widths and
    holds these coefficients to the count, so the formula cannot drift from the model code."""
    hidden: int = 0
    intermediate: int = 0
    q: int = 0
    kv: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    constant: int = 0
    adapter: int = 0  # per unit of rank per LoRA target

    def of(self, shape: ModelShape, lora_rank: int = 0, lora_targets: int = 0) -> int:
        return (self.hidden * shape.hidden + self.intermediate * shape.intermediate
                + self.q * shape.heads * shape.head_dim + self.kv * shape.kv_heads * shape.head_dim
                + self.heads * shape.heads + self.kv_heads * shape.kv_heads + self.head_dim * shape.head_dim
                + self.constant + self.adapter * lora_rank * lora_targets)


# What autograd saves for backward in one bf16 Qwen3 decoder layer (torch.autograd.graph.saved_tensors_hooks,
# parameters excluded), per token. full: every weight trains (bf16 matmul inputs, the fp32 RMSNorm inputs and
# their rstd, q/k norms, rotary outputs, SDPA's output and logsumexp, the SwiGLU's three I-wide tensors).
# lora: the frozen base keeps what its input gradients need, and each of the seven adapters (jobs.recipe.LORA,
# fp32 under peft's autocast_adapter_dtype) its own fp32 input after dropout and its rank-wide A output.
# Qwen3-4B: full 170,280 B (66.5 per hidden unit), lora 333,992 B (130.5); the old single constant was 34.
SAVED_PER_LAYER = {
    "full": PerToken(hidden=16, intermediate=8, q=10, kv=10, heads=8, kv_heads=4, constant=8),
    "lora": PerToken(hidden=48, intermediate=14, q=16, kv=8, heads=8, kv_heads=4, constant=8, adapter=4),
}
CHECKPOINTED_LAYER = PerToken(hidden=2)  # gradient checkpointing keeps each layer's bf16 input, nothing else
# The peak of live tensors in a no-grad bf16 forward (encode, the gradient cache's first pass), per token:
# inside the SwiGLU of a layer, with the embeddings, the residual, the attention sum and the normed input
# (4 x 2h), three I-wide tensors (6I), the rotary cos/sin (4 head_dim), and the batch's int64 ids and mask
# with the forward's positions (24).
ENCODE_PEAK = PerToken(hidden=8, intermediate=6, head_dim=4, constant=24)


@dataclass(frozen=True)
class Quantization:
    """A checkpoint's weight-only quantization (config.json `quantization_config`): the decoder layers'
    linear weights are stored in `bits` with one 16-bit scale (and a `bits`-wide zero point) per
    `group_size` weights of a row (-1: per row); embeddings, norms and every module in `kept` stay 16-bit."""
    method: str  # "gptq" | "compressed-tensors" | "awq"
    bits: int
    group_size: int
    kept: tuple[str, ...] = ()  # linear modules left unquantized (compressed-tensors `ignore`), beside the lm_head

    def bytes_per_weight(self, row: int) -> float:
        group = row if self.group_size <= 0 else self.group_size
        return self.bits / 8 + (2 + self.bits / 8) / group


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
    quantization: Quantization | None = None

    @property
    def linear_params(self) -> int:
        """The decoder layers' projection weights: what weight-only quantization packs."""
        return self.layers * self.hidden * (self.head_dim * (2 * self.heads + 2 * self.kv_heads) + 3 * self.intermediate)

    def weight_bytes(self, dtype_bytes: float = 2.0) -> float:
        """The embedder's weights in memory: every parameter at `dtype_bytes`, or, for a quantized
        checkpoint, its packed projections plus everything else in 16 bits."""
        if self.quantization is None:
            return dtype_bytes * self.params
        return self.linear_params * self.quantization.bytes_per_weight(self.hidden) + 2 * (self.params - self.linear_params)

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
# GPTQ W4A16, group 128, of Qwen3-Embedding-4B (its model card: 4-bit weights, 16-bit activations, G128)
QWEN3["boboliu/Qwen3-Embedding-4B-W4A16-G128"] = replace(QWEN3["Qwen/Qwen3-Embedding-4B"],
                                                         name="boboliu/Qwen3-Embedding-4B-W4A16-G128",
                                                         quantization=Quantization("gptq", 4, 128))


def quantization_of(config: dict) -> Quantization | None:
    """The weight-only quantization a config.json declares, or None (bitsandbytes is chosen at load time
    by jobs.encode --dtype, not stored). Reads GPTQ (`bits`, `group_size`, `lm_head`), AWQ (`bits` or
    `w_bit`, `group_size` or `q_group_size`) and compressed-tensors (`config_groups.*.weights.num_bits`,
    `group_size`, `ignore`). A format this does not know is an error, not a silent 16-bit plan."""
    q = config.get("quantization_config")
    if not q:
        return None
    method = q.get("quant_method", "")
    if method in ("gptq", "awq"):
        return Quantization(method, int(q.get("bits") or q.get("w_bit")),
                            int(q.get("group_size") or q.get("q_group_size") or -1))
    if method == "compressed-tensors":
        weights = [group.get("weights") or {} for group in (q.get("config_groups") or {}).values()]
        bits = [w for w in weights if w.get("num_bits")]
        if not bits or any(w.get("type", "int") not in ("int", "float") for w in bits):
            raise EstimateError("cannot size a compressed-tensors checkpoint without integer weight groups "
                                "(config_groups.*.weights.num_bits)")
        widest = max(bits, key=lambda w: w["num_bits"])
        return Quantization(method, int(widest["num_bits"]), int(widest.get("group_size") or -1),
                            tuple(name for name in q.get("ignore") or () if name != "lm_head"))
    if method == "bitsandbytes":
        return Quantization(method, 4 if q.get("load_in_4bit") else 8, 64 if q.get("load_in_4bit") else -1)
    raise EstimateError(f"cannot size a {method or 'quantized'} checkpoint: known quantization_config formats "
                        "are gptq, awq, compressed-tensors and bitsandbytes")


class EstimateError(ValueError):
    """The model or data cannot be sized: one line saying what to give instead."""


class StoreUnreachable(EstimateError):
    """The store holding the data cannot answer now (refused, timed out, 5xx): weather, not a size. Sizing
    by the assumption instead would plan a worst case thousands of times the real one (a $1 job reserved
    at $2,480 and stopped by budget for good), so the caller waits and sizes again when the store is back."""

    def __init__(self, uri: str, exc: BaseException):
        super().__init__(f"the store holding {uri} is unreachable ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]}); retrying")


def _store_weather(uri: str, exc: Exception) -> None:
    """Raise StoreUnreachable for weather; return for a fact about the store (no access, no bucket)."""
    if storage.is_weather(exc):
        raise StoreUnreachable(uri, exc) from None


def _model_config(model: str) -> dict | None:
    """The model's config.json: a local directory, or an fsspec URI (an uploaded input, a job's output)."""
    if storage.is_remote(model):
        try:
            return storage.read_json(storage.join(model, "config.json"))
        except Exception as exc:  # noqa: BLE001 (botocore's errors are no OSError)
            _store_weather(model, exc)  # a store that is down now is waited for, never "cannot size"
            if isinstance(exc, (OSError, ValueError)):
                return None
            raise
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
                          config.get("tie_word_embeddings", True), quantization_of(config))
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


def corpus_stats(uri: str | None, assumed_records: int = 1_000_000, *, group_size: int = 8,
                 sampler: str | None = None) -> CorpusStats:
    """Estimated from a sample of the JSONL and its size when it is reachable (jobs.data.sample_stats
    reads a few thousand lines at spread offsets, never the whole file), else a stated assumption.
    `mean_tokens` is what one record costs to train on: its query and its group's documents, as the job's
    `sampler` (jobs.data.SAMPLERS; unset: FlagEmbedding's) builds the group."""
    from jobs import storage
    from jobs.data import DEFAULT_SAMPLER, SAMPLERS, BadData, sample_stats

    try:  # a remote URI this machine may not read (no credentials, no access) is assumed, not an error
        reachable = uri is not None and storage.exists(uri)
    except Exception as exc:  # noqa: BLE001 (botocore's errors are no OSError)
        _store_weather(uri, exc)  # ... but a store that is down now is waited for (StoreUnreachable)
        reachable = False
    if not reachable:  # assumed: bge-style records, a full group of ~128-token documents
        return CorpusStats(assumed_records, ASSUMED_QUERY_TOKENS + group_size * ASSUMED_DOC_TOKENS, group_size - 1.0,
                           measured=False)
    if (sampler or DEFAULT_SAMPLER) not in SAMPLERS:
        raise EstimateError(f"sampler {sampler!r}: choose {' or '.join(SAMPLERS)}")
    try:
        sample = sample_stats(uri, group_size=group_size, sampler=SAMPLERS[sampler or DEFAULT_SAMPLER])
    except BadData as exc:
        raise EstimateError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 (the store went down between the two reads)
        _store_weather(uri, exc)
        raise
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
    except Exception as exc:  # noqa: BLE001 (botocore's errors are no OSError)
        _store_weather(uri, exc)
        if isinstance(exc, (OSError, ValueError, ImportError)):
            return None
        raise
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
    io_bound: bool = False  # streams io_bytes instead of computing (the merge): any GPU's speed will do
    # The gradient cache, for train-bag: chunks are chosen per GPU (mini_batch_on); 0 = not chunked
    sequences_per_step: int = 0  # queries + their group documents in one optimizer step, all GPUs
    fixed_gb: float = 0.0  # what does not scale with the chunk: weights, optimizer, workspace
    gb_per_sequence: float = 0.0  # activations of one sequence in a chunk
    fixed_mini_batch: int | None = None  # the user chose --mini-batch-size
    cache_flops: float = 0.0  # the gradient cache's extra first forward, when the batch is chunked
    ram_breakdown: dict[str, float] = field(default_factory=dict)  # GB of host RAM per component (rank 0)
    ram_per_extra_rank_gb: float = 0.0  # each further data-parallel rank's process on the same box
    # bytes over the instance's network, what a provider that bills bandwidth per byte charges (Vast): pulled
    # at each start (base model, inputs; a resumed attempt adds its checkpoint), pushed at the end (outputs),
    # and one checkpoint pushed every checkpoint interval (jobs.checkpoint mirrors each save to its URI)
    download_bytes: float = 0.0
    upload_bytes: float = 0.0
    checkpoint_bytes: float = 0.0

    def ram_on(self, gpu_count: int = 1) -> float:
        """Host RAM of an instance with `gpu_count` GPUs running the job (one process per rank)."""
        return self.ram_gb + (self.gpus_used(gpu_count) - 1) * self.ram_per_extra_rank_gb

    def scaled(self, factor: float) -> Needs:
        """The same job with its VRAM scaled by a learned measured / planned ratio (planner.plan.memory)."""
        if factor == 1.0:
            return self
        return replace(self, vram_gb=max(MIN_VRAM_GB, self.vram_gb * factor), fixed_gb=self.fixed_gb * factor,
                       gb_per_sequence=self.gb_per_sequence * factor,
                       breakdown=self.breakdown | {"learned correction": (factor - 1) * sum(self.breakdown.values())})

    def vram_at(self, chunk: int | None) -> float:
        """VRAM per GPU at a gradient-cache chunk of `chunk` sequences (the planned need on a card)."""
        if chunk is None or not self.sequences_per_step:
            return self.vram_gb
        return max(MIN_VRAM_GB, self.fixed_gb + chunk * self.gb_per_sequence)

    def remaining(self, fraction: float) -> Needs:
        """The same job with only `fraction` of its work left (a relaunch from a checkpoint): every
        per-token cost scales, the gradient cache's first pass included; memory does not."""
        if fraction >= 1.0:
            return self
        return replace(self, flops=self.flops * fraction, io_bytes=self.io_bytes * fraction,
                       cache_flops=self.cache_flops * fraction, download_bytes=self.download_bytes + self.checkpoint_bytes)

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
        room = vram_gb * VRAM_USABLE - self.fixed_gb  # VRAM_USABLE and ACTIVATION_MARGIN: the safety margin
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
        if self.io_bound:
            return self.io_bytes / (DISK_GBPS * 1e9) / 3600 + 0.05
        return (self.flops if flops is None else flops) / (peak_tflops * 1e12 * efficiency * gpus) / 3600


def saved_bytes_per_token(shape: ModelShape, method: str, gradient_checkpointing: bool = True) -> int:
    """Activation bytes a training forward keeps per token until its backward (SAVED_PER_LAYER): with
    gradient checkpointing each layer's input plus one layer recomputed in full during the backward,
    without it every layer's saved tensors."""
    layer = SAVED_PER_LAYER[method].of(shape, LORA_RANK, len(recipe.LORA_TARGETS))
    if gradient_checkpointing:
        return CHECKPOINTED_LAYER.of(shape) * shape.layers + layer
    return layer * shape.layers


def _floor(breakdown: dict[str, float]) -> float:
    return max(MIN_VRAM_GB, sum(breakdown.values()))


def train_needs(shape: ModelShape, stats: CorpusStats, *, fraction: float, method: str | None = None,
                epochs: int = 1, batch_size: int | None = None, group_size: int = recipe.COMMON["group_size"],
                query_max_len: int = 512, doc_max_len: int = 512, mini_batch_size: int | None = None,
                gradient_checkpointing: bool = True, max_steps: int | None = None) -> Needs:
    """A train-bag job's needs. `method` and `batch_size` default to the BOOM recipe for the model's
    size (jobs.recipe.recipe_for: LoRA with 128 queries per step from 1 B parameters up, full below);
    `mini_batch_size` None lets the planner choose the gradient-cache chunk per GPU, 0 turns caching off."""
    if shape.quantization is not None:
        raise EstimateError(f"{shape.name} is a {shape.quantization.bits}-bit {shape.quantization.method} checkpoint: "
                            "train-bag fine-tunes a 16-bit base; give the unquantized model")
    boom = recipe.recipe_for(shape.params)
    method, batch_size = method or boom["method"], batch_size or boom["batch_size"]
    P = shape.params
    docs_per_query = min(group_size, 1 + math.ceil(stats.negatives))
    sequences = batch_size * (1 + docs_per_query)
    per_token = saved_bytes_per_token(shape, method, gradient_checkpointing) / GB
    longest = max(query_max_len, doc_max_len)  # a chunk of the longer kind sets the peak
    per_sequence = per_token * ACTIVATION_MARGIN * longest
    if method == "lora":
        model = {"weights": 2 * P / GB, "lora weights+grads+adam": 20 * shape.lora_params(LORA_RANK) / GB}
    else:
        model = {"weights": 2 * P / GB, "gradients": 2 * P / GB, "gradient sum (fp32)": 4 * P / GB,
                 "compensation": 2 * P / GB, "adam moments": 8 * P / GB}
    embeddings = sequences * shape.hidden * 4 * 2 / GB  # the cached fp32 embeddings and their gradients
    fixed = sum(model.values()) + embeddings + WORKSPACE_GB
    chunked = mini_batch_size != 0
    step_tokens = batch_size * (query_max_len + docs_per_query * doc_max_len)
    activations = (min(mini_batch_size or MIN_CHUNK, sequences) * longest if chunked else step_tokens) * per_token
    breakdown = model | {"activations": activations, "activation margin": activations * (ACTIVATION_MARGIN - 1),
                         "workspace": WORKSPACE_GB}
    if chunked:
        breakdown["embedding cache"] = embeddings
    tokens = stats.records * fraction * epochs * stats.mean_tokens
    if max_steps is not None:
        tokens = min(tokens, max_steps * batch_size * stats.mean_tokens)
    computed = tokens * recipe.SORTED_CHUNK_PADDING  # padding included, as the job counts its FLOPs
    flops = recipe.train_flops_per_token(P, method, gradient_checkpointing=gradient_checkpointing) * computed
    # a checkpoint: bf16 weights + compensation and fp32 moments (full), or the fp32 adapter and its moments
    checkpoint_gb = (12 * P if method == "full" else 12 * shape.lora_params(LORA_RANK)) / GB
    disk_gb = 2 * P / GB + 4 * P / GB + CHECKPOINTS_KEPT * checkpoint_gb + 10  # bf16 base, float32 output, slack
    notes = () if stats.measured else (f"corpus not reachable: assumed {stats.records:,} records of "
                                       f"{stats.mean_tokens:.0f} tokens",)
    notes += (f"{method}, {batch_size} queries per step x a group of {docs_per_query} documents",)
    # host RAM: rank 0 ends by building the float32 output on the CPU (the LoRA merge re-reads the base in
    # float32: jobs.export.float32_model); every rank first loads the bf16 base there before moving it
    output = "float32 output (base re-read in float32, adapter merged)" if method == "lora" else "float32 output"
    ram = {"process": PROCESS_RAM_GB, output: 4 * P / GB}
    return Needs(f"train-bag/{method}", _floor(breakdown), disk_gb=disk_gb,
                 ram_gb=sum(ram.values()), ram_breakdown=ram, ram_per_extra_rank_gb=PROCESS_RAM_GB + 2 * P / GB,
                 flops=flops, io_bytes=0.0, breakdown=breakdown, notes=notes,
                 data_parallel=True, sequences_per_step=sequences if chunked else 0, fixed_gb=fixed,
                 gb_per_sequence=per_sequence, fixed_mini_batch=mini_batch_size or None,
                 cache_flops=2 * P * computed if chunked else 0.0,
                 download_bytes=2 * P + stats.records * stats.mean_tokens * TEXT_BYTES_PER_TOKEN,  # bf16 base, corpus
                 upload_bytes=4 * P, checkpoint_bytes=checkpoint_gb * GB)  # the float32 output


ENCODE_BYTES = {"bfloat16": 2.0, "float16": 2.0, "float32": 4.0, "int8": 1.0, "nf4": 0.56}


def encode_needs(shape: ModelShape, records: int, mean_tokens: float, *, dtype: str = "bfloat16",
                 batch_tokens: int = 32768) -> Needs:
    """Weights (a quantized checkpoint as stored: Quantization; else `dtype`, bitsandbytes int8/nf4 at
    load time), the largest batch's live activations (ENCODE_PEAK per token, no margin needed: nothing is
    kept for a backward) and, for a packed checkpoint, one projection dequantized to 16 bits at a time."""
    P = shape.params
    breakdown = {"weights": shape.weight_bytes(ENCODE_BYTES[dtype]) / GB,
                 "activations": ENCODE_PEAK.of(shape) * batch_tokens / GB, "workspace": WORKSPACE_GB}
    if shape.quantization is not None:
        breakdown["dequantized projection"] = 2 * shape.hidden * shape.intermediate / GB
    ram = {"process": PROCESS_RAM_GB, "weights loaded on the CPU first": breakdown["weights"]}
    return Needs("encode", _floor(breakdown), disk_gb=shape.weight_bytes(4) / GB + records * shape.hidden * 4 / GB + 10,
                 ram_gb=sum(ram.values()), ram_breakdown=ram, flops=2 * P * records * mean_tokens, io_bytes=0.0,
                 breakdown=breakdown, download_bytes=shape.weight_bytes() + records * mean_tokens * TEXT_BYTES_PER_TOKEN,
                 upload_bytes=records * shape.hidden * 4)  # the weights as stored, the texts; float32 embeddings


def merge_needs(shape: ModelShape, models: int, dtype_bytes: int = 4) -> Needs:
    """The merge streams tensor by tensor on the CPU (jobs.merge): RAM for one tensor of each of the
    `models` inputs (a base model counts as one) and their merged float32 result, at the largest tensor
    (the embedding); tests/test_memory_model.py measures 2.7-3.3 such tensors of peak RSS for 3 inputs. Disk
    for the inputs and the output."""
    size = shape.params * dtype_bytes
    largest = shape.vocab * shape.hidden * 4
    ram = {"process": PROCESS_RAM_GB, f"largest tensor x {models + 1} (each input's, the merged float32)":
           (models + 1) * largest / GB}
    return Needs("merge", MIN_VRAM_GB, disk_gb=(models + 1) * size / GB + 5, ram_gb=sum(ram.values()),
                 ram_breakdown=ram, flops=0.0, io_bytes=(models + 1) * size, breakdown={"floor": MIN_VRAM_GB},
                 download_bytes=models * size, upload_bytes=size, io_bound=True)


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
