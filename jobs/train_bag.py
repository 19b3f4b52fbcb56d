"""Fine-tune one BOOM bag: a Qwen3 embedder trained on a seeded, task-stratified fraction of a corpus.

    python -m jobs.train_bag --model MODEL --data URI --fraction F --seed N --output URI
        [--checkpoint URI] [--method full|lora] [--dtype bfloat16|float32] [--max-steps N] [--epochs N]
        [--batch-size N] [--group-size N] [--mini-batch-size N] [--grad-accum N] [--lr X]
        [--warmup-ratio X] [--weight-decay X] [--temperature T] [--kd-loss m3|kl|none]
        [--query-max-len N] [--doc-max-len N] [--optimizer adamw|torch-adamw]
        [--save-every-steps N] [--save-every-minutes N] [--replay-data URI --replay-fraction F]
    python -m jobs.train_bag --spec FILE.json      # the same fields as JSON (flag names with _)

Embedding (arXiv 2602.05787, the BOOM model cards, jobs.embedder): last-token pooling of a Qwen3
decoder with left padding and an appended end-of-text token, L2-normalized; queries carry
`Instruct: {instruction}\\nQuery:`, documents nothing (FlagEmbedding's symmetric_sts/_clustering
data: the query prompt too).

Defaults: the BOOM recipe (jobs.recipe, each value's source there). A base model of 1 B parameters
or more (Qwen3-4B) gets their Qwen3-4B script (Training/examples/finetune/embedder/decoder_only/
base_same_dataset.sh): --method lora (r 32, alpha 32, dropout 0.1 [FlagEmbedding's default], on
q/k/v/o/gate/up/down), --batch-size 128 queries per optimizer step (16 per GPU x 8 GPUs with
negatives_cross_device), --kd-loss m3; a smaller one (Qwen3-0.6B, the tiny test model) their 0.6B
script (Training/base_same_0.6B.sh): --method full, --batch-size 256, no distillation. Both: --lr
5e-5, --warmup-ratio 0.1 then linear decay to 0 (transformers' default scheduler, which the scripts
keep), --weight-decay 0 (transformers' default), gradient clipping at 1.0 (its default), one epoch,
--group-size 8, --temperature 0.02, 512/512 tokens, gradient checkpointing, same-task batches. An
explicit flag overrides its default only.

Loss over one same-task batch of n queries (FlagEmbedding's decoder-only embedder, AbsModeling.py):
each query i has a group G_i = its positive and up to group_size - 1 hard negatives (drawn per
epoch when it has more; jobs.data.make_group), D = every document of every group of the batch,
s = cosine / T. Without teacher scores (or --kd-loss none):
    L = 1/n sum_i -log( exp(s(q_i, p_i)) / sum_{d in D} exp(s(q_i, d)) )
(a task named `...no_in_batch_neg` sums over G_i instead of D). With teacher scores t (FlagEmbedding's
pos_scores/neg_scores) on every record of the batch, w_i = softmax(t_i) over G_i, and
  --kd-loss m3  (FlagEmbedding's m3_kd_loss, BOOM's choice): L = sum_j 1/n sum_i w_ij CE_ij, where CE_ij
                is the cross-entropy of target G_i[j] over D minus G_i[0..j-1];
  --kd-loss kl  (FlagEmbedding's kl_div): the plain L plus 1/n sum_i -sum_j w_ij log softmax_{G_i}(s(q_i, .))_j.

Gradient caching (GradCache, Gao et al. 2021; sentence-transformers' CachedMultipleNegativesRankingLoss
is the reference): with --mini-batch-size m (sequences; default 32, 0 = off) and more than m queries
or documents, (1) every chunk of m sequences is embedded without a graph, saving the RNG state before
each; (2) the loss over the whole batch and its gradient with respect to the embeddings are computed;
(3) each chunk is embedded again with a graph, its RNG state restored (dropout masks repeat), and
back-propagated with its slice of that gradient. The result is the whole batch's gradient with
the memory of one chunk: 128 x 8 sequences of 512 tokens fit one 24 GB GPU with LoRA. The
tokenization (and so the padding) of the whole batch is shared by both passes, so the chunked
gradient equals the unchunked one (tests: 1e-5 in float32).

Precision: --dtype (default bfloat16 on a GPU, float32 on the CPU; bfloat16 works on the CPU too)
is the dtype of the weights the forward runs in. In bfloat16 the optimizer (jobs.optim.KahanAdamW)
keeps a bf16 Kahan compensation per weight and float32 moments, so updates far below a bf16 weight's
spacing are not lost (plain torch AdamW on bf16 weights, --optimizer torch-adamw, loses them:
tests/test_train_precision.py). LoRA adapters are float32 (peft). The output holds float32
weights: the compensated values for full fine-tuning; for LoRA the adapter merged into the base
re-read in float32.

Incremental stage: --replay-data OLD --replay-fraction 0.4 adds a seeded, task-stratified 40 %
sample of the old corpus to the bag; --model may then be the previous merged model.

Data (jobs.data): our JSONL format or FlagEmbedding's (`query`, `pos`, `neg`, `pos_scores`,
`neg_scores`, `prompt`, `type`), read through a line-offset index: a 2.8 M-record corpus needs
tens of MB, not tens of GB; the bag is hashed by streaming its records.

Checkpoints (jobs.checkpoint) every --save-every-steps and every --save-every-minutes, and on SIGTERM
when the save fits before the SIGKILL that follows it (RunPod: 5 s; --sigterm-grace-seconds); the
optimizer state includes the compensation buffers. Rerunning the same command resumes from the
newest one and, on CPU, ends with bitwise the same weights as an uninterrupted run, in either
dtype. progress.json (beside the checkpoints) and the DONE marker carry the measured throughput:
`tokens_per_s` (all GPUs), `tokens_per_s_per_gpu`, `tflops_per_gpu` (achieved, FLOPs counted as
jobs.recipe.train_flops_per_token, the planner's formula), `eta_s` (progress only), and `memory`
(jobs.memory: peak VRAM allocated and reserved and peak RSS, rank 0 in progress, every rank in DONE). The output
directory loads with SentenceTransformer(path) and AutoModel.from_pretrained(path) (safetensors,
float32) and has a README.md model card; LoRA runs also keep the adapter in adapter/. DONE is
written last; a rerun with DONE present exits 0 at once.

Several GPUs: `torchrun --nproc_per_node N -m jobs.train_bag` with the same flags. Each rank encodes
its share of every batch (chunked as above), the embeddings are gathered so the loss still spans
the whole batch, and gradients are summed (jobs.distributed); rank 0 writes checkpoints (with every
rank's RNG state) and the output. The result equals a single-process run up to float summation order.

Exit codes: 0 done, 2 bad input, 75 interrupted (resumable); under torchrun the launcher reports
the ranks' failure as its own exit code (rerun the same command to resume).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from jobs import memory, recipe, storage
from jobs.data import BadData, Batch, Group, build_bag, content_hash, schedule, step_groups
from jobs.distributed import Group as Ranks
from jobs.lifecycle import BadInput, Interrupted, StopRequest, run_job

DONE = "DONE"
METHODS = ("full", "lora")
DTYPES = ("bfloat16", "float32")
KD_LOSSES = ("m3", "kl", "none")
OPTIMIZERS = ("adamw", "torch-adamw")
PROGRESS_EVERY_S = 15.0  # the progress file between checkpoints (planner jobs show, the dashboard)
DISK_BYTES_PER_SECOND = 200e6  # save-time guess before the first measured save
RESOLVED = ("method", "batch_size", "lr", "kd_loss", "dtype")  # None until resolve() fills them in


@dataclass(frozen=True)
class Config:
    model: str
    data: str
    fraction: float
    seed: int
    output: str
    checkpoint: str | None = None
    method: str | None = None  # None: the BOOM recipe for the model's size (jobs.recipe)
    dtype: str | None = None  # None: bfloat16 on a GPU, float32 on the CPU
    max_steps: int | None = None
    epochs: int = recipe.COMMON["epochs"]
    batch_size: int | None = None  # queries per optimizer step; None: the recipe's
    group_size: int = recipe.COMMON["group_size"]
    mini_batch_size: int = recipe.DEFAULT_MINI_BATCH  # sequences per gradient-cache chunk; 0: no caching
    grad_accum: int = 1
    lr: float | None = None
    warmup_ratio: float = recipe.COMMON["warmup_ratio"]
    weight_decay: float = recipe.COMMON["weight_decay"]
    temperature: float = recipe.COMMON["temperature"]
    kd_loss: str | None = None
    query_max_len: int = recipe.COMMON["query_max_len"]
    doc_max_len: int = recipe.COMMON["doc_max_len"]
    optimizer: str = "adamw"
    save_every_steps: int = 500
    save_every_minutes: float = 30.0
    replay_data: str | None = None
    replay_fraction: float | None = None
    sigterm_grace_seconds: float = 5.0
    gradient_checkpointing: bool = recipe.COMMON["gradient_checkpointing"]
    cache_dir: str = str(Path.home() / ".cache" / "planner-jobs")

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


def check_config(config: Config) -> None:
    problems = []
    if not 0 < config.fraction <= 1:
        problems.append(f"--fraction must be in (0, 1], got {config.fraction}")
    if config.method is not None and config.method not in METHODS:
        problems.append(f"--method must be full or lora, got {config.method!r}")
    if config.dtype is not None and config.dtype not in DTYPES:
        problems.append(f"--dtype must be bfloat16 or float32, got {config.dtype!r}")
    if config.kd_loss is not None and config.kd_loss not in KD_LOSSES:
        problems.append(f"--kd-loss must be m3, kl or none, got {config.kd_loss!r}")
    if config.optimizer not in OPTIMIZERS:
        problems.append(f"--optimizer must be adamw or torch-adamw, got {config.optimizer!r}")
    for name in ("epochs", "grad_accum", "save_every_steps", "group_size"):
        if getattr(config, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    if config.batch_size is not None and config.batch_size < 2:
        problems.append("--batch-size must be at least 2 (in-batch negatives need company)")
    if config.mini_batch_size < 0:
        problems.append("--mini-batch-size must be 0 (no gradient caching) or more")
    if config.max_steps is not None and config.max_steps < 1:
        problems.append("--max-steps must be at least 1")
    if config.learning_rate <= 0 or config.temperature <= 0 or config.save_every_minutes <= 0:
        problems.append("--lr, --temperature and --save-every-minutes must be positive")
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


def model_config(model_path: str | Path) -> dict:
    """The base model's config.json, from its local directory (jobs.storage.resolve_model)."""
    return json.loads((Path(model_path) / "config.json").read_text())


