"""Fine-tune one BOOM bag: a Qwen3 embedder trained on a seeded, task-stratified fraction of a corpus.

    python -m jobs.train_bag --model MODEL --data URI --fraction F --seed N --output URI
        [--checkpoint URI] [--method full|lora] [--max-steps N] [--epochs N] [--batch-size N]
        [--grad-accum N] [--lr X] [--temperature T] [--query-max-len N] [--doc-max-len N]
        [--save-every-steps N] [--save-every-minutes N] [--replay-data URI --replay-fraction F]
    python -m jobs.train_bag --spec FILE.json      # the same fields as JSON (flag names with _)

The recipe (arXiv 2602.05787 and the BOOM model cards): last-token pooling of a Qwen3 decoder with
left padding and an appended end-of-text token, L2-normalized; queries carry
`Instruct: {instruction}\\nQuery:`, documents nothing (jobs.embedder). Loss: InfoNCE with temperature
T over the batch's documents, i.e. for query i with positive p_i,
    L_i = -log( exp(s(q_i, p_i)/T) / sum_{d in D} exp(s(q_i, d)/T) ),
D = every positive and hard negative of the batch, s = cosine. Each batch comes from one task, so
the in-batch negatives are of the same kind. AdamW, linear warmup (5 % of steps) then cosine decay
to 0, gradient clipping at 1.0, gradient checkpointing. Defaults: temperature 0.02, lr 1e-5 (full)
or 1e-4 (LoRA r=16, alpha=32, dropout 0.05 on every projection), batch 32, one epoch. With
--grad-accum k each optimizer step sums k task-homogeneous batches; negatives stay within a batch.

Incremental stage: --replay-data OLD --replay-fraction 0.4 adds a seeded, task-stratified 40 %
sample of the old corpus to the bag; --model may then be the previous merged model.

Checkpoints (jobs.checkpoint) every --save-every-steps and every --save-every-minutes, and on SIGTERM
when the save fits before the SIGKILL that follows it (RunPod: 5 s; --sigterm-grace-seconds);
rerunning the same command resumes from the newest one and, on CPU, ends with bitwise the same
weights as an uninterrupted run. The output directory loads with SentenceTransformer(path) and
AutoModel.from_pretrained(path) (safetensors); LoRA runs also keep the adapter in adapter/. A DONE
marker (JSON: steps, tokens, final loss, wall time, tokens/s, peak memory, bag hash) is written last;
a rerun with DONE present exits 0 at once.

Several GPUs: `torchrun --nproc_per_node N -m jobs.train_bag` with the same flags. Each rank encodes
its share of every batch, the embeddings are gathered so the loss still spans the whole batch, and
gradients are summed (jobs.distributed); rank 0 writes checkpoints (with every rank's RNG state)
and the output. The result equals a single-process run up to float summation order.

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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from jobs import storage
from jobs.data import BadData, Record, content_hash, epoch_batches, read_corpus, stratified_sample
from jobs.distributed import Group
from jobs.lifecycle import BadInput, Interrupted, StopRequest, run_job

DONE = "DONE"
WARMUP_FRACTION = 0.05
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
DEFAULT_LR = {"full": 1e-5, "lora": 1e-4}
DISK_BYTES_PER_SECOND = 200e6  # save-time guess before the first measured save


@dataclass(frozen=True)
class Config:
    model: str
    data: str
    fraction: float
    seed: int
    output: str
    checkpoint: str | None = None
    method: str = "full"
    max_steps: int | None = None
    epochs: int = 1
    batch_size: int = 32
    grad_accum: int = 1
    lr: float | None = None
    temperature: float = 0.02
    query_max_len: int = 512
    doc_max_len: int = 512
    save_every_steps: int = 500
    save_every_minutes: float = 30.0
    replay_data: str | None = None
    replay_fraction: float | None = None
    sigterm_grace_seconds: float = 5.0
    gradient_checkpointing: bool = True
    cache_dir: str = str(Path.home() / ".cache" / "planner-jobs")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

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
    if config.method not in DEFAULT_LR:
        problems.append(f"--method must be full or lora, got {config.method!r}")
    for name in ("epochs", "batch_size", "grad_accum", "save_every_steps"):
        if getattr(config, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    if config.batch_size < 2:
        problems.append("--batch-size must be at least 2 (in-batch negatives need company)")
    if config.max_steps is not None and config.max_steps < 1:
        problems.append("--max-steps must be at least 1")
    if config.learning_rate <= 0 or config.temperature <= 0 or config.save_every_minutes <= 0:
        problems.append("--lr, --temperature and --save-every-minutes must be positive")
    if config.query_max_len < 8 or config.doc_max_len < 8:
        problems.append("--query-max-len and --doc-max-len must be at least 8")
    if (config.replay_data is None) != (config.replay_fraction is None):
        problems.append("--replay-data and --replay-fraction go together")
    if config.replay_fraction is not None and not 0 < config.replay_fraction <= 1:
        problems.append(f"--replay-fraction must be in (0, 1], got {config.replay_fraction}")
    if problems:
        raise BadInput("; ".join(problems))


# --- the bag ------------------------------------------------------------------------------------

def build_bag(config: Config) -> list[Record]:
    records = read_corpus(config.data)
    bag = [records[i] for i in stratified_sample(records, config.fraction, config.seed)]
    if config.replay_data:
        old = read_corpus(config.replay_data)
        bag += [old[i] for i in stratified_sample(old, config.replay_fraction, config.seed, salt="replay")]
    return bag


def schedule(bag: list[Record], config: Config) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps)."""
    per_epoch = math.ceil(len(epoch_batches(bag, config.batch_size, config.seed, 0)) / config.grad_accum)
    return per_epoch, config.max_steps or config.epochs * per_epoch


