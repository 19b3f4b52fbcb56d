"""`python -m jobs.train_bag` against sentence-transformers training: the same model, data and steps, one run.

    .venv/bin/python bench/bench_train_bag.py cpu [--steps 30] [--rounds 2] [--peers auto|trainer|loop ...]
    python bench/bench_train_bag.py gpu [--methods lora full] [--batch-sizes 4 8 16] [--out bench/out/train-gpu.json]
    python bench/bench_train_bag.py gpu --smoke        # the GPU mode's code on a tiny model, any device
    .venv/bin/python bench/bench_train_bag.py padding  # padded tokens per step, sorted chunks vs not
    .venv/bin/python bench/bench_train_bag.py overlap  # how much of one bag lies in another, from bag_lines.txt.gz

cpu: a small random Qwen3 (hidden 384, 6 layers, intermediate 1024, float32, SDPA), the toy 3-task
corpus (jobs.toy, 160 records a task, one hard negative each), batch 16, lr 1e-5, temperature 0.02,
`--steps` optimizer steps, torch threads = CPU cores (OMP_NUM_THREADS). Every run is its own process:
  ours   `python -m jobs.train_bag ... --save-every-steps 1000000`, with gradient checkpointing (its
         default) and with --no-gradient-checkpointing;
  peer   sentence-transformers on the same model directory with MultipleNegativesRankingLoss(scale=50)
         (= InfoNCE at T = 0.02 over in-batch positives and hard negatives) on (anchor = "Instruct:
         {instruction}\\nQuery:{query}", positive, negative) triplets, fed exactly our batches in our
         order (task-homogeneous), AdamW (weight decay 0.01), 5 % linear warmup then cosine, clipping
         at 1.0, with and without gradient checkpointing. Two peers:
           trainer  SentenceTransformerTrainer (needs the `datasets` package; a sequential batch sampler
                    over the rows laid out in our batch order), a TrainerCallback prints the step lines;
           loop     a minimal manual loop: model.preprocess per column, the loss module's forward
                    (the model's forward), backward, clip, AdamW, scheduler.
         `auto` (default) is `trainer` when `datasets` imports, else `loop`. (`model.fit` is no
         alternative: in sentence-transformers 6 it wraps the trainer and raises ImportError without
         `datasets`.) To get `datasets` without touching the project venv:
             pip install --target DIR --no-deps datasets 'dill<0.4.2' xxhash 'multiprocess<0.70.20' pandas
             PYTHONPATH=DIR .venv/bin/python bench/bench_train_bag.py cpu --peers trainer loop
Timing rule, the same for every run: each process prints one line to stderr after every optimizer step
(ours: its own "step N/T ..." line; peers: an equivalent line); this script timestamps each line as it
arrives and reports steps/s = (N - 1) / (t_N - t_1) and tokens/s = real (non-padding) tokens of steps
2..N / (t_N - t_1). So the timing covers, per step: tokenization, forward, backward, clipping,
optimizer and scheduler steps (and for the trainer its dataloader, collator and callbacks); it leaves out
process start, model loading, the first step (warm-up) and writing the output. Rounds alternate the order
of the runs; the best round of each is compared.
Then checkpoint cost: ours with --save-every-steps 5 (full fine-tuning and --method lora; a LoRA run
without saves as its baseline): seconds per save as the job reports it, the loop time added per save,
and the bytes of one checkpoint directory (trainable tensors, AdamW state, scheduler/RNG state).

gpu: a randomly initialised model with Qwen3-4B's exact config (vocab 151936, hidden 2560, 36 layers,
tied embeddings) in bfloat16, documents of exactly `--doc-tokens` (512) tokens, queries of about 16
words plus the instruction. For each --method and --batch-size, `python -m jobs.train_bag` (gradient
checkpointing on, its default) runs `--steps` steps; reported: tokens/s by the rule above, MFU =
6 x non-embedding params x tokens/s / peak dense bf16 FLOP/s (the embedding lookup does no matmul; the
recomputation of gradient checkpointing and attention's own FLOPs are not counted), for LoRA also
4 x params (forward + activation gradients, no weight gradients) shown beside the 6 x figure, and
peak VRAM = torch.cuda.max_memory_allocated of the job (from its DONE marker). Writes JSON to --out and
prints Markdown. Needs no network. The sentence-transformers peer is not run in this mode.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from bench_encode import QWEN3_4B, build_model, non_embedding_parameters, peak_tflops  # noqa: E402

from jobs.protocol import DONE_MARKER  # noqa: E402
from jobs.toy import WORDS, write_toy_corpus  # noqa: E402

SMALL = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=4096)
SMOKE = dict(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True)
STEP_LINE = re.compile(r"^step (\d+)/(\d+)\b.*?(?:tokens (\d+))?$")
SAVE_LINE = re.compile(r"^checkpoint at step (\d+): ([\d.]+) MB in ([\d.]+) s")
THREADS_LINE = re.compile(r"^threads (\d+)")
NO_SAVES = 1_000_000


# --- data and token counts -------------------------------------------------------------------

def job_config(model_dir: Path, data: Path, args, **overrides):
    from jobs.train_bag import Config

    fields = dict(model=str(model_dir), data=str(data), fraction=1.0, seed=0, output="unused",
                  batch_size=args.batch_size, max_steps=args.steps, query_max_len=args.query_max_len,
                  doc_max_len=args.doc_max_len, temperature=args.temperature)
    fields.update(overrides)
    return Config(**fields)


def planned_batches(config) -> list[list]:
    """The batch of each optimizer step of jobs.train_bag with this config (grad-accum 1), in its order."""
    from jobs.data import build_bag, schedule, step_batches

    bag = build_bag(config)
    per_epoch, total = schedule(bag, config)
    cache: dict = {}
    return [step_batches(bag, config, step, per_epoch, cache)[0] for step in range(total)]


def tokens_per_step(model_dir: Path, batches: list[list], query_max_len: int, doc_max_len: int) -> list[int]:
    """Real (attention-mask) tokens of each step as jobs.train_bag encodes them."""
    from jobs.embedder import load_tokenizer, tokenize
    from jobs.prompt import format_query

    tokenizer = load_tokenizer(model_dir)
    counts = []
    for batch in batches:
        queries = tokenize(tokenizer, [format_query(r.query, r.instruction) for r in batch], query_max_len)
        docs = tokenize(tokenizer, [r.positive for r in batch] + [n for r in batch for n in r.negatives], doc_max_len)
        counts.append(int(queries["attention_mask"].sum() + docs["attention_mask"].sum()))
    return counts


def write_long_corpus(path: Path, *, records_per_task: int, doc_tokens: int, query_words: int, seed: int = 0,
                      negatives: int = 1) -> Path:
    """3 tasks, `negatives` hard negatives each; documents longer than `doc_tokens` (truncated to it by the job)."""
    rng = random.Random(seed)
    words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    tasks = {"animals": "Given an animal, find a passage about it", "food": "Given a food, retrieve a passage "
             "mentioning it", "cities": "Given a city, retrieve a passage about it"}
    lines = []
    for task, instruction in tasks.items():
        for _ in range(records_per_task):
            lines.append({"query": words(query_words), "positive": words(doc_tokens + 64),
                          "negatives": [words(doc_tokens + 64) for _ in range(negatives)], "task": task,
                          "instruction": instruction})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# --- running one training process and reading its step lines ---------------------------------

def child_env() -> dict:
    threads = str(os.cpu_count() or 1)
    return os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
                         "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_timed(command: list[str], log: Path) -> dict:
    """Run a training process, timestamp each step line on arrival; returns the timings and what it printed."""
    started = time.perf_counter()
    times: list[float] = []
    cumulative_tokens: list[int] = []
    saves: list[tuple[int, float, float]] = []
    threads = None
    with open(log, "w") as keep, subprocess.Popen(command, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.PIPE, text=True, bufsize=1) as process:
        for line in process.stderr:
            now = time.perf_counter()
            keep.write(line)
            line = line.rstrip("\n")
            if match := STEP_LINE.match(line):
                times.append(now)
                if match.group(3) is not None:
                    cumulative_tokens.append(int(match.group(3)))
            elif match := SAVE_LINE.match(line):
                saves.append((int(match.group(1)), float(match.group(2)), float(match.group(3))))
            elif match := THREADS_LINE.match(line):
                threads = int(match.group(1))
        code = process.wait()
    if code != 0 or len(times) < 2:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {code} after {len(times)} steps:\n{tail}")
    return {"times": times, "cumulative_tokens": cumulative_tokens, "saves": saves, "threads": threads,
            "process_s": time.perf_counter() - started}


def rates(run: dict, step_tokens: list[int] | None) -> dict:
    """steps/s and tokens/s from step 1's line to step N's line (so steps 2..N)."""
    times = run["times"]
    span = times[-1] - times[0]
    if run["cumulative_tokens"]:
        counted = run["cumulative_tokens"][-1] - run["cumulative_tokens"][0]
    else:
        counted = sum(step_tokens[1:len(times)])
    return {"steps": len(times), "span_s": span, "steps_per_s": (len(times) - 1) / span,
            "tokens_per_s": counted / span, "tokens_counted": counted}


def ours_command(model_dir: Path, data: Path, output: Path, args, *, method: str = "full", gc: bool = True,
                 save_every: int = NO_SAVES, checkpoint: Path | None = None, cache: Path) -> list[str]:
    command = [sys.executable, "-m", "jobs.train_bag", "--model", str(model_dir), "--data", str(data),
               "--fraction", "1", "--seed", "0", "--output", str(output), "--method", method,
               "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--temperature", str(args.temperature), "--query-max-len", str(args.query_max_len),
               "--doc-max-len", str(args.doc_max_len), "--save-every-steps", str(save_every),
               "--cache-dir", str(cache)]
    if args.lr is not None:
        command += ["--lr", str(args.lr)]
    for flag in ("group_size", "mini_batch_size", "dtype"):
        if getattr(args, flag, None) is not None:
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if not gc:
        command.append("--no-gradient-checkpointing")
    if checkpoint is not None:
        command += ["--checkpoint", str(checkpoint)]
    return command


# --- the sentence-transformers peer (runs in its own process: `peer` subcommand) --------------

def datasets_available() -> bool:
    try:
        import datasets  # noqa: F401
    except ImportError:
        return False
    return True


def run_peer(args: argparse.Namespace) -> None:
    """Train with sentence-transformers on exactly our batches; prints `step N/T loss L tokens K` lines."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import get_cosine_schedule_with_warmup

    from jobs.embedder import attention_implementation, pick_device_dtype
    from jobs.prompt import format_query

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    print(f"threads {torch.get_num_threads()}", file=sys.stderr, flush=True)
    torch.manual_seed(0)
    batches = planned_batches(job_config(Path(args.model), Path(args.data), args))
    if any(len(batch) != args.batch_size or any(len(r.negatives) != 1 for r in batch) for batch in batches):
        sys.exit("error: the peer needs every batch of exactly --batch-size records with one negative each")
    columns = [([format_query(r.query, r.instruction) for r in batch], [r.positive for r in batch],
                [r.negatives[0] for r in batch]) for batch in batches]
    device, dtype = pick_device_dtype()
    model = SentenceTransformer(args.model, device=str(device), model_kwargs={
        "dtype": dtype, "attn_implementation": attention_implementation(device)})
    lr = args.lr if args.lr is not None else 1e-5
    warmup = max(1, round(0.05 * args.steps))

    class CountingLoss(MultipleNegativesRankingLoss):
        tokens = 0

        def forward(self, sentence_features, labels):
            sentence_features = list(sentence_features)
            CountingLoss.tokens += int(sum(int(f["attention_mask"].sum()) for f in sentence_features))
            return super().forward(sentence_features, labels)

    loss_fn = CountingLoss(model, scale=1.0 / args.temperature)

    if args.kind == "trainer":
        from datasets import Dataset
        from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
        from sentence_transformers.base.sampler import DefaultBatchSampler
        from torch.utils.data import SequentialSampler
        from transformers import TrainerCallback

        def sequential(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
            return DefaultBatchSampler(SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last,
                                       valid_label_columns=valid_label_columns, generator=generator, seed=seed)

        class StepLines(TrainerCallback):
            def on_step_end(self, targs, state, control, **kwargs):
                print(f"step {state.global_step}/{args.steps} tokens {CountingLoss.tokens}", file=sys.stderr,
                      flush=True)

        rows = {"anchor": [a for c in columns for a in c[0]], "positive": [p for c in columns for p in c[1]],
                "negative": [n for c in columns for n in c[2]]}
        work = tempfile.mkdtemp(prefix="bench-train-st-")
        training_args = SentenceTransformerTrainingArguments(
            output_dir=work, max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=lr,
            weight_decay=0.01, warmup_steps=warmup, lr_scheduler_type="cosine", max_grad_norm=1.0,
            optim="adamw_torch", gradient_checkpointing=args.gc,
            gradient_checkpointing_kwargs={"use_reentrant": False} if args.gc else None,
            save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, use_cpu=device.type == "cpu", bf16=dtype == torch.bfloat16, seed=0,
            batch_sampler=sequential)
        trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=Dataset.from_dict(rows),
                                             loss=loss_fn, callbacks=[StepLines()])
        try:
            trainer.train()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return

    # the minimal manual loop
    if args.gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, args.steps)
    for step, texts in enumerate(columns, start=1):
        features = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in model.preprocess(column).items()}
                    for column in texts]
        loss = loss_fn(features, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"step {step}/{args.steps} loss {loss.item():.4f} tokens {CountingLoss.tokens}", file=sys.stderr,
              flush=True)