def resolve(config: Config, device_type: str, model_cfg: dict) -> tuple[Config, dict]:
    """Fill the defaults that depend on the model (the BOOM recipe for its size) and on the device."""
    boom = recipe.recipe_for(recipe.parameter_count(model_cfg))
    values = {"method": config.method or boom["method"], "batch_size": config.batch_size or boom["batch_size"],
              "lr": config.learning_rate, "kd_loss": config.kd_loss or boom["kd_loss"],
              "dtype": config.dtype or ("bfloat16" if device_type == "cuda" else "float32")}
    return replace(config, **values), boom


# --- model and loss -----------------------------------------------------------------------------

def local_model_path(config: Config) -> str:
    return str(storage.resolve_model(config.model, config.cache_dir))


def load_trainable(config: Config, device, dtype):
    """(tokenizer, net, {parameter: initial bf16 compensation}). A full fine-tune of a float32
    checkpoint in bf16 loads it in float32 first and keeps what bf16 rounding takes off each weight,
    so the optimizer starts from the precise weights (jobs.optim)."""
    import torch

    from jobs.embedder import load_model, load_tokenizer
    from jobs.optim import split_float32

    model_path = local_model_path(config)
    tokenizer = load_tokenizer(model_path)
    stored = model_config(model_path)
    stored_dtype = stored.get("dtype") or stored.get("torch_dtype")
    keep_residual = config.method == "full" and dtype != torch.float32 and stored_dtype in (None, "float32")
    net = load_model(model_path, device=device, dtype=torch.float32 if keep_residual else dtype)
    residuals = {}
    if keep_residual:
        with torch.no_grad():
            for p in net.parameters():
                hi, lo = split_float32(p.data, dtype)
                p.data = hi
                residuals[p] = lo
        net.to(dtype)
    net.config.use_cache = False
    if config.gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        if config.gradient_checkpointing:
            net.enable_input_require_grads()
        net = get_peft_model(net, LoraConfig(**recipe.LORA))  # adapters in float32 (autocast_adapter_dtype)
    net.train()
    return tokenizer, net, residuals