def step_batches(bag: list[Record], config: Config, step: int, per_epoch: int, cache: dict) -> list[list[Record]]:
    """The batches of optimizer step `step`: a pure function of the step, so a resume picks up exactly here."""
    epoch, index = divmod(step, per_epoch)
    if epoch not in cache:
        cache.clear()
        cache[epoch] = epoch_batches(bag, config.batch_size, config.seed, epoch)
    batches = cache[epoch][index * config.grad_accum:(index + 1) * config.grad_accum]
    return [[bag[i] for i in batch] for batch in batches]


# --- model and loss -----------------------------------------------------------------------------

def load_trainable(config: Config, device, dtype):
    from jobs.embedder import load_model, load_tokenizer

    model_path = storage.cached_local_copy(config.model, Path(config.cache_dir)) if storage.is_remote(
        config.model) else config.model
    tokenizer = load_tokenizer(model_path)
    net = load_model(model_path, device=device, dtype=dtype)
    net.config.use_cache = False
    if config.gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        if config.gradient_checkpointing:
            net.enable_input_require_grads()
        net = get_peft_model(net, LoraConfig(**LORA))
    net.train()
    return tokenizer, net


def trainable_tensors(net) -> dict:
    return {name: p for name, p in net.named_parameters() if p.requires_grad}


def info_nce(net, tokenizer, batch: list[Record], config: Config, device, group: Group):
    """Mean InfoNCE loss of one task-homogeneous batch, and how many real tokens this rank encoded.

    Under torchrun each rank encodes every world-th record of the batch (its queries, positives and
    negatives); the embeddings of all ranks are gathered, so every query still sees every document of
    the batch, and each rank back-propagates the same full loss through its own rows only: summing
    the ranks' gradients gives the single-process gradient."""
    import torch
    import torch.nn.functional as F

    from jobs.embedder import embed, format_query, tokenize

    mine = batch[group.rank::group.world]
    if mine:
        queries = tokenize(tokenizer, [format_query(r.query, r.instruction) for r in mine], config.query_max_len)
        docs = tokenize(tokenizer, [r.positive for r in mine] + [n for r in mine for n in r.negatives],
                        config.doc_max_len)
        q, d = embed(net, queries.to(device)), embed(net, docs.to(device))
        tokens = int(queries["attention_mask"].sum() + docs["attention_mask"].sum())
    else:  # a batch smaller than the world: this rank only contributes to the collectives
        q = d = torch.zeros((0, net.config.hidden_size), device=device)
        tokens = 0
    q, query_counts = group.gather_rows(q)
    d, doc_counts = group.gather_rows(d)
    starts = [sum(doc_counts[:r]) for r in range(group.world)]  # each rank's documents begin with its positives
    labels = torch.cat([torch.arange(n, device=device) + start for n, start in zip(query_counts, starts)])
    loss = F.cross_entropy(q @ d.T / config.temperature, labels)
    return loss, tokens


# --- the run ------------------------------------------------------------------------------------

