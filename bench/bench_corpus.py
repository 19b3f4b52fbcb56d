"""A BOOM-size corpus (2.8 M records) through `python -m jobs.train_bag`: peak RSS and seconds to the first step.

    .venv/bin/python bench/bench_corpus.py [--records 2800000] [--fraction 0.2] [--rev HEAD] [--formats ours flag]
        [--work DIR] [--keep]

Writes a synthetic corpus with --records records (seeded; 12 tasks; a query of 8 words, one
positive and three hard negatives of 20 words each, about 450 bytes a record, 1.3 GB at 2.8 M), in
one or both formats:
  ours  {"query", "positive", "negatives", "task", "instruction"} (what jobs.data has always read)
  flag  FlagEmbedding's {"query", "pos": [...], "neg": [...], "prompt", "type"} (bge-full-data), same texts
then runs the job on the tiny test model (jobs.toy) with --fraction F --max-steps 2 and measures,
from the moment the process is started:
  seconds to the first step  until its "step 1/" line reaches stderr (reading and checking the
                             corpus, drawing and hashing the bag, ordering the batches, loading
                             the model, one optimizer step of a tiny model: the data work dominates)
  peak RSS                   VmHWM of the job's process (/proc/PID/status) at that moment
The process is killed after the first step. `--rev R` also runs the same measurement with the
jobs/ package as it is at git revision R (extracted with `git archive` to a temporary directory),
which is how the "before" row in bench/RESULTS.md was taken; revisions that predate the FlagEmbedding
reader run only the `ours` format. Prints a Markdown table and writes JSON to bench/out/corpus.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASKS = 12


def write_corpus(path: Path, records: int, fmt: str, seed: int = 0) -> Path:
    """The synthetic corpus; the same texts in either format (one RNG stream, drawn in the same order)."""
    from jobs.toy import WORDS

    rng = random.Random(seed)
    words = WORDS
    with open(path, "w", buffering=1 << 22) as out:
        for i in range(records):
            task = i % TASKS
            query = " ".join(rng.choices(words, k=8))
            docs = [" ".join(rng.choices(words, k=20)) for _ in range(4)]
            instruction = f"Given a query of task {task}, retrieve passages that answer it"
            if fmt == "ours":
                line = {"query": query, "positive": docs[0], "negatives": docs[1:], "task": f"task{task}",
                        "instruction": instruction}
            else:
                line = {"query": query, "pos": docs[:1], "neg": docs[1:], "prompt": instruction, "type": "normal"}
            out.write(json.dumps(line) + "\n")
    return path


def measure(code_root: Path, model: Path, corpus: Path, work: Path, fraction: float) -> dict:
    """Start the job with `code_root` first on sys.path; time to its first step line and its peak RSS then."""
    output = work / f"out-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "jobs.train_bag", "--model", str(model), "--data", str(corpus),
               "--fraction", str(fraction), "--seed", "0", "--output", str(output), "--max-steps", "2",
               "--batch-size", "8", "--save-every-steps", "1000000", "--cache-dir", str(work / "cache")]
    env = os.environ | {"PYTHONPATH": str(code_root), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=code_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, bufsize=1)
    lines, first_step, peak_kb = [], None, None
    try:
        for line in process.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith("step 1/"):
                first_step = time.perf_counter() - started
                peak_kb = _vm_hwm_kb(process.pid)
                break
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(output, ignore_errors=True)
    if first_step is None:
        raise RuntimeError("the job ended before its first step:\n" + "\n".join(lines[-20:]))
    return {"seconds_to_first_step": round(first_step, 2), "peak_rss_gb": round(peak_kb * 1024 / 1e9, 3),
            "log": [entry for entry in lines if entry.startswith(("bag:", "data:"))]}


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc (Linux only)")


def checkout(rev: str, target: Path) -> Path:
    """The jobs/ package at git revision `rev`, extracted to `target`."""
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "jobs"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2_800_000)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--rev", help="also measure jobs/ at this git revision (the 'before')")
    parser.add_argument("--formats", nargs="+", choices=["ours", "flag"], default=["ours", "flag"])
    parser.add_argument("--work", help="keep corpora here (default: a temporary directory, deleted unless --keep)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "corpus.json"))
    args = parser.parse_args()

    from jobs.toy import build_tiny_model

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-corpus-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {"records": args.records, "fraction": args.fraction, "cpus": os.cpu_count(), "runs": []}
    try:
        model = work / "model"
        if not (model / "config.json").exists():
            build_tiny_model(model)
        corpora = {}
        for fmt in args.formats:
            corpora[fmt] = work / f"corpus-{fmt}-{args.records}.jsonl"
            if not corpora[fmt].exists():
                t0 = time.perf_counter()
                write_corpus(corpora[fmt], args.records, fmt)
                print(f"wrote {corpora[fmt]} ({corpora[fmt].stat().st_size / 1e9:.2f} GB) in "
                      f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        codes = [("working tree", ROOT)]
        if args.rev:
            codes.insert(0, (f"git {args.rev}", checkout(args.rev, work / "rev")))
        for label, code_root in codes:
            for fmt, corpus in corpora.items():
                if fmt == "flag" and not _reads_flag_format(code_root):
                    continue
                result = measure(code_root, model, corpus, work, args.fraction)
                entry = {"code": label, "format": fmt, "file_gb": round(corpus.stat().st_size / 1e9, 3)} | result
                results["runs"].append(entry)
                print(json.dumps(entry), file=sys.stderr)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"{args.records:,} records, --fraction {args.fraction}, {os.cpu_count()} CPU cores\n")
    print("| code | format | file GB | peak RSS GB | seconds to first step |\n|---|---|---:|---:|---:|")
    for run in results["runs"]:
        print(f"| {run['code']} | {run['format']} | {run['file_gb']:.2f} | {run['peak_rss_gb']:.2f} | "
              f"{run['seconds_to_first_step']:.1f} |")


def _reads_flag_format(code_root: Path) -> bool:
    return "FlagEmbedding" in (code_root / "jobs" / "data.py").read_text()


if __name__ == "__main__":
    main()
