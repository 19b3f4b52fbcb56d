"""Fine-tune one BOOM bag: a Qwen3 embedder trained on a seeded, task-stratified fraction of a corpus.

    python -m jobs.train_bag --model MODEL --data URI --fraction F --seed N --output URI [--method lora] ...
    python -m jobs.train_bag --spec FILE.json      # the same fields as JSON (flag names with _)
    python -m jobs.train_bag --help                # every flag: jobs.train_config.Config, one field each

Where things are: the configuration and its flags (jobs.train_config), the BOOM defaults and every
deviation from the authors' scripts (jobs.recipe), the bag and its batches (jobs.data), the losses
(jobs.loss), the gradient cache (jobs.gradcache), the optimizer and the schedule (jobs.optim),
checkpoints (jobs.checkpoint), the output directory and model card (jobs.export). This module is
the loop, top to bottom: load, then one optimizer step at a time, checkpoint, and export.

Embedding (arXiv 2602.05787, the BOOM model cards, jobs.embedder): last-token pooling of a Qwen3
decoder with left padding and an appended end-of-text token, L2-normalized; queries carry
`Instruct: {instruction}\\nQuery:`, documents nothing (FlagEmbedding's symmetric_sts/_clustering
data: the query prompt too).

Defaults: the BOOM recipe for the base model's size (jobs.recipe): their Qwen3-4B script from 1 B
parameters up (LoRA r32 on the seven projections, 128 queries per step, m3 distillation), their 0.6B
script below (full fine-tuning, 256 queries, no distillation). An explicit flag overrides its default only.

One optimizer step: the step's same-task batches (jobs.data.step_groups); each batch's loss
(jobs.loss.LOSSES[--kd-loss]) over all its queries and documents, its gradient accumulated through the
gradient cache in chunks of --mini-batch-size sequences sorted by length (jobs.gradcache) into a
float32 sum (jobs.optim.Float32Grads), scaled by 1 / batches and, for a batch with in-batch negatives,
by --in-batch-grad-scale (the BOOM run's gradient scale: jobs.recipe.IN_BATCH_GRAD_SCALE); then the
ranks' sums are added, clipped to norm 1.0, and KahanAdamW takes the step at the schedule's learning
rate (jobs.optim.warmup_decay, --warmup log by default).

Precision: --dtype (default bfloat16 on a GPU, float32 on the CPU) is the dtype of the weights the
forward runs in. In bfloat16 the optimizer (jobs.optim.KahanAdamW) keeps a bf16 Kahan compensation per
weight and float32 moments, so updates far below a bf16 weight's spacing are not lost (plain torch
AdamW on bf16 weights, --optimizer torch-adamw, loses them: tests/test_train_precision.py). LoRA
adapters are float32 (peft). The output holds float32 weights.

Checkpoints (jobs.checkpoint) every --save-every-steps and every --save-every-minutes (default
jobs.protocol.CHECKPOINT_MINUTES, the interval the planner prices rework at), and on SIGTERM when
the save fits before the SIGKILL that follows it (RunPod: 5 s; --sigterm-grace-seconds); the
optimizer state includes the compensation buffers. Rerunning the same command resumes from the
newest one and, on CPU, ends with bitwise the same weights as an uninterrupted run, in either dtype.
progress.json (beside the checkpoints) and the DONE marker carry the measured throughput:
`tokens_per_s` (all GPUs, real tokens), `tokens_per_s_per_gpu`, `tflops_per_gpu` (achieved, FLOPs
counted as jobs.recipe.train_flops_per_token per token the forward computed, padding included),
`padding` (padded / real tokens), `eta_s` (progress only), and `memory` (jobs.memory: peak VRAM
allocated and reserved and peak RSS). DONE is written last; a rerun with DONE present exits 0 at once.

Several GPUs: `torchrun --nproc_per_node N -m jobs.train_bag` with the same flags. Each rank encodes
its share of every batch (chunked as above), the embeddings are gathered so the loss still spans
the whole batch, and gradients are summed (jobs.distributed); rank 0 writes checkpoints (with every
rank's RNG state) and the output. The result equals a single-process run up to float summation order.

Exit codes: 0 done, 2 bad input, 75 interrupted (resumable); under torchrun the launcher reports
the ranks' failure as its own exit code (rerun the same command to resume).
"""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

from jobs import memory, recipe, storage
from jobs.data import BadData, Batch, Group, build_bag, records_digest, schedule, step_groups, write_bag_lines
from jobs.distributed import Ranks, leave
from jobs.lifecycle import BadInput, Interrupted, StopRequest, run_job
from jobs.protocol import done_uri, duration
from jobs.train_config import Config, check_config, parse_args, resolve