def train(config: Config, stop: StopRequest, group: Group) -> int:
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from jobs.checkpoint import CheckpointStore, rng_state, set_rng_state
    from jobs.embedder import pick_device_dtype

    check_config(config)
    if storage.exists(storage.join(config.output, DONE)):
        if group.is_main:
            print(f"{config.output} is already trained", file=sys.stderr)
        return 0
    if not storage.exists(config.model) and not _looks_like_hub_id(config.model):
        raise BadInput(f"model {config.model} not found; give a model directory, fsspec URI or hub id")
    try:
        bag = build_bag(config)
    except BadData as exc:
        raise BadInput(str(exc)) from None
    per_epoch, total_steps = schedule(bag, config)
    identity = config.identity() | {"bag_records": len(bag), "bag_sha256": content_hash(bag)}
    if group.world > 1:
        identity["world_size"] = group.world  # the batch is split across ranks: a different float summation
    log = print if group.is_main else (lambda *args, **kwargs: None)
    log(f"bag: {len(bag)} records (sha256 {identity['bag_sha256'][:12]}), {total_steps} steps"
        + (f", {group.world} ranks" if group.world > 1 else ""), file=sys.stderr)

    cache_dir = Path(config.cache_dir) / (f"rank{group.rank}" if group.world > 1 else "")
    store = CheckpointStore(config.checkpoint_uri, cache_dir)
    checkpoint = store.load()
    if checkpoint is not None and checkpoint.identity != identity:
        changed = sorted(k for k in identity if checkpoint.identity.get(k) != identity[k])
        raise BadInput(f"{config.checkpoint_uri} holds a checkpoint of a different run ({', '.join(changed)} "
                       "differ); rerun the same command or choose a new --checkpoint/--output")

    torch.manual_seed(config.seed)
    device, dtype = pick_device_dtype(group.device_name())
    tokenizer, net = load_trainable(config, device, dtype)
    params = trainable_tensors(net)
    optimizer = torch.optim.AdamW(params.values(), lr=config.learning_rate, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, round(WARMUP_FRACTION * total_steps)), total_steps)
    step, tokens_seen, loss_value, wall_before = 0, 0, float("nan"), 0.0
    if checkpoint is not None:
        with torch.no_grad():
            for name, tensor in checkpoint.tensors.items():
                params[name].copy_(tensor)
        optimizer.load_state_dict(checkpoint.optimizer)
        scheduler.load_state_dict(checkpoint.state["scheduler"])
        set_rng_state(checkpoint.state["rng_ranks"][group.rank] if group.world > 1 else checkpoint.state["rng"])
        step, tokens_seen = checkpoint.step, checkpoint.state["tokens_seen"]
        loss_value, wall_before = checkpoint.state["loss"], checkpoint.state["wall_s"]
        log(f"resuming from step {step} of {total_steps}", file=sys.stderr)
    del checkpoint

    started = time.monotonic()
    last_save_time, save_seconds = started, None
    tokens_this_run, cache = 0, {}

    def save() -> None:
        """Every rank's RNG state goes in (dropout masks differ per rank); rank 0 writes, the others wait."""
        nonlocal last_save_time, save_seconds
        t0 = time.monotonic()
        wall = wall_before + t0 - started
        state = {"scheduler": scheduler.state_dict(), "rng": rng_state(), "tokens_seen": tokens_seen,
                 "loss": loss_value, "wall_s": wall}
        if group.world > 1:
            state["rng_ranks"] = group.gather_objects(state["rng"])
        if group.is_main:
            size = store.save(step, params, optimizer.state_dict(), state, identity,
                              {"step": step, "total_steps": total_steps, "tokens_seen": tokens_seen,
                               "loss": loss_value, "wall": wall})
            log(f"checkpoint at step {step}: {size / 1e6:.1f} MB in {time.monotonic() - t0:.2f} s", file=sys.stderr,
                flush=True)
        group.barrier()
        last_save_time, save_seconds = time.monotonic(), time.monotonic() - t0

    def save_fits() -> bool:
        estimate = save_seconds if save_seconds is not None else sum(
            p.numel() * p.element_size() * 3 for p in params.values()) / DISK_BYTES_PER_SECOND
        return time.monotonic() - stop.at + estimate < config.sigterm_grace_seconds - 1.0

    while step < total_steps:
        batches = step_batches(bag, config, step, per_epoch, cache)
        step_loss = 0.0
        for batch in batches:
            if stop.signal and group.world == 1:  # mid-step: the partial gradient is worthless, the last checkpoint stands
                raise Interrupted(stop.signal)
            loss, tokens = info_nce(net, tokenizer, batch, config, device, group)
            (loss / len(batches)).backward()
            step_loss += loss.item() / len(batches)
            tokens = int(group.total(tokens))
            tokens_this_run += tokens
            tokens_seen += tokens
        group.sum_gradients(params.values())
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step, loss_value = step + 1, step_loss
        elapsed = time.monotonic() - started
        log(f"step {step}/{total_steps} loss {loss_value:.4f} lr {scheduler.get_last_lr()[0]:.2e} "
            f"{tokens_this_run / max(elapsed, 1e-9):,.0f} tok/s", file=sys.stderr, flush=True)
        if group.any(stop.signal is not None):  # every rank stops at the same step
            if step < total_steps and group.any(group.is_main and save_fits()):
                save()
            raise Interrupted(stop.signal or "SIGTERM (another rank)")
        if step < total_steps and (step % config.save_every_steps == 0 or group.any(  # ranks' clocks differ
                time.monotonic() - last_save_time >= 60 * config.save_every_minutes)):
            save()

    wall = wall_before + time.monotonic() - started
    if not group.is_main:
        group.barrier()  # rank 0 writes the output and DONE
        return 0
    write_output(config, net, tokenizer)
    store.flush()
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    done = {"steps": step, "tokens_seen": tokens_seen, "final_loss": loss_value, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens_this_run / max(time.monotonic() - started, 1e-9), 1),
            "peak_memory_bytes": peak, "peak_memory_kind": "cuda allocated" if device.type == "cuda" else "process rss",
            "bag_records": len(bag), "bag_sha256": identity["bag_sha256"], "config": identity}
    storage.write_json_atomic(storage.join(config.output, DONE), done)
    if config.checkpoint is None:
        store.remove()  # the default checkpoints live inside the output and are no use once it is final
    print(json.dumps(done), flush=True)
    group.barrier()
    return 0