def peer_command(kind: str, model_dir: Path, data: Path, args, *, gc: bool) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "peer", "--kind", kind, "--model", str(model_dir),
               "--data", str(data), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--temperature", str(args.temperature), "--query-max-len", str(args.query_max_len),
               "--doc-max-len", str(args.doc_max_len)]
    if args.lr is not None:
        command += ["--lr", str(args.lr)]
    return command + (["--gc"] if gc else [])


# --- cpu ---------------------------------------------------------------------------------------

def checkpoint_bytes(directory: Path) -> dict:
    """Bytes per file of the newest complete checkpoint under `directory`, and its trainable parameter count."""
    from safetensors import safe_open

    newest = directory / (directory / "LATEST").read_text().strip()
    sizes = {f.name: f.stat().st_size for f in newest.iterdir()}
    with safe_open(str(newest / "trainable.safetensors"), "pt") as handle:
        params = sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())
    return {"files": sizes, "total": sum(sizes.values()), "trainable_params": params, "step": newest.name}


def run_cpu(args: argparse.Namespace) -> None:
    from safetensors.torch import load_file

    peers = args.peers
    if "auto" in peers:
        peers = [p for p in peers if p != "auto"] + ["trainer" if datasets_available() else "loop"]
    peers = list(dict.fromkeys(peers))
    if "trainer" in peers and not datasets_available():
        sys.exit("error: --peers trainer needs the `datasets` package (see the docstring for a side install)")
    gcs = {"both": [True, False], "on": [True], "off": [False]}[args.gc]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-train-"))
    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    try:
        model_dir = build_model(work / "model", SMALL, dtype=torch.float32, device="cpu", max_seq_length=512)
        data = write_toy_corpus(work / "corpus.jsonl", n_per_task=args.per_task)
        batches = planned_batches(job_config(model_dir, data, args))
        step_tokens = tokens_per_step(model_dir, batches, args.query_max_len, args.doc_max_len)
        params = sum(t.numel() for t in load_file(str(model_dir / "model.safetensors")).values())

        names = [("ours", gc) for gc in gcs] + [(peer, gc) for peer in peers for gc in gcs]
        runs: dict[tuple[str, bool], list[dict]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                tool, gc = name
                log = work / f"log-{tool}-{gc}-{round_}.txt"
                if tool == "ours":
                    output = work / f"out-{round_}-{gc}"
                    run = run_timed(ours_command(model_dir, data, output, args, gc=gc, cache=cache), log)
                    shutil.rmtree(output, ignore_errors=True)
                else:
                    run = run_timed(peer_command(tool, model_dir, data, args, gc=gc), log)
                result = rates(run, step_tokens) | {"process_s": run["process_s"], "threads": run["threads"]}
                runs[name].append(result)
                print(f"round {round_ + 1} {tool} gc={gc}: {result['steps_per_s']:.3f} steps/s, "
                      f"{result['tokens_per_s']:,.0f} tokens/s ({result['process_s']:.0f} s process)", file=sys.stderr)

        checkpoints = {}
        if not args.skip_checkpoints:
            for method in ("full", "lora"):
                for save_every in ((5,) if method == "full" else (NO_SAVES, 5)):
                    directory = work / f"ckpt-{method}-{save_every}"
                    output = work / f"out-ckpt-{method}-{save_every}"
                    run = run_timed(ours_command(model_dir, data, output, args, method=method, save_every=save_every,
                                                 checkpoint=directory, cache=cache), work / f"log-ckpt-{method}.txt")
                    result = rates(run, step_tokens) | {"saves": run["saves"]}
                    if save_every != NO_SAVES:
                        result["bytes"] = checkpoint_bytes(directory)
                    checkpoints[(method, save_every)] = result
                    shutil.rmtree(output, ignore_errors=True)
                    shutil.rmtree(directory, ignore_errors=True)
                    print(f"checkpoint run {method} every {save_every}: {result['steps_per_s']:.3f} steps/s, "
                          f"{len(run['saves'])} saves", file=sys.stderr)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    print_cpu(args, runs, checkpoints, params, step_tokens)


def print_cpu(args, runs, checkpoints, params, step_tokens) -> None:
    labels = {"ours": "jobs.train_bag", "trainer": "sentence-transformers SentenceTransformerTrainer",
              "loop": "sentence-transformers, minimal manual loop"}
    best = {name: max(results, key=lambda r: r["steps_per_s"]) for name, results in runs.items()}
    threads = sorted({r["threads"] for results in runs.values() for r in results if r["threads"]})
    print(f"{os.cpu_count()} CPU cores, torch {torch.__version__}, OMP_NUM_THREADS={os.cpu_count()} "
          f"(peer processes report torch threads {', '.join(map(str, threads)) or 'n/a'}); "
          f"model: random Qwen3 hidden {SMALL['hidden_size']}, {SMALL['num_hidden_layers']} layers, intermediate "
          f"{SMALL['intermediate_size']}, {params / 1e6:.1f} M params, float32, SDPA; toy corpus 3 tasks x "
          f"{args.per_task}, batch {args.batch_size} (+{args.batch_size} hard negatives), {args.steps} steps, "
          f"{sum(step_tokens[:args.steps]):,} real tokens ({sum(step_tokens[:args.steps]) / args.steps:,.0f} a step), "
          f"lr {args.lr or 1e-5:g}, T {args.temperature:g}\n")
    print("| tool | settings | best steps/s | best tokens/s | all rounds steps/s | all rounds tokens/s |\n"
          "|---|---|---:|---:|---|---|")
    for (tool, gc), results in runs.items():
        settings = ("gradient checkpointing" if gc else "no gradient checkpointing") + (
            ", MNRL scale 50" if tool != "ours" else "")
        b = best[(tool, gc)]
        print(f"| {labels[tool]} | {settings} | {b['steps_per_s']:.3f} | {b['tokens_per_s']:,.0f} | "
              f"{', '.join(format(r['steps_per_s'], '.3f') for r in results)} | "
              f"{', '.join(format(r['tokens_per_s'], ',.0f') for r in results)} |")
    print()
    for peer in dict.fromkeys(tool for tool, _ in runs if tool != "ours"):
        for gc in (True, False):
            if ("ours", gc) in best and (peer, gc) in best:
                print(f"ratio jobs.train_bag / {peer}, both {'with' if gc else 'without'} gradient checkpointing, "
                      f"steps/s: **{best[('ours', gc)]['steps_per_s'] / best[(peer, gc)]['steps_per_s']:.2f}x**\n")
        if ("ours", True) in best and (peer, False) in best:
            print(f"ratio at each tool's default (ours with, {peer} without gradient checkpointing), steps/s: "
                  f"**{best[('ours', True)]['steps_per_s'] / best[(peer, False)]['steps_per_s']:.2f}x**\n")
    if not checkpoints:
        return
    baseline = {"full": best.get(("ours", True)), "lora": checkpoints.get(("lora", NO_SAVES))}
    print("Checkpoint cost (jobs.train_bag, gradient checkpointing, --save-every-steps 5; fsync'd, atomic):\n")
    print("| method | trainable params | checkpoint MB (trainable / AdamW / state / total) | saves | "
          "s per save (job's own) | loop s added per save | steps/s with saves / without |\n"
          "|---|---:|---|---:|---:|---:|---|")
    for (method, save_every), result in checkpoints.items():
        if save_every == NO_SAVES:
            continue
        size = result["bytes"]
        files = size["files"]
        mb = lambda n: f"{n / 1e6:.2f}"  # noqa: E731
        saves = result["saves"]
        base = baseline[method]
        added = ((result["span_s"] - base["span_s"] * (result["steps"] - 1) / (base["steps"] - 1)) / len(saves)
                 if base and saves else float("nan"))
        print(f"| {method} | {size['trainable_params'] / 1e6:.2f} M | {mb(files['trainable.safetensors'])} / "
              f"{mb(files['optimizer.pt'])} / {mb(files['state.pt'])} / **{mb(size['total'])}** | {len(saves)} | "
              f"{sum(s for _, _, s in saves) / len(saves):.2f} ({', '.join(f'{s:.2f}' for _, _, s in saves)}) | "
              f"{added:.2f} | {result['steps_per_s']:.3f} / {base['steps_per_s']:.3f} |")


# --- gpu ---------------------------------------------------------------------------------------

def planner_vram_gb(model_dir: Path, method: str, batch_size: int, args, tokens_per_record: float) -> float | None:
    """The planner's VRAM estimate per GPU (planner/plan/estimate.py train_needs, Needs.vram_at) for this run
    at its gradient-cache chunk, in GiB (the planner's GB, what jobs.memory reports), for comparison."""
    try:
        from planner.plan.estimate import CorpusStats, model_shape, train_needs

        stats = CorpusStats(records=batch_size * args.steps, mean_tokens=tokens_per_record,
                            negatives=args.group_size - 1, measured=True)
        needs = train_needs(model_shape(str(model_dir)), stats, fraction=1.0, method=method, batch_size=batch_size,
                            query_max_len=args.query_max_len, doc_max_len=args.doc_max_len, max_steps=args.steps)
        return round(needs.vram_at(args.mini_batch_size), 2)
    except Exception as exc:  # noqa: BLE001 (the bench's measurements stand without the planner's figure)
        print(f"planner estimate unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def run_gpu(args: argparse.Namespace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("error: no CUDA GPU; run the gpu mode on a GPU machine, or add --smoke to check the script here")
    if args.smoke:
        args.steps, args.doc_tokens, args.batch_sizes, args.mini_batch_sizes = 3, 32, [4], [2, 4]
    config = SMOKE if args.smoke else QWEN3_4B
    args.doc_max_len, args.query_max_len = args.doc_tokens, 128
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-train-gpu-"))
    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    peak = peak_tflops(gpu, args.peak_tflops) if device == "cuda" else None
    results: dict = {"device": gpu, "torch": torch.__version__, "config": config, "doc_tokens": args.doc_tokens,
                     "steps": args.steps, "peak_bf16_tflops": peak, "gradient_checkpointing": True,
                     "group_size": args.group_size, "mini_batch_sizes": args.mini_batch_sizes, "runs": []}
    try:
        model_dir = work / "model"
        if not (model_dir / "model.safetensors").exists() and not (model_dir / "model.safetensors.index.json").exists():
            build_model(model_dir, config, dtype=torch.bfloat16, device=device, max_seq_length=args.doc_tokens)
        params = non_embedding_parameters(model_dir)
        results["non_embedding_params"] = params
        per_task = math.ceil(args.steps * max(args.batch_sizes) / 3) + max(args.batch_sizes)
        data = write_long_corpus(work / "corpus.jsonl", records_per_task=per_task, doc_tokens=args.doc_tokens,
                                 query_words=16, negatives=args.group_size - 1)
        for method, batch_size, chunk in itertools.product(args.methods, args.batch_sizes, args.mini_batch_sizes):
            args.batch_size, args.mini_batch_size = batch_size, chunk
            batches = planned_batches(job_config(model_dir, data, args))
            step_tokens = tokens_per_step(model_dir, batches, args.query_max_len, args.doc_max_len)
            output = work / f"out-{method}-{batch_size}-{chunk}"
            entry = {"method": method, "batch_size": batch_size, "mini_batch_size": chunk,
                     "tokens_per_step": sum(step_tokens) / len(step_tokens)}
            entry["planner_vram_gb"] = planner_vram_gb(model_dir, method, batch_size, args,  # shown for a failed run too
                                                       entry["tokens_per_step"] / batch_size)
            try:
                run = run_timed(ours_command(model_dir, data, output, args, method=method, cache=cache),
                                work / f"log-{method}-{batch_size}-{chunk}.txt")
                done = json.loads((output / DONE_MARKER).read_text())
                rate = rates(run, step_tokens)
                used = done["memory"]["ranks"][0]  # jobs.memory: GiB, what the planner's GB are
                entry |= rate | {"peak_memory_gb": done["peak_memory_bytes"] / 1e9,
                                 "peak_memory_kind": done["peak_memory_kind"],
                                 "peak_vram_allocated_gb": used.get("peak_vram_allocated_gb"),
                                 "peak_vram_reserved_gb": used.get("peak_vram_reserved_gb"),
                                 "job_tflops_per_gpu": done.get("tflops_per_gpu"),
                                 "job_mfu": done["tflops_per_gpu"] / peak if peak and "tflops_per_gpu" in done
                                 else None,
                                 "mfu_6n": 6 * params * rate["tokens_per_s"] / (peak * 1e12) if peak else None,
                                 "mfu_4n": (4 * params * rate["tokens_per_s"] / (peak * 1e12)
                                            if peak and method == "lora" else None)}
            except RuntimeError as exc:  # out of memory, most likely: keep going
                entry["error"] = str(exc)[-600:]
            finally:
                shutil.rmtree(output, ignore_errors=True)
            results["runs"].append(entry)
            print(f"{method} batch {batch_size} chunk {chunk}: " + (f"{entry['tokens_per_s']:,.0f} tokens/s"
                  if "error" not in entry else "failed"), file=sys.stderr)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_gpu(results)


def print_gpu(results: dict) -> None:
    peak = results["peak_bf16_tflops"]
    print(f"{results['device']}, torch {results['torch']}; {results['non_embedding_params'] / 1e6:,.1f} M "
          f"non-embedding params; documents {results['doc_tokens']} tokens; {results['steps']} steps a run; "
          f"gradient checkpointing; peak bf16 {f'{peak} TFLOP/s' if peak else 'unknown (MFU n/a)'}\n")
    print(f"group size {results.get('group_size')}, gradient-cache chunks of "
          f"{', '.join(map(str, results.get('mini_batch_sizes', [])))} sequences\n")
    print("| method | batch (queries) | chunk | tokens/step | steps/s | tokens/s | MFU (6N) | MFU (4N, LoRA) | "
          "job TFLOP/s/GPU (planner's FLOPs) | peak VRAM GiB: allocated / reserved | planner's VRAM estimate GiB | "
          "reserved / estimate |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    pct = lambda v: f"{v:.1%}" if v is not None else "n/a"  # noqa: E731
    gib = lambda v: f"{v:.2f}" if v is not None else "n/a"  # noqa: E731
    for run in results["runs"]:
        chunk = run.get("mini_batch_size")
        if "error" in run:
            print(f"| {run['method']} | {run['batch_size']} | {chunk} | {run['tokens_per_step']:,.0f} | failed | | | | | "
                  f"| {gib(run.get('planner_vram_gb'))} | |")
            continue
        reserved, planned = run.get("peak_vram_reserved_gb"), run.get("planner_vram_gb")
        measured = (f"{gib(run.get('peak_vram_allocated_gb'))} / {gib(reserved)}" if reserved is not None
                    else f"n/a ({run['peak_memory_kind']} {run['peak_memory_gb']:.2f} GB)")
        print(f"| {run['method']} | {run['batch_size']} | {chunk} | {run['tokens_per_step']:,.0f} | "
              f"{run['steps_per_s']:.3f} | {run['tokens_per_s']:,.0f} | {pct(run['mfu_6n'])} | {pct(run['mfu_4n'])} | "
              f"{run.get('job_tflops_per_gpu')} ({pct(run.get('job_mfu'))}) | {measured} | {gib(planned)} | "
              f"{f'{reserved / planned:.2f}' if reserved is not None and planned else 'n/a'} |")
    print("\nMFU counts 6 x non-embedding params per token (LoRA also 4 x: no weight gradients); gradient "
          "checkpointing's recomputed forward and attention FLOPs are not counted. Peak VRAM is the job's own "
          "report (jobs.memory: torch.cuda.max_memory_allocated / max_memory_reserved, rank 0), beside the planner's "
          "need per GPU at that chunk (Needs.vram_at): reserved above the estimate means the model under-plans.")


def run_padding(args) -> None:
    """Tokens one step's documents cost the forward (queries x group documents, chunks of --mini-batch-size),
    padding included: chunks sorted by length (jobs.gradcache), unsorted chunks, one width for the whole
    step (the job before issue 22), against the real tokens. A token count: no timing, any machine."""
    import random
    import tempfile

    from jobs.embedder import load_tokenizer, tokenize
    from jobs.gradcache import tokenize_sorted
    from tests.tiny import build_tiny_model

    tokenizer = load_tokenizer(build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-padding-")) / "model"))
    rng = random.Random(0)
    n, chunk = args.batch_size * args.group_size, args.mini_batch_size
    shapes = {"uniform 10-600 words": lambda: rng.randint(10, 600),
              "log-normal, median 60 words": lambda: int(min(2000, rng.lognormvariate(4.1, 0.8)))}
    for name, words in shapes.items():
        docs = [" ".join(rng.choice(WORDS) for _ in range(words())) for _ in range(n)]
        chunks = tokenize_sorted(tokenizer, docs, args.doc_max_len, chunk, torch.device("cpu"))
        unsorted = sum(int(tokenize(tokenizer, docs[k:k + chunk], args.doc_max_len)["input_ids"].numel())
                       for k in range(0, n, chunk))
        whole = int(tokenize(tokenizer, docs, args.doc_max_len)["input_ids"].numel())
        print(f"{name}: {n} documents, {chunks.tokens} real tokens; padded / real: sorted chunks "
              f"{chunks.padded_tokens / chunks.tokens:.3f}, unsorted chunks {unsorted / chunks.tokens:.3f}, "
              f"one width per step {whole / chunks.tokens:.3f}")


def run_overlap(args) -> None:
    """The bags of one campaign (fractions 0.2 ... 1.0, one --seed) drawn by the job's own code (jobs.data.
    build_bag) and written as each bag's bag_lines.txt.gz, read back: the share of the smaller bag's lines in
    the larger's (independent draws: the larger fraction), beside nested draws (one seed for every bag, the
    job before issue 22). A synthetic corpus of three tasks; a count, no timing, no model."""
    import json
    import random
    import tempfile

    from jobs import data
    from jobs.train_config import Config

    work = Path(tempfile.mkdtemp(prefix="bench-overlap-"))
    rng = random.Random(0)
    corpus = work / "corpus.jsonl"
    sizes = {"a": 6 * args.records // 10, "b": 3 * args.records // 10, "c": args.records // 10}
    with open(corpus, "w") as out:
        for task, n in sizes.items():
            out.writelines(json.dumps({"query": f"q {task} {i}", "positive": f"p {rng.random()}", "task": task}) + "\n"
                           for i in range(n))
    fractions, lines = (0.2, 0.4, 0.6, 0.8, 1.0), {}
    for fraction in fractions:
        config = Config(model="m", data=str(corpus), fraction=fraction, seed=args.seed, output=str(work / f"bag{fraction}"),
                        cache_dir=str(work))
        data.write_bag_lines(data.build_bag(config), config.output)
        lines[fraction] = set(data.read_bag_lines(Path(config.output) / "bag_lines.txt.gz"))
    index = data.open_corpus(str(corpus))
    nested = {f: set(data.stratified_sample(index, f, args.seed)) for f in fractions}
    print(f"{sum(sizes.values())} records in 3 tasks ({', '.join(map(str, sizes.values()))}), campaign seed {args.seed}")
    for small, large in ((0.2, 0.4), (0.2, 0.6), (0.4, 0.8), (0.6, 0.8)):
        print(f"{small:.0%} bag in the {large:.0%} bag: {len(lines[small] & lines[large]) / len(lines[small]):.4f} "
              f"(independent draws: {large:.2f}; nested: {len(nested[small] & nested[large]) / len(nested[small]):.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode")

    def common(sub, steps: int, batch_size: int | None) -> None:
        sub.add_argument("--steps", type=int, default=steps, help="optimizer steps per run")
        if batch_size is not None:
            sub.add_argument("--batch-size", type=int, default=batch_size)
        sub.add_argument("--lr", type=float, help="default: the job's (1e-5 full, 1e-4 LoRA)")
        sub.add_argument("--temperature", type=float, default=0.02)

    cpu = modes.add_parser("cpu", help="small Qwen3 on the CPU, float32, against sentence-transformers")
    common(cpu, 30, 16)
    cpu.add_argument("--rounds", type=int, default=2)
    cpu.add_argument("--per-task", type=int, default=160, help="toy records per task (multiple of the batch size)")
    cpu.add_argument("--peers", nargs="+", choices=["auto", "trainer", "loop"], default=["auto"])
    cpu.add_argument("--gc", choices=["both", "on", "off"], default="both", help="gradient checkpointing settings")
    cpu.add_argument("--query-max-len", type=int, default=512)
    cpu.add_argument("--doc-max-len", type=int, default=512)
    cpu.add_argument("--skip-checkpoints", action="store_true", help="leave out the checkpoint-cost runs")
    cpu.add_argument("--work", help="keep model, corpus and logs here (default: a temporary directory, deleted)")
    gpu = modes.add_parser("gpu", help="Qwen3-4B config on a CUDA GPU, bf16, LoRA and full fine-tuning")
    common(gpu, 20, None)
    gpu.add_argument("--methods", nargs="+", choices=["lora", "full"], default=["lora", "full"])
    gpu.add_argument("--batch-sizes", type=int, nargs="+", default=[32], help="queries per step")
    gpu.add_argument("--group-size", type=int, default=8, help="1 positive + group-size - 1 hard negatives")
    gpu.add_argument("--mini-batch-sizes", type=int, nargs="+", default=[8, 32],
                     help="gradient-cache chunks (sequences): one run each, peak VRAM beside the planner's estimate")
    gpu.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    gpu.add_argument("--doc-tokens", type=int, default=512)
    gpu.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this GPU, if not in the table")
    gpu.add_argument("--out", default=str(ROOT / "bench" / "out" / "train-gpu.json"))
    gpu.add_argument("--work", help="keep the model here (default: a temporary directory, deleted)")
    gpu.add_argument("--smoke", action="store_true", help="tiny model, 3 steps, any device: checks the script")
    padding = modes.add_parser("padding", help="padded tokens of one step, sorted chunks vs not (a count, no timing)")
    padding.add_argument("--batch-size", type=int, default=128, help="queries per step")
    padding.add_argument("--group-size", type=int, default=8)
    padding.add_argument("--mini-batch-size", type=int, default=32)
    padding.add_argument("--doc-max-len", type=int, default=512)
    overlap = modes.add_parser("overlap", help="how much of one bag lies in another (bag_lines.txt.gz), no timing")
    overlap.add_argument("--records", type=int, default=100_000, help="corpus records (60/30/10 %% in three tasks)")
    overlap.add_argument("--seed", type=int, default=0, help="the campaign's seed")
    peer = modes.add_parser("peer", help="(internal) one sentence-transformers training run, step lines to stderr")
    common(peer, 20, 16)
    peer.add_argument("--kind", choices=["trainer", "loop"], required=True)
    peer.add_argument("--model", required=True)
    peer.add_argument("--data", required=True)
    peer.add_argument("--gc", action="store_true")
    peer.add_argument("--query-max-len", type=int, default=512)
    peer.add_argument("--doc-max-len", type=int, default=512)
    args = parser.parse_args()
    {"cpu": run_cpu, "gpu": run_gpu, "padding": run_padding, "overlap": run_overlap, "peer": run_peer,
     None: run_cpu}[args.mode](
        args if args.mode else parser.parse_args(["cpu"]))


if __name__ == "__main__":
    main()