def trainable_tensors(net) -> dict:
    return {name: p for name, p in net.named_parameters() if p.requires_grad}


@dataclass(frozen=True)
class Layout:
    """Where each query's group sits among the documents of the whole (gathered) batch."""
    starts: list[int]  # per query (rank order): index of its positive among all documents
    sizes: list[int]  # per query: its group's size
    teacher: list[tuple[float, ...]] | None  # per query, when every group has teacher scores
    in_batch: bool


def batch_layout(batch: Batch, world: int) -> Layout:
    """Queries and documents in the order the ranks' embeddings are gathered in: rank 0's, then rank 1's..."""
    ordered = [g for rank in range(world) for g in batch.groups[rank::world]]
    starts, sizes, total = [], [], 0
    for g in ordered:
        starts.append(total)
        sizes.append(len(g.documents))
        total += len(g.documents)
    teacher = [g.teacher_scores for g in ordered] if all(g.teacher_scores for g in ordered) else None
    return Layout(starts, sizes, teacher, batch.in_batch)


def contrastive_loss(q, d, layout: Layout, temperature: float, kd_loss: str):
    """The batch loss of the module docstring, from L2-normalized query and document embeddings."""
    import torch
    import torch.nn.functional as F

    n, m = q.shape[0], d.shape[0]
    device = q.device
    scores = q @ d.T / temperature
    starts = torch.tensor(layout.starts, device=device)
    sizes = torch.tensor(layout.sizes, device=device)
    columns = torch.arange(m, device=device)
    own = (columns[None, :] >= starts[:, None]) & (columns[None, :] < (starts + sizes)[:, None])
    if not layout.in_batch:
        scores = scores.masked_fill(~own, float("-inf"))
    teacher = None
    if layout.teacher is not None and kd_loss != "none":
        width = max(layout.sizes)
        raw = torch.full((n, width), float("-inf"), device=device)
        for i, t in enumerate(layout.teacher):
            raw[i, :len(t)] = torch.tensor(t, device=device)
        teacher = torch.softmax(raw, dim=-1)  # w_ij; 0 past a group's end
    if teacher is None or kd_loss == "kl":
        loss = F.cross_entropy(scores, starts)
        if teacher is not None:
            index = (starts[:, None] + torch.arange(teacher.shape[1], device=device)[None, :]).clamp(max=m - 1)
            local = torch.gather(scores.masked_fill(~own, float("-inf")), 1, index)
            valid = torch.arange(teacher.shape[1], device=device)[None, :] < sizes[:, None]
            log_p = torch.log_softmax(local.masked_fill(~valid, float("-inf")), dim=-1)
            loss = loss - (teacher * log_p.masked_fill(~valid, 0.0)).sum(dim=-1).mean()
        return loss
    loss = scores.new_zeros(())  # m3: target j with the group's earlier members masked out
    masked = scores
    for j in range(teacher.shape[1]):
        valid = j < sizes
        target = (starts + j).clamp(max=m - 1)
        ce = torch.logsumexp(masked, dim=-1) - masked.gather(1, target[:, None]).squeeze(1)
        loss = loss + (teacher[:, j] * torch.where(valid, ce, torch.zeros_like(ce))).mean()
        earlier = (columns[None, :] == target[:, None]) & valid[:, None]
        masked = masked.masked_fill(earlier, float("-inf"))
    return loss