def _looks_like_hub_id(model: str) -> bool:
    return "://" not in model and model.count("/") == 1 and not model.startswith((".", "/", "~"))


def write_output(config: Config, net, tokenizer) -> None:
    """The trained embedder as a sentence-transformers + transformers directory (and the adapter for LoRA)."""
    import tempfile

    from jobs.embedder import write_sentence_transformers_files

    remote = storage.is_remote(config.output)
    staging = Path(tempfile.mkdtemp(prefix="train-bag-", dir=config.cache_dir)) if remote else storage.local_path(
        config.output)
    staging.mkdir(parents=True, exist_ok=True)
    if config.method == "lora":
        net.save_pretrained(str(staging / "adapter"), safe_serialization=True)
        net = net.merge_and_unload()
    net.config.use_cache = True
    net.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    write_sentence_transformers_files(staging, hidden_size=net.config.hidden_size,
                                      max_seq_length=max(config.query_max_len, config.doc_max_len))
    if remote:
        storage.upload_tree(staging, config.output)


# --- command line -------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> Config:
    parser = argparse.ArgumentParser(prog="python -m jobs.train_bag", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, help="a JSON file with these fields (flag names with underscores)")
    parser.add_argument("--model", help="base model: directory, fsspec URI or hub id (Qwen/Qwen3-4B)")
    parser.add_argument("--data", help="training corpus JSONL (local path or fsspec URI)")
    parser.add_argument("--fraction", type=float, help="share of each task to train on, in (0, 1]")
    parser.add_argument("--seed", type=int, help="seeds the bag, the batch order and the initialisation")
    parser.add_argument("--output", help="output directory or fsspec URI")
    parser.add_argument("--checkpoint", help="checkpoint URI (default: OUTPUT/.checkpoints)")
    parser.add_argument("--method", choices=sorted(DEFAULT_LR))
    for name, kind in (("max-steps", int), ("epochs", int), ("batch-size", int), ("grad-accum", int), ("lr", float),
                       ("temperature", float), ("query-max-len", int), ("doc-max-len", int),
                       ("save-every-steps", int), ("save-every-minutes", float), ("replay-fraction", float),
                       ("sigterm-grace-seconds", float)):
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
        group = Group()
        try:
            return train(config, stop, group)
        finally:
            group.close()

    return run_job(body, "rerun the same command to resume from the last checkpoint")


if __name__ == "__main__":
    raise SystemExit(main())