PROGRESS_EVERY_S = 15.0  # the progress file between checkpoints (planner jobs show, the dashboard)
DISK_BYTES_PER_SECOND = 200e6  # save-time guess before the first measured save


# --- the model ----------------------------------------------------------------------------------

def model_config(model_path: str | Path) -> dict:
    """The base model's config.json, from its local directory (jobs.storage.resolve_model)."""
    return json.loads((Path(model_path) / "config.json").read_text())


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


def make_optimizer(config: Config, params: dict, residuals: dict):
    import torch

    from jobs.optim import KahanAdamW

    if config.optimizer == "torch-adamw":  # plain AdamW: loses bf16 updates (kept to show it in the tests)
        return torch.optim.AdamW(params.values(), lr=config.learning_rate, weight_decay=config.weight_decay)
    return KahanAdamW(params.values(), lr=config.learning_rate, weight_decay=config.weight_decay,
                      initial_compensation=residuals)


# --- one batch ----------------------------------------------------------------------------------

class BatchResult(NamedTuple):
    loss: float
    tokens: int  # real tokens this rank encoded
    padded_tokens: int  # tokens its forward passes computed, padding included
    cached: bool  # the gradient cache ran (one more forward)


def texts(groups: list[Group]) -> tuple[list[str], list[str]]:
    """The queries (with their instruction prompt) and every group's documents, in order."""
    from jobs.prompt import format_query

    queries = [format_query(g.query, g.instruction) for g in groups]
    docs = [format_query(doc, g.instruction) if g.prompt_documents else doc for g in groups for doc in g.documents]
    return queries, docs


def train_batch(net, tokenizer, batch: Batch, config: Config, device, ranks: Ranks, scale: float,
                after_backward=lambda: None) -> BatchResult:
    """Accumulate `scale` x the gradient of the batch loss into the trainable parameters' .grad
    (`after_backward` runs after each backward call).

    Under torchrun each rank encodes every world-th group; all ranks' embeddings are gathered, so every
    query sees every document, and each rank back-propagates the full loss through its own rows
    only: summing the ranks' gradients gives the single-process gradient."""
    import torch

    from jobs import gradcache
    from jobs.loss import LOSSES, batch_layout

    mine = batch.groups[ranks.rank::ranks.world]
    layout = batch_layout(batch, ranks.world)
    loss_fn = LOSSES[config.kd_loss]

    def gathered_loss(q, d):
        return loss_fn(ranks.gather_rows(q)[0], ranks.gather_rows(d)[0], layout, config.temperature)

    if not mine:  # a batch smaller than the world: this rank only takes part in the collectives
        q = d = torch.zeros((0, net.config.hidden_size), device=device, requires_grad=True)
        loss = gathered_loss(q, d)
        (loss * scale).backward()
        return BatchResult(loss.item(), 0, 0, False)
    query_texts, doc_texts = texts(mine)
    parts = [gradcache.tokenize_sorted(tokenizer, query_texts, config.query_max_len, config.mini_batch_size, device),
             gradcache.tokenize_sorted(tokenizer, doc_texts, config.doc_max_len, config.mini_batch_size, device)]
    loss, cached = gradcache.backward(net, parts, gathered_loss, scale, device, after_backward)
    return BatchResult(loss, sum(p.tokens for p in parts), sum(p.padded_tokens for p in parts), cached)


def gradient_scale(in_batch: bool, in_batch_grad_scale: float, batches: int) -> float:
    """What a batch's loss gradient is multiplied by: 1 / batches in the step, and for a batch with in-batch
    negatives --in-batch-grad-scale (the authors' 8-rank DDP average: jobs.recipe.IN_BATCH_GRAD_SCALE)."""
    return (in_batch_grad_scale if in_batch else 1.0) / batches


# --- bookkeeping --------------------------------------------------------------------------------

@dataclass
class Meter:
    """What this process has trained since it started (a resume starts a new meter)."""
    world: int
    started: float = field(default_factory=time.monotonic)
    tokens: int = 0
    padded_tokens: int = 0
    flops: float = 0.0
    steps: int = 0

    def add(self, tokens: int, padded_tokens: int, flops: float) -> None:
        self.tokens += tokens
        self.padded_tokens += padded_tokens
        self.flops += flops

    def rates(self, step: int, total_steps: int) -> dict:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.tokens / elapsed
        return {"tokens_per_s": round(rate, 1), "tokens_per_s_per_gpu": round(rate / self.world, 1),
                "tflops_per_gpu": float(f"{self.flops / elapsed / self.world / 1e12:.4g}"), "gpus": self.world,
                "padding": round(self.padded_tokens / self.tokens, 4) if self.tokens else None,
                "eta_s": round(elapsed / self.steps * (total_steps - step), 1) if self.steps else None}


