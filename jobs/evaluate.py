"""Retrieval evaluation of an embedder on a held-out JSONL set: nDCG@10, recall@10 and MRR@10.

    python -m jobs.evaluate --model M --data URI [--output DIR] [--batch-size N] [--max-length N]

The data has the training format (query, positive, optional negatives, task, instruction). The
candidate pool of a task is every distinct positive and negative text of that task; each query has
exactly one relevant document, its positive, and is encoded with its task's instruction prompt.
With one relevant document, nDCG@10 = 1/log2(rank+1) and recall@10 = [rank <= 10]. Metrics are
averaged over a task's queries, and the overall figure is the mean over tasks (every task counts
the same, as in MTEB). Exit 2 on bad input, 0 with the metrics printed; with --output DIR (a path
or fsspec URI) they are also written to DIR/metrics.json, then a DONE marker, and a rerun with
DONE present exits 0 at once.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from jobs import storage
from jobs.data import BadData, Record, read_corpus
from jobs.lifecycle import BadInput
from jobs.protocol import done_uri

K = 10


def rank_metrics(rank: int | None) -> dict[str, float]:
    """Metrics of one query whose only relevant document sits at 1-based `rank` (None: not retrieved)."""
    if rank is None or rank > K:
        return {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0}
    return {"ndcg@10": 1.0 / math.log2(rank + 1), "recall@10": 1.0, "mrr@10": 1.0 / rank}


def evaluate(model: str, records: list[Record], batch_size: int = 32, max_length: int = 512) -> dict:
    import torch

    from jobs.embedder import embed, format_query, load_model, load_tokenizer, pick_device_dtype, tokenize

    device, dtype = pick_device_dtype()
    tokenizer = load_tokenizer(model)
    net = load_model(model, device=device, dtype=dtype).eval()

    def encode(texts: list[str]) -> torch.Tensor:
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenize(tokenizer, texts[start:start + batch_size], max_length).to(device)
                chunks.append(embed(net, batch).cpu())
        return torch.cat(chunks)

    by_task: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_task[record.task].append(record)
    per_task = {}
    for task, items in sorted(by_task.items()):
        pool = sorted({r.positive for r in items} | {n for r in items for n in r.negatives})
        index = {text: i for i, text in enumerate(pool)}
        docs = encode(pool)
        queries = encode([format_query(r.query, r.instruction) for r in items])
        scores = queries @ docs.T
        totals = defaultdict(float)
        for row, record in zip(scores, items):
            target = index[record.positive]
            rank = int((row > row[target]).sum()) + 1  # ties resolve in the relevant document's favour
            for name, value in rank_metrics(rank).items():
                totals[name] += value
        per_task[task] = {name: value / len(items) for name, value in totals.items()} | {"queries": len(items),
                                                                                        "documents": len(pool)}
    overall = {name: sum(m[name] for m in per_task.values()) / len(per_task) for name in ("ndcg@10", "recall@10",
                                                                                         "mrr@10")}
    return {"model": str(model), "overall": overall, "tasks": per_task}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory, fsspec URI or hub id (sentence-transformers "
                        "layout)")
    parser.add_argument("--data", required=True, help="held-out JSONL: query, positive, negatives, task, instruction")
    parser.add_argument("--output", help="also write DIR/metrics.json and DIR/DONE (path or fsspec URI)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "planner-jobs",
                        help="where a remote model is copied once")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_length < 8:
        parser.error("--batch-size must be >= 1 and --max-length >= 8")
    try:
        model = storage.resolve_model(args.model, args.cache_dir)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not model.joinpath("config.json").exists():
        print(f"error: {args.model} has no config.json; give a model directory", file=sys.stderr)
        return 2
    if args.output and storage.exists(done_uri(args.output)):
        print(f"{args.output} is already evaluated", file=sys.stderr)
        return 0
    try:
        records = read_corpus(args.data)
    except (OSError, BadData) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = evaluate(str(model), records, args.batch_size, args.max_length) | {"model": args.model}
    if args.output:
        storage.write_json_atomic(storage.join(args.output, "metrics.json"), metrics)
        storage.write_bytes_atomic(done_uri(args.output), b"")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
