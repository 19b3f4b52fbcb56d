"""Retrieval evaluation of an embedder on a held-out JSONL set: nDCG@10, recall@10 and MRR@10.

    python -m jobs.evaluate --model M --data URI [--output FILE.json] [--batch-size N] [--max-length N]

The data has the training format (query, positive, optional negatives, task, instruction). The
candidate pool of a task is every distinct positive and negative text of that task; each query has
exactly one relevant document, its positive, and is encoded with its task's instruction prompt.
With one relevant document, nDCG@10 = 1/log2(rank+1) and recall@10 = [rank <= 10]. Metrics are
averaged over a task's queries, and the overall figure is the mean over tasks (every task counts
the same, as in MTEB). Exit 2 on bad input, 0 with the metrics printed and written as JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

K = 10


def load_records(uri: str) -> list[dict]:
    from jobs.storage import read_bytes

    records = []
    for number, line in enumerate(read_bytes(uri).decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{uri}:{number}: not JSON ({exc.msg})") from None
        for name in ("query", "positive"):
            if not isinstance(record.get(name), str) or not record[name].strip():
                raise ValueError(f"{uri}:{number}: '{name}' must be a non-empty string")
        records.append(record)
    if not records:
        raise ValueError(f"{uri}: no records; give a JSONL file with query/positive lines")
    return records


def rank_metrics(rank: int | None) -> dict[str, float]:
    """Metrics of one query whose only relevant document sits at 1-based `rank` (None: not retrieved)."""
    if rank is None or rank > K:
        return {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0}
    return {"ndcg@10": 1.0 / math.log2(rank + 1), "recall@10": 1.0, "mrr@10": 1.0 / rank}


def evaluate(model: str, records: list[dict], batch_size: int = 32, max_length: int = 512) -> dict:
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

    by_task: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_task[record.get("task") or "default"].append(record)
    per_task = {}
    for task, items in sorted(by_task.items()):
        pool = sorted({r["positive"] for r in items} | {n for r in items for n in r.get("negatives") or []})
        index = {text: i for i, text in enumerate(pool)}
        docs = encode(pool)
        queries = encode([format_query(r["query"], r.get("instruction")) for r in items])
        scores = queries @ docs.T
        totals = defaultdict(float)
        for row, record in zip(scores, items):
            target = index[record["positive"]]
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
    parser.add_argument("--model", required=True, help="model directory (sentence-transformers layout)")
    parser.add_argument("--data", required=True, help="held-out JSONL: query, positive, negatives, task, instruction")
    parser.add_argument("--output", type=Path, help="also write the metrics here as JSON")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_length < 8:
        parser.error("--batch-size must be >= 1 and --max-length >= 8")
    if not Path(args.model).joinpath("config.json").exists():
        print(f"error: {args.model} has no config.json; give a model directory", file=sys.stderr)
        return 2
    try:
        records = load_records(args.data)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = evaluate(args.model, records, args.batch_size, args.max_length)
    if args.output:
        from jobs.storage import write_json_atomic

        write_json_atomic(args.output, metrics)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