def _texts(groups: list[Group]) -> tuple[list[str], list[str]]:
    from jobs.embedder import format_query

    queries = [format_query(g.query, g.instruction) for g in groups]
    docs = [format_query(doc, g.instruction) if g.prompt_documents else doc for g in groups for doc in g.documents]
    return queries, docs


def _chunks(inputs: dict, size: int) -> list[dict]:
    rows = inputs["input_ids"].shape[0]
    return [{k: v[i:i + size] for k, v in inputs.items()} for i in range(0, rows, size)]


class _ReplayRNG:
    """Snapshot the RNG before a chunk's first pass; replay it for the second (RandContext in the reference)."""

    def __init__(self, device) -> None:
        import torch

        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def __enter__(self):
        import torch

        self._fork = torch.random.fork_rng(devices=[self.device] if self.cuda is not None else [])
        self._fork.__enter__()
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def train_batch(net, tokenizer, batch: Batch, config: Config, device, ranks: Ranks, scale: float):
    """Accumulate `scale` x the gradient of the batch loss into the trainable parameters.

    Returns (loss, real tokens this rank encoded, whether the gradient cache was used). Under
    torchrun each rank encodes every world-th group; all ranks' embeddings are gathered, so every
    query sees every document, and each rank back-propagates the full loss through its own rows
    only: summing the ranks' gradients gives the single-process gradient."""
    import torch

    from jobs.embedder import embed, tokenize

    mine = batch.groups[ranks.rank::ranks.world]
    layout = batch_layout(batch, ranks.world)
    hidden = net.config.hidden_size
    if not mine:  # a batch smaller than the world: this rank only takes part in the collectives
        q = d = torch.zeros((0, hidden), device=device, requires_grad=True)
        loss = _gathered_loss(q, d, layout, config, ranks)
        (loss * scale).backward()
        return loss.item(), 0, False
    query_texts, doc_texts = _texts(mine)
    queries = tokenize(tokenizer, query_texts, config.query_max_len).to(device)
    docs = tokenize(tokenizer, doc_texts, config.doc_max_len).to(device)
    tokens = int(queries["attention_mask"].sum() + docs["attention_mask"].sum())
    chunk = config.mini_batch_size
    if not chunk or (len(query_texts) <= chunk and len(doc_texts) <= chunk):
        loss = _gathered_loss(embed(net, queries), embed(net, docs), layout, config, ranks)
        (loss * scale).backward()
        return loss.item(), tokens, False
    pieces = _chunks(queries, chunk) + _chunks(docs, chunk)
    replays, embedded = [], []
    with torch.no_grad():
        for piece in pieces:
            replays.append(_ReplayRNG(device))
            embedded.append(embed(net, piece))
    n_query_chunks = len(_chunks(queries, chunk))
    q = torch.cat(embedded[:n_query_chunks]).requires_grad_()
    d = torch.cat(embedded[n_query_chunks:]).requires_grad_()
    loss = _gathered_loss(q, d, layout, config, ranks)
    (loss * scale).backward()
    grads = list(q.grad.split(chunk)) + list(d.grad.split(chunk))
    for piece, replay, grad in zip(pieces, replays, grads):
        with replay:
            embed(net, piece).backward(grad)
    return loss.item(), tokens, True


