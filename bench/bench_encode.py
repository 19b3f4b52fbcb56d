"""`python -m jobs.encode` against sentence-transformers `encode`: the same model and texts, one run.

    .venv/bin/python bench/bench_encode.py cpu [--texts 2000] [--rounds 2]
    python bench/bench_encode.py gpu [--docs 20000] [--out bench/out/encode-gpu.json]
    python bench/bench_encode.py gpu --smoke          # the GPU mode's code on a tiny model, any device

cpu: a small random Qwen3 (hidden 384, 6 layers) and texts of 8 to 512 tokens (log-uniform, as
real corpora skew short), float32. Each round times sentence-transformers (default batch 32) and
our encoder (token-budget batches, tokenization in a thread) at each `--batch-tokens` budget, on
the model already loaded, in alternating order; the best round of each is compared. Then the whole
CLI, as a process, end to end.

gpu: a randomly initialised model with Qwen3-4B's exact config (same FLOPs as the real weights) in
bfloat16 and `--docs` documents of 50 to 1,000 tokens (uniform). Tokens/s for ours and for
sentence-transformers (flash-attention 2 with its padding-free batches when flash_attn is
installed, else SDPA with left padding), MFU = 2 x non-embedding params x tokens/s / peak bf16
FLOP/s, and peak VRAM per dtype (bf16, fp16, and int8/nf4 when bitsandbytes is installed) on the
first `--vram-docs` documents. Writes everything to `--out` as JSON and prints Markdown. Takes
about 10 minutes on an H100 (model writing included); needs no network (the tokenizer is trained
on the fly, so only token counts, not the texts, resemble a real corpus).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.embedder import attention_implementation, load_tokenizer, write_sentence_transformers_files  # noqa: E402
from jobs.encode import BATCH_TOKENS, EncodeConfig, encode_windows, load_encoder  # noqa: E402
from jobs.toy import WORDS, tiny_config, train_tokenizer  # noqa: E402

SMALL = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=4096)
QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
PEAK_BF16_TFLOPS = [  # dense bf16 tensor-core peak; first matching name wins
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.1), ("L40", 181.0), ("A10G", 70.0), ("A10", 125.0),
    ("L4", 121.0), ("RTX 4090", 165.2), ("RTX 6000 Ada", 364.2), ("A6000", 154.8),
]


# --- model and texts --------------------------------------------------------------------------

def build_model(directory: Path, config: dict, *, dtype: torch.dtype, device: str, max_seq_length: int) -> Path:
    """A random Qwen3 embedder in sentence-transformers layout, with a tokenizer trained on the fly."""
    from transformers import AutoModel

    directory.mkdir(parents=True, exist_ok=True)
    train_tokenizer(directory)
    load_tokenizer(directory).save_pretrained(str(directory))
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModel.from_config(tiny_config(**config), dtype=dtype)
    model.save_pretrained(str(directory))
    write_sentence_transformers_files(directory, hidden_size=model.config.hidden_size, max_seq_length=max_seq_length)
    del model
    return directory


def documents(count: int, low: int, high: int, *, log_uniform: bool, seed: int = 0) -> list[str]:
    """Texts of about low..high tokens (each toy word is about one token; the appended EOS is one more)."""
    rng = random.Random(seed)
    lengths = [round(math.exp(rng.uniform(math.log(low), math.log(high)))) if log_uniform else rng.randint(low, high)
               for _ in range(count)]
    return [" ".join(rng.choice(WORDS) for _ in range(n - 1)) for n in lengths]


def token_count(model_dir: Path, texts: list[str], max_length: int) -> int:
    tokenizer = load_tokenizer(model_dir)
    return sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])


def non_embedding_parameters(model_dir: Path) -> int:
    from transformers import AutoConfig, AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(AutoConfig.from_pretrained(str(model_dir)))
    return sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)


# --- the two encoders, timed on a loaded model -------------------------------------------------

def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ours(net, tokenizer, texts: list[str], *, max_length: int, batch_tokens: int, window: int,
              device: str) -> tuple[float, np.ndarray]:
    settings = EncodeConfig("", max_length, batch_tokens, None,
                        packed=net.config._attn_implementation == "flash_attention_2")
    windows = [texts[i:i + window] for i in range(0, len(texts), window)]
    synchronize(device)
    start = time.perf_counter()
    embeddings = np.concatenate(list(encode_windows(net, tokenizer, windows, settings)))
    synchronize(device)
    return time.perf_counter() - start, embeddings


def time_sentence_transformers(model, texts: list[str], *, batch_size: int, device: str) -> tuple[float, np.ndarray]:
    synchronize(device)
    start = time.perf_counter()
    embeddings = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    synchronize(device)
    return time.perf_counter() - start, embeddings


def load_sentence_transformer(model_dir: Path, device: str, dtype: torch.dtype):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device=device, model_kwargs={
        "dtype": dtype, "attn_implementation": attention_implementation(torch.device(device))})


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


# --- cpu ---------------------------------------------------------------------------------------

def run_cpu(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    try:
        model_dir = build_model(work / "model", SMALL, dtype=torch.float32, device="cpu", max_seq_length=512)
        texts = documents(args.texts, 8, 512, log_uniform=True)
        tokens = token_count(model_dir, texts, 512)
        tokenizer, net = load_tokenizer(model_dir), load_encoder(model_dir, torch.device("cpu"), "float32")
        reference = load_sentence_transformer(model_dir, "cpu", torch.float32)
        names = ["sentence-transformers", *(f"ours {budget}" for budget in args.batch_tokens)]
        runs: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                if name == "sentence-transformers":
                    seconds, theirs = time_sentence_transformers(reference, texts, batch_size=32, device="cpu")
                else:
                    seconds, ours = time_ours(net, tokenizer, texts, max_length=512, window=10000, device="cpu",
                                              batch_tokens=int(name.split()[1]))
                runs[name].append(seconds)
                print(f"round {round_ + 1} {name}: {seconds:.1f} s", file=sys.stderr)
        source = work / "texts.txt"
        source.write_text("\n".join(texts) + "\n")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jobs.encode", "--model", str(model_dir), "--input", str(source),
                        "--output", str(work / "out")],
                       cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
        cli_seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)

    best = {name: min(seconds) for name, seconds in runs.items()}
    print(f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"model: Qwen3 hidden {SMALL['hidden_size']}, {SMALL['num_hidden_layers']} layers, float32, SDPA; "
          f"{len(texts)} texts, {tokens:,} tokens (8-512, log-uniform)\n")
    print("| encoder | settings | best s | records/s | tokens/s | all rounds s |\n|---|---|---:|---:|---:|---|")
    for name in runs:
        tool, settings = (name, "encode(batch_size=32)") if name == "sentence-transformers" else (
            "jobs.encode", f"--batch-tokens {name.split()[1]}")
        print(f"| {tool} | {settings} | {best[name]:.1f} | {len(texts) / best[name]:.1f} | "
              f"{tokens / best[name]:,.0f} | {', '.join(f'{s:.1f}' for s in runs[name])} |")
    for name in names[1:]:
        print(f"\nratio jobs.encode {name.split()[1]} / sentence-transformers, records/s: "
              f"**{best['sentence-transformers'] / best[name]:.2f}x**")
    print(f"\nmin cosine, jobs.encode (last budget) vs sentence-transformers: {min_cosine(ours, theirs):.6f}")
    print(f"CLI end to end with its CPU default --batch-tokens {BATCH_TOKENS['cpu']} (process start, validation, "
          f"hashing, model load, Parquet shards): {cli_seconds:.1f} s, {len(texts) / cli_seconds:.1f} records/s")


# --- gpu ---------------------------------------------------------------------------------------

def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def vram_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None


def reset_vram(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_gpu(args: argparse.Namespace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        sys.exit("error: no CUDA GPU; run the gpu mode on a GPU machine, or add --smoke to check the script here")
    config = dict(vocab_size=151936, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=32) if args.smoke else QWEN3_4B
    count, vram_docs = (64, 16) if args.smoke else (args.docs, args.vram_docs)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-encode-gpu-"))
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    results: dict = {"device": gpu, "torch": torch.__version__, "config": config, "docs": count,
                     "attention": attention_implementation(torch.device(device)), "runs": {}, "vram": {}}
    try:
        model_dir = build_model(work / "model", config, dtype=torch.bfloat16, device=device, max_seq_length=1024)
        texts = documents(count, 50, 1000, log_uniform=False)
        tokens = token_count(model_dir, texts, 1024)
        params = non_embedding_parameters(model_dir)
        peak = peak_tflops(gpu, args.peak_tflops)
        results |= {"tokens": tokens, "non_embedding_params": params, "peak_bf16_tflops": peak}

        def record(name: str, seconds: float, peak_gb: float | None) -> None:
            rate = tokens / seconds
            results["runs"][name] = {"seconds": seconds, "tokens_per_s": rate, "docs_per_s": count / seconds,
                                     "mfu": 2 * params * rate / (peak * 1e12) if peak else None,
                                     "peak_vram_gb": peak_gb}
            print(f"{name}: {seconds:.1f} s, {rate:,.0f} tokens/s", file=sys.stderr)

        tokenizer = load_tokenizer(model_dir)
        net = load_encoder(model_dir, torch.device(device), "bfloat16")
        time_ours(net, tokenizer, texts[:64], max_length=1024, batch_tokens=args.batch_tokens, window=10000,
                  device=device)  # warm-up: CUDA context, kernels
        for batch_tokens in sorted({args.batch_tokens, *args.sweep}):
            reset_vram(device)
            seconds, ours = time_ours(net, tokenizer, texts, max_length=1024, batch_tokens=batch_tokens, window=10000,
                                      device=device)
            record(f"jobs.encode --batch-tokens {batch_tokens}", seconds, vram_gb(device))
        del net
        reset_vram(device)
        model = load_sentence_transformer(model_dir, device, torch.bfloat16)
        time_sentence_transformers(model, texts[:64], batch_size=32, device=device)
        for batch_size in args.st_batch_sizes:
            reset_vram(device)
            seconds, theirs = time_sentence_transformers(model, texts, batch_size=batch_size, device=device)
            record(f"sentence-transformers batch_size={batch_size}", seconds, vram_gb(device))
        results["min_cosine_ours_vs_st"] = min_cosine(ours, theirs)
        del model
        for dtype in ("bfloat16", "float16", "int8", "nf4"):
            results["vram"][dtype] = vram_for_dtype(model_dir, texts[:vram_docs], dtype, device, args.batch_tokens)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_gpu(results)


def vram_for_dtype(model_dir: Path, texts: list[str], dtype: str, device: str, batch_tokens: int) -> dict:
    """Weights and peak VRAM of our encoder in `dtype` over `texts`, or why it could not run."""
    from jobs.encode import BadInput, check_dtype

    try:
        check_dtype(dtype, torch.device(device))
    except BadInput as exc:
        return {"skipped": str(exc)}
    reset_vram(device)
    net = load_encoder(model_dir, torch.device(device), dtype)
    weights = torch.cuda.memory_allocated() / 1e9 if device.startswith("cuda") else None
    seconds, _ = time_ours(net, load_tokenizer(model_dir), texts, max_length=1024, batch_tokens=batch_tokens,
                           window=10000, device=device)
    tokens = token_count(model_dir, texts, 1024)
    del net
    return {"weights_gb": weights, "peak_gb": vram_gb(device), "tokens_per_s": tokens / seconds,
            "batch_tokens": batch_tokens, "docs": len(texts)}


def print_gpu(results: dict) -> None:
    print(f"{results['device']}, torch {results['torch']}, attention {results['attention']}; "
          f"{results['docs']:,} docs, {results['tokens']:,} tokens; "
          f"{results['non_embedding_params'] / 1e9:.2f} B non-embedding params; "
          f"peak {results['peak_bf16_tflops']} bf16 TFLOP/s\n")
    print("| encoder | s | tokens/s | MFU | peak VRAM GB |\n|---|---:|---:|---:|---:|")
    for name, run in results["runs"].items():
        mfu = f"{run['mfu']:.1%}" if run["mfu"] is not None else "n/a"
        vram = f"{run['peak_vram_gb']:.1f}" if run["peak_vram_gb"] is not None else "n/a"
        print(f"| {name} | {run['seconds']:.1f} | {run['tokens_per_s']:,.0f} | {mfu} | {vram} |")
    ours = max(r["tokens_per_s"] for n, r in results["runs"].items() if n.startswith("jobs.encode"))
    theirs = max(r["tokens_per_s"] for n, r in results["runs"].items() if n.startswith("sentence-transformers"))
    print(f"\nbest ours / best sentence-transformers: **{ours / theirs:.2f}x**; "
          f"min cosine ours vs sentence-transformers: {results['min_cosine_ours_vs_st']:.4f}\n")
    print("| dtype | weights GB | peak VRAM GB | tokens/s |\n|---|---:|---:|---:|")
    for dtype, row in results["vram"].items():
        if "skipped" in row:
            print(f"| {dtype} | skipped: {row['skipped']} | | |")
        else:
            fmt = lambda value: f"{value:.2f}" if value is not None else "n/a"  # noqa: E731
            print(f"| {dtype} | {fmt(row['weights_gb'])} | {fmt(row['peak_gb'])} | {row['tokens_per_s']:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    cpu = modes.add_parser("cpu", help="small Qwen3 on the CPU, float32")
    cpu.add_argument("--texts", type=int, default=2000)
    cpu.add_argument("--rounds", type=int, default=2)
    cpu.add_argument("--batch-tokens", type=int, nargs="+", default=[2048, 32768], help="our budgets to time")
    gpu = modes.add_parser("gpu", help="Qwen3-4B config on a CUDA GPU, bf16")
    gpu.add_argument("--docs", type=int, default=20000)
    gpu.add_argument("--vram-docs", type=int, default=1000, help="documents per dtype for the VRAM table")
    gpu.add_argument("--batch-tokens", type=int, default=BATCH_TOKENS["cuda"],
                     help="our budget (also for the dtype table)")
    gpu.add_argument("--sweep", type=int, nargs="*", default=[65536], help="more --batch-tokens values to time")
    gpu.add_argument("--st-batch-sizes", type=int, nargs="+", default=[32, 128])
    gpu.add_argument("--peak-tflops", type=float, help="dense bf16 peak of this GPU, if not in the table")
    gpu.add_argument("--out", default=str(ROOT / "bench" / "out" / "encode-gpu.json"))
    gpu.add_argument("--work", help="keep the model here (default: a temporary directory, deleted)")
    gpu.add_argument("--smoke", action="store_true", help="tiny model, 64 docs, any device: checks the script")
    args = parser.parse_args()
    (run_cpu if args.mode == "cpu" else run_gpu)(args)


if __name__ == "__main__":
    main()