def save_checkpoint(store, ranks: Ranks, step: int, params: dict, optimizer, state: dict, identity: dict,
                    progress: dict, log) -> float:
    """Every rank's RNG state goes in (dropout masks differ per rank); rank 0 writes, the others wait.
    Returns the seconds it took."""
    from jobs.checkpoint import rng_state

    t0 = time.monotonic()
    state = state | {"rng": rng_state()}
    if ranks.world > 1:
        state["rng_ranks"] = ranks.gather_objects(state["rng"])
    if ranks.is_main:
        size = store.save(step, params, optimizer.state_dict(), state, identity, progress)
        log(f"checkpoint at step {step}: {size / 1e6:.1f} MB in {time.monotonic() - t0:.2f} s", file=sys.stderr,
            flush=True)
    ranks.barrier()
    return time.monotonic() - t0


# --- the run ------------------------------------------------------------------------------------

def train(config: Config, stop: StopRequest, ranks: Ranks) -> int:
    import torch

    from jobs import export
    from jobs.checkpoint import CheckpointStore, set_rng_state
    from jobs.embedder import pick_device_dtype
    from jobs.loss import batch_layout
    from jobs.optim import Float32Grads, warmup_decay

    # the run: its config, data and identity
    check_config(config)
    if storage.exists(done_uri(config.output)):
        if ranks.is_main:
            print(f"{config.output} is already trained", file=sys.stderr)
        return 0
    if not storage.exists(config.model) and not storage.looks_like_hub_id(config.model):
        raise BadInput(f"model {config.model} not found; give a model directory, fsspec URI or hub id")
    device, _ = pick_device_dtype(ranks.device_name())
    base_path = local_model_path(config)
    model_shape = model_config(base_path)
    config, boom = resolve(config, device.type, model_shape)
    try:
        bag = build_bag(config)
    except BadData as exc:
        raise BadInput(str(exc)) from None
    per_epoch, total_steps = schedule(bag, config)
    identity = config.identity() | {"bag_records": len(bag), "bag_sha256": records_digest(bag)}
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

    # the model, the optimizer, the schedule; then the checkpoint, if there is one
    torch.manual_seed(config.seed)
    tokenizer, net, residuals = load_trainable(config, device, getattr(torch, config.dtype))
    params = trainable_tensors(net)
    optimizer = make_optimizer(config, params, residuals)
    del residuals
    grads = Float32Grads(params.values())
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)  # transformers' get_warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        warmup_decay, warmup_steps=warmup_steps, total_steps=total_steps, warmup=config.warmup))
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

    # the loop: one optimizer step per iteration
    n_params = recipe.parameter_count(model_shape)
    meter = Meter(ranks.world)
    last_save_time, last_report_time, save_seconds, saved_step, cache = meter.started, meter.started, None, step, {}
    progress, state = {}, {}  # the last finished step's, as a checkpoint records it

    def save_fits() -> bool:  # a save on SIGTERM must end before the SIGKILL that follows it
        estimate = save_seconds if save_seconds is not None else sum(
            p.numel() * p.element_size() * 3 for p in params.values()) / DISK_BYTES_PER_SECOND
        return time.monotonic() - stop.at + estimate < config.sigterm_grace_seconds - 1.0

    while step < total_steps:
        batches = step_groups(bag, config, step, per_epoch, cache)
        step_loss = 0.0
        for index, batch in enumerate(batches):
            if stop.signal and ranks.world == 1:  # mid-step: the partial gradient is lost; the last checkpoint stands
                if index == 0 and step > saved_step and save_fits():  # between steps (it came during the last
                    # one's save or report): nothing of this step is done, the finished steps are saved as they are
                    save_checkpoint(store, ranks, step, params, optimizer, state, identity, progress, log)
                    store.flush()  # a remote store's upload runs in the background: done before the exit
                raise Interrupted(stop.signal)
            scale = gradient_scale(batch_layout(batch, 1).in_batch, config.in_batch_grad_scale, len(batches))
            result = train_batch(net, tokenizer, batch, config, device, ranks, scale, grads.collect)
            step_loss += result.loss / len(batches)
            tokens, padded = int(ranks.total(result.tokens)), int(ranks.total(result.padded_tokens))
            tokens_seen += tokens
            meter.add(tokens, padded, padded * recipe.train_flops_per_token(
                n_params, config.method, gradient_checkpointing=config.gradient_checkpointing,
                cached_passes=result.cached))
        ranks.sum_(grads.sums.values())
        grads.clip_(recipe.COMMON["max_grad_norm"])
        if config.optimizer == "torch-adamw":
            grads.to_grad()
            optimizer.step()
        else:
            optimizer.step(grads=grads.sums)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        grads.zero_()
        step, meter.steps, loss_value = step + 1, meter.steps + 1, step_loss
        rates = meter.rates(step, total_steps)
        log(f"step {step}/{total_steps} loss {loss_value:.4f} lr {scheduler.get_last_lr()[0]:.2e} "
            f"{rates['tokens_per_s']:,.0f} tok/s {rates['tflops_per_gpu']:.3g} TFLOP/s/GPU "
            f"ETA {duration(rates['eta_s'])}", file=sys.stderr, flush=True)

        wall = wall_before + time.monotonic() - meter.started
        progress = {"step": step, "total_steps": total_steps, "tokens_seen": tokens_seen, "loss": loss_value,
                    "wall": wall, "checkpoint_step": step, "memory": {"ranks": [memory.usage(device)]}} | rates
        state = {"scheduler": scheduler.state_dict(), "tokens_seen": tokens_seen, "loss": loss_value, "wall_s": wall}
        if ranks.any(stop.signal is not None):  # every rank stops at the same step
            if step < total_steps and ranks.any(ranks.is_main and save_fits()):
                save_checkpoint(store, ranks, step, params, optimizer, state, identity, progress, log)
                store.flush()  # a remote store's upload runs in the background: done before the exit
            raise Interrupted(stop.signal or "SIGTERM (another rank)")
        if step < total_steps and (step % config.save_every_steps == 0 or ranks.any(  # ranks' clocks differ
                time.monotonic() - last_save_time >= 60 * config.save_every_minutes)):
            save_seconds = save_checkpoint(store, ranks, step, params, optimizer, state, identity, progress, log)
            saved_step, last_save_time = step, time.monotonic()
        elif ranks.is_main and time.monotonic() - last_report_time >= PROGRESS_EVERY_S:
            store.report_progress(progress | {"checkpoint_step": saved_step})
            last_report_time = time.monotonic()

    # the output: float32 weights, sentence-transformers files, model card; DONE last
    wall = wall_before + time.monotonic() - meter.started
    used = ranks.gather_objects(memory.usage(device))  # every rank's peaks; rank 0's again after the output
    if not ranks.is_main:
        ranks.barrier()  # rank 0 writes the output and DONE
        return 0
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    rates = meter.rates(step, total_steps)
    done = {"steps": step, "tokens_seen": tokens_seen, "final_loss": loss_value, "wall_s": round(wall, 3),
            "tokens_per_s": rates["tokens_per_s"], "tokens_per_s_per_gpu": rates["tokens_per_s_per_gpu"],
            "tflops_per_gpu": rates["tflops_per_gpu"], "padding": rates["padding"], "gpus": ranks.world,
            "padded_tokens": meter.padded_tokens, "flops": meter.flops,  # this process's, like tflops_per_gpu
            "flops_formula": "jobs.recipe.train_flops_per_token x padded tokens", "parameters": n_params,
            "peak_memory_bytes": peak, "peak_memory_kind": "cuda allocated" if device.type == "cuda" else "process rss",
            "bag_records": len(bag), "bag_sha256": identity["bag_sha256"], "recipe_source": boom["source"],
            "config": identity}
    done["bag_draws"] = write_bag_lines(bag, config.output)  # bag_lines.txt.gz; the draw's seed, for the card
    export.write_output(config, base_path, net, tokenizer, optimizer, done)
    done["memory"] = {"ranks": [memory.usage(device), *used[1:]]}  # RSS with the float32 output built
    store.flush()
    storage.write_json_atomic(done_uri(config.output), done)
    if config.checkpoint is None:
        store.remove()  # the default checkpoints live inside the output and are no use once it is final
    print(json.dumps(done), flush=True)
    ranks.barrier()
    return 0


def main(argv: list[str] | None = None) -> int:
    def body(stop: StopRequest) -> int:
        config = parse_args(argv, __doc__.split("\n\n")[0])
        os.makedirs(config.cache_dir, exist_ok=True)
        ranks = Ranks()
        try:
            return train(config, stop, ranks)
        finally:
            ranks.close()

    return run_job(body, "rerun the same command to resume from the last checkpoint")


if __name__ == "__main__":
    raise SystemExit(leave(main()))