def _gathered_loss(q, d, layout: Layout, config: Config, ranks: Ranks):
    q, _ = ranks.gather_rows(q)
    d, _ = ranks.gather_rows(d)
    return contrastive_loss(q, d, layout, config.temperature, config.kd_loss)


def make_optimizer(config: Config, params: dict, residuals: dict):
    import torch

    from jobs.optim import KahanAdamW

    if config.optimizer == "torch-adamw":  # plain AdamW: loses bf16 updates (kept to show it in the tests)
        return torch.optim.AdamW(params.values(), lr=config.learning_rate, weight_decay=config.weight_decay)
    return KahanAdamW(params.values(), lr=config.learning_rate, weight_decay=config.weight_decay,
                      initial_compensation=residuals)


# --- the run ------------------------------------------------------------------------------------

def train(config: Config, stop: StopRequest, ranks: Ranks) -> int:
    import torch
    from transformers import get_linear_schedule_with_warmup

    from jobs.checkpoint import CheckpointStore, rng_state, set_rng_state
    from jobs.embedder import pick_device_dtype

    check_config(config)
    if storage.exists(storage.join(config.output, DONE)):
        if ranks.is_main:
            print(f"{config.output} is already trained", file=sys.stderr)
        return 0
    if not storage.exists(config.model) and not storage.looks_like_hub_id(config.model):
        raise BadInput(f"model {config.model} not found; give a model directory, fsspec URI or hub id")
    device, _ = pick_device_dtype(ranks.device_name())
    cfg = model_config(local_model_path(config))
    config, boom = resolve(config, device.type, cfg)
    try:
        bag = build_bag(config)
    except BadData as exc:
        raise BadInput(str(exc)) from None
    per_epoch, total_steps = schedule(bag, config)
    identity = config.identity() | {"bag_records": len(bag), "bag_sha256": content_hash(bag)}
    if ranks.world > 1:
        identity["world_size"] = ranks.world  # the batch is split across ranks: a different float summation
    log = print if ranks.is_main else (lambda *args, **kwargs: None)
    log(f"bag: {len(bag)} records (sha256 {identity['bag_sha256'][:12]}), {total_steps} steps; {config.method} "
        f"{config.dtype}, batch {config.batch_size} x group {config.group_size}, chunks of {config.mini_batch_size}"
        + (f", {ranks.world} ranks" if ranks.world > 1 else ""), file=sys.stderr)

    cache_dir = Path(config.cache_dir) / (f"rank{ranks.rank}" if ranks.world > 1 else "")
    store = CheckpointStore(config.checkpoint_uri, cache_dir)
    checkpoint = store.load()
    if checkpoint is not None and checkpoint.identity != identity:
        changed = sorted(k for k in identity if checkpoint.identity.get(k) != identity[k])
        raise BadInput(f"{config.checkpoint_uri} holds a checkpoint of a different run ({', '.join(changed)} "
                       "differ); rerun the same command or choose a new --checkpoint/--output")

    torch.manual_seed(config.seed)
    dtype = getattr(torch, config.dtype)
    tokenizer, net, residuals = load_trainable(config, device, dtype)
    params = trainable_tensors(net)
    optimizer = make_optimizer(config, params, residuals)
    del residuals
    warmup = math.ceil(config.warmup_ratio * total_steps)  # transformers' get_warmup_steps
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    step, tokens_seen, loss_value, wall_before = 0, 0, float("nan"), 0.0
    if checkpoint is not None:
        with torch.no_grad():
            for name, tensor in checkpoint.tensors.items():
                params[name].copy_(tensor)
        optimizer.load_state_dict(checkpoint.optimizer)
        scheduler.load_state_dict(checkpoint.state["scheduler"])
        set_rng_state(checkpoint.state["rng_ranks"][ranks.rank] if ranks.world > 1 else checkpoint.state["rng"])
        step, tokens_seen = checkpoint.step, checkpoint.state["tokens_seen"]
        loss_value, wall_before = checkpoint.state["loss"], checkpoint.state["wall_s"]
        log(f"resuming from step {step} of {total_steps}", file=sys.stderr)
    del checkpoint

    n_params = recipe.parameter_count(cfg)
    started = time.monotonic()
    last_save_time, save_seconds, last_report_time, saved_step = started, None, started, step
    tokens_this_run, flops_this_run, steps_this_run, cache = 0, 0.0, 0, {}

    def throughput() -> dict:
        elapsed = max(time.monotonic() - started, 1e-9)
        rate = tokens_this_run / elapsed
        seconds_per_step = elapsed / max(steps_this_run, 1)
        return {"tokens_per_s": round(rate, 1), "tokens_per_s_per_gpu": round(rate / ranks.world, 1),
                "tflops_per_gpu": float(f"{flops_this_run / elapsed / ranks.world / 1e12:.4g}"), "gpus": ranks.world,
                "eta_s": round(seconds_per_step * (total_steps - step), 1) if steps_this_run else None}

    def progress_now(wall: float) -> dict:
        return {"step": step, "total_steps": total_steps, "tokens_seen": tokens_seen, "loss": loss_value,
                "wall": wall, "checkpoint_step": saved_step, "memory": {"ranks": [memory.usage(device)]}} | throughput()

    def save() -> None:
        """Every rank's RNG state goes in (dropout masks differ per rank); rank 0 writes, the others wait."""
        nonlocal last_save_time, save_seconds, saved_step
        t0 = time.monotonic()
        wall = wall_before + t0 - started
        state = {"scheduler": scheduler.state_dict(), "rng": rng_state(), "tokens_seen": tokens_seen,
                 "loss": loss_value, "wall_s": wall}
        if ranks.world > 1:
            state["rng_ranks"] = ranks.gather_objects(state["rng"])
        saved_step = step
        if ranks.is_main:
            size = store.save(step, params, optimizer.state_dict(), state, identity, progress_now(wall))
            log(f"checkpoint at step {step}: {size / 1e6:.1f} MB in {time.monotonic() - t0:.2f} s", file=sys.stderr,
                flush=True)
        ranks.barrier()
        last_save_time, save_seconds = time.monotonic(), time.monotonic() - t0

    def save_fits() -> bool:
        estimate = save_seconds if save_seconds is not None else sum(
            p.numel() * p.element_size() * 3 for p in params.values()) / DISK_BYTES_PER_SECOND
        return time.monotonic() - stop.at + estimate < config.sigterm_grace_seconds - 1.0

    while step < total_steps:
        batches = step_groups(bag, config, step, per_epoch, cache)
        step_loss = 0.0
        for batch in batches:
            if stop.signal and ranks.world == 1:  # mid-step: the partial gradient is worthless, the last checkpoint stands
                raise Interrupted(stop.signal)
            loss, tokens, cached = train_batch(net, tokenizer, batch, config, device, ranks, 1 / len(batches))
            step_loss += loss / len(batches)
            tokens = int(ranks.total(tokens))
            tokens_this_run += tokens
            tokens_seen += tokens
            flops_this_run += tokens * recipe.train_flops_per_token(
                n_params, config.method, gradient_checkpointing=config.gradient_checkpointing, cached_passes=cached)
        ranks.sum_gradients(params.values())
        torch.nn.utils.clip_grad_norm_(params.values(), recipe.COMMON["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step, steps_this_run, loss_value = step + 1, steps_this_run + 1, step_loss
        rates = throughput()
        log(f"step {step}/{total_steps} loss {loss_value:.4f} lr {scheduler.get_last_lr()[0]:.2e} "
            f"{rates['tokens_per_s']:,.0f} tok/s {rates['tflops_per_gpu']:.3g} TFLOP/s/GPU "
            f"ETA {_clock(rates['eta_s'])}", file=sys.stderr, flush=True)
        if ranks.any(stop.signal is not None):  # every rank stops at the same step
            if step < total_steps and ranks.any(ranks.is_main and save_fits()):
                save()
            raise Interrupted(stop.signal or "SIGTERM (another rank)")
        if step < total_steps and (step % config.save_every_steps == 0 or ranks.any(  # ranks' clocks differ
                time.monotonic() - last_save_time >= 60 * config.save_every_minutes)):
            save()
        elif ranks.is_main and time.monotonic() - last_report_time >= PROGRESS_EVERY_S:
            store.report_progress(progress_now(wall_before + time.monotonic() - started))
            last_report_time = time.monotonic()

    wall = wall_before + time.monotonic() - started
    used = ranks.gather_objects(memory.usage(device))  # every rank's peaks; rank 0's again after the output
    if not ranks.is_main:
        ranks.barrier()  # rank 0 writes the output and DONE
        return 0
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    rates = throughput()
    done = {"steps": step, "tokens_seen": tokens_seen, "final_loss": loss_value, "wall_s": round(wall, 3),
            "tokens_per_s": rates["tokens_per_s"], "tokens_per_s_per_gpu": rates["tokens_per_s_per_gpu"],
            "tflops_per_gpu": rates["tflops_per_gpu"], "gpus": ranks.world,
            "flops_formula": "jobs.recipe.train_flops_per_token", "parameters": n_params,
            "peak_memory_bytes": peak, "peak_memory_kind": "cuda allocated" if device.type == "cuda" else "process rss",
            "bag_records": len(bag), "bag_sha256": identity["bag_sha256"], "recipe_source": boom["source"],
            "config": identity}
    from jobs.data import write_bag_lines

    done["bag_draws"] = write_bag_lines(bag, config.output)  # bag_lines.txt.gz and the draw's seed, for the card
    write_output(config, net, tokenizer, optimizer, done)
    done["memory"] = {"ranks": [memory.usage(device), *used[1:]]}  # RSS with the float32 output built
    store.flush()
    storage.write_json_atomic(storage.join(config.output, DONE), done)
    if config.checkpoint is None:
        store.remove()  # the default checkpoints live inside the output and are no use once it is final
    print(json.dumps(done), flush=True)
    ranks.barrier()
    return 0


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def float32_model(config: Config, net, optimizer):
    """The trained embedder on the CPU in float32: compensated weights (full), or the adapter merged
    into the base re-read in float32 (LoRA: merging into bf16 weights would round the update away)."""
    import torch

    if config.method == "lora":
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        from jobs.embedder import load_model

        adapter = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(net).items()}
        base = load_model(local_model_path(config), device=torch.device("cpu"), dtype=torch.float32)
        wrapped = get_peft_model(base, LoraConfig(**recipe.LORA))
        set_peft_model_state_dict(wrapped, adapter)
        return wrapped.merge_and_unload()
    precise = {p: optimizer.precise(p) if hasattr(optimizer, "precise") else p.detach().float()
               for p in net.parameters() if p.requires_grad}
    with torch.no_grad():
        for p, value in precise.items():
            p.data = value.to(p.device)
    return net.to(device="cpu", dtype=torch.float32)


def write_output(config: Config, net, tokenizer, optimizer, done: dict) -> None:
    """The trained embedder as a sentence-transformers + transformers directory in float32, with a
    model card (and the adapter for LoRA)."""
    import tempfile

    from jobs import card
    from jobs.embedder import write_sentence_transformers_files

    remote = storage.is_remote(config.output)
    staging = Path(tempfile.mkdtemp(prefix="train-bag-", dir=config.cache_dir)) if remote else storage.local_path(
        config.output)
    staging.mkdir(parents=True, exist_ok=True)
    if config.method == "lora":
        net.save_pretrained(str(staging / "adapter"), safe_serialization=True)
    out = float32_model(config, net, optimizer)
    out.config.use_cache = True
    out.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    write_sentence_transformers_files(staging, hidden_size=out.config.hidden_size,
                                      max_seq_length=max(config.query_max_len, config.doc_max_len))
    (staging / card.CARD).write_text(model_card(config, done))
    if remote:
        storage.upload_tree(staging, config.output)


def model_card(config: Config, done: dict) -> str:
    from jobs import card

    training = {"method": config.method, "LoRA": json.dumps({k: v for k, v in recipe.LORA.items()})
                if config.method == "lora" else None, "training dtype": config.dtype,
                "optimizer": "AdamW, Kahan-compensated bf16 weights, fp32 moments (jobs.optim)"
                if config.optimizer == "adamw" else "torch.optim.AdamW",
                "learning rate": config.learning_rate, "warmup ratio": config.warmup_ratio,
                "schedule": "linear warmup, then linear decay to 0", "weight decay": config.weight_decay,
                "epochs": config.epochs, "max steps": config.max_steps, "queries per step": config.batch_size,
                "group size": f"{config.group_size} (1 positive + up to {config.group_size - 1} hard negatives)",
                "temperature": config.temperature, "distillation": config.kd_loss,
                "query / document max tokens": f"{config.query_max_len} / {config.doc_max_len}",
                "gradient checkpointing": config.gradient_checkpointing,
                "gradient cache chunk": config.mini_batch_size or "off", "recipe source": done["recipe_source"],
                "output dtype": "float32"}
    bag = {"data": config.data, "fraction": config.fraction, "seed": config.seed,
           "replay data": config.replay_data, "replay fraction": config.replay_fraction,
           "records": done["bag_records"], **done["bag_draws"],
           "data hash (sha256 of the bag's records)": done["bag_sha256"]}
    run = {"steps": done["steps"], "tokens": done["tokens_seen"], "final loss": round(done["final_loss"], 5),
           "tokens/s": done["tokens_per_s"], "GPUs": done["gpus"], "TFLOP/s per GPU": done["tflops_per_gpu"]}
    return card.render(
        title=f"BOOM bag: {Path(config.model.rstrip('/')).name} on {config.fraction:.0%} of the data (seed {config.seed})",
        summary=(f"One bag of BOOM (bagging-based model merging, arXiv 2602.05787): `{config.model}` fine-tuned "
                 f"with InfoNCE on a seeded, task-stratified {config.fraction:.0%} sample of `{config.data}`. "
                 "Trained by `python -m jobs.train_bag`."),
        base_models=[config.model], sections={"Training": training, "Bag": bag, "Run": run}, tags=["boom", "bagging"])


# --- command line -------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m jobs.train_bag", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, help="a JSON file with these fields (flag names with underscores)")
    parser.add_argument("--model", help="base model: directory, fsspec URI or hub id (Qwen/Qwen3-4B)")
    parser.add_argument("--data", help="training corpus JSONL, ours or FlagEmbedding's (local path or fsspec URI)")
    parser.add_argument("--fraction", type=float, help="share of each task to train on, in (0, 1]")
    parser.add_argument("--seed", type=int, help="seeds the bag, the batch order, the groups and the initialisation")
    parser.add_argument("--output", help="output directory or fsspec URI")
    parser.add_argument("--checkpoint", help="checkpoint URI (default: OUTPUT/.checkpoints)")
    parser.add_argument("--method", choices=METHODS, help="default: lora from 1 B parameters, else full (BOOM)")
    parser.add_argument("--dtype", choices=DTYPES, help="default: bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--kd-loss", choices=KD_LOSSES, help="with teacher scores (default: m3 for LoRA, else none)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help="adamw: compensated bf16 updates (default)")
    for name, kind in (("max-steps", int), ("epochs", int), ("batch-size", int), ("group-size", int),
                       ("mini-batch-size", int), ("grad-accum", int), ("lr", float), ("warmup-ratio", float),
                       ("weight-decay", float), ("temperature", float), ("query-max-len", int),
                       ("doc-max-len", int), ("save-every-steps", int), ("save-every-minutes", float),
                       ("replay-fraction", float), ("sigterm-grace-seconds", float)):
        parser.add_argument(f"--{name}", type=kind)
    parser.add_argument("--replay-data", help="old corpus to replay a share of (incremental stage)")
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false",
                        default=None, help="keep activations (faster, more memory)")
    parser.add_argument("--cache-dir", help="where remote inputs are downloaded and remote checkpoints staged")
    args = parser.parse_args(argv)
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
    missing = [f"--{name}" for name in ("model", "data", "fraction", "seed", "output") if name not in values]
    if missing:
        raise BadInput(f"missing {', '.join(missing)}")
    try:
        return Config(**values)
    except TypeError as exc:
        raise BadInput(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    def body(stop: StopRequest) -> int:
        config = parse_args(argv)
        os.makedirs(config.cache_dir, exist_ok=True)
        ranks = Ranks()
        try:
            return train(config, stop, ranks)
        finally:
            ranks.close()

    return run_job(body, "rerun the same command to resume from the last checkpoint")


if __name__ == "__main__":
    raise SystemExit(main())
