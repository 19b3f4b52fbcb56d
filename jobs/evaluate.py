"""Retrieval evaluation of an embedder on a held-out JSONL set: nDCG@10, recall@10 and MRR@10.

    python -m jobs.evaluate --model M --data URI [--output DIR] [--batch-tokens N] [--max-length N]

The data has the training format, ours or FlagEmbedding's (jobs.data). The candidate pool of a task
is every distinct positive and negative text of that task; each query has exactly one relevant
document, its positive. Texts are encoded the way training saw them: a query with its task's
instruction prompt, a document bare, except for FlagEmbedding's symmetric_sts/_clustering data,
whose documents carry the query prompt too (jobs.data.Group.prompt_documents). Encoding goes
through jobs.encode's engine (token-budget batches sorted by length, tokenization in a background
thread, packed sequences under flash-attention), the same code that encodes a corpus.

A broken model cannot score well. An embedding that is not finite (NaN or inf: a diverged bag, a
failed merge) fails the job: one line, exit 2, nothing written. Ties are not resolved in the relevant
document's favour: the relevant document's rank is averaged over every position among the documents
that score the same, i.e. the expected metric under a random tie-break (McSherry & Najork, "Computing
Information Retrieval Performance Measures Efficiently in the Presence of Tied Scores", ECIR 2008;
trec_eval breaks ties by document id, which knows nothing of relevance either). So a collapsed model
(constant or zero embeddings: every score tied) scores exactly what a random ranking scores.

With one relevant document at rank r, nDCG@10 = 1/log2(r+1), recall@10 = [r <= 10], MRR@10 = 1/r
(0 beyond 10). Metrics are averaged over a task's queries and the overall figure is the mean over
tasks (every task counts the same, as in MTEB). Exit 2 on bad input, 0 with the metrics printed;
with --output DIR (a path or fsspec URI) they are also written to DIR/metrics.json, then a DONE
marker, and a rerun with DONE present exits 0 at once.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from jobs import storage
from jobs.data import SYMMETRIC_WITH_PROMPT, BadData, Record, read_corpus
from jobs.lifecycle import BadInput, StopRequest, run_job
from jobs.protocol import done_uri

K = 10
METRICS = ("ndcg@10", "recall@10", "mrr@10")

# windows of texts -> one float32 array [len(window), dim] per window, in order (jobs.encode.encode_windows)
Encoder = Callable[[Iterable[Sequence[str]]], Iterator]


def rank_metrics(rank: int | None) -> dict[str, float]:
    """Metrics of one query whose only relevant document sits at 1-based `rank` (None: not retrieved)."""
    if rank is None or rank > K:
        return {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0}
    return {"ndcg@10": 1.0 / math.log2(rank + 1), "recall@10": 1.0, "mrr@10": 1.0 / rank}


def tied_rank_metrics(above: int, tied: int) -> dict[str, float]:
    """Expected metrics of the relevant document when `above` documents score higher and `tied` others
    score the same: its rank is equally likely to be each of above+1 .. above+tied+1."""
    totals = dict.fromkeys(METRICS, 0.0)
    for rank in range(above + 1, min(above + tied + 1, K) + 1):  # ranks past K add nothing
        for name, value in rank_metrics(rank).items():
            totals[name] += value
    return {name: value / (tied + 1) for name, value in totals.items()}


def _task_texts(items: list[Record]) -> tuple[list[str], list[str], list[int]]:
    """(the task's document pool as encoded, its queries as encoded, each query's positive's pool index)."""
    from jobs.prompt import format_query

    pool = sorted({r.positive for r in items} | {n for r in items for n in r.negatives})
    index = {text: i for i, text in enumerate(pool)}
    first = items[0]
    prompted = first.kind in SYMMETRIC_WITH_PROMPT  # training put the query prompt on these documents
    docs = [format_query(doc, first.instruction) for doc in pool] if prompted else pool
    return docs, [format_query(r.query, r.instruction) for r in items], [index[r.positive] for r in items]


def _finite(vectors, task: str, what: str, model: str):
    import numpy as np

    bad = int((~np.isfinite(vectors)).any(axis=1).sum())
    if bad:
        raise BadInput(f"model {model}: {bad} of {len(vectors)} {what} embeddings of task {task!r} are not finite "
                       "(NaN or inf); the model is broken (a diverged bag or a failed merge), retrain or re-merge it")
    return vectors


def score(records: Sequence[Record], encode: Encoder, model: str = "model") -> dict:
    """Per-task and overall metrics of `records`, encoded by `encode` (one window per task's pool and queries)."""
    by_task: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_task[record.task].append(record)
    tasks = sorted(by_task)
    texts = {task: _task_texts(by_task[task]) for task in tasks}
    windows = (window for task in tasks for window in texts[task][:2])
    embeddings = iter(encode(windows))
    per_task = {}
    try:
        for task in tasks:
            per_task[task] = _task_metrics(_finite(next(embeddings), task, "document", model),
                                           _finite(next(embeddings), task, "query", model), texts[task][2])
    finally:
        getattr(embeddings, "close", lambda: None)()  # stops jobs.encode's tokenizer thread on an early exit
    overall = {name: sum(m[name] for m in per_task.values()) / len(per_task) for name in METRICS}
    return {"model": str(model), "overall": overall, "tasks": per_task}


def _task_metrics(docs, queries, targets: list[int]) -> dict:
    """A task's mean metrics from its finite document and query embeddings; ties averaged (tied_rank_metrics)."""
    import numpy as np

    scores = queries.astype(np.float64) @ docs.astype(np.float64).T
    relevant = scores[np.arange(len(targets)), targets][:, None]
    above = (scores > relevant).sum(axis=1)
    tied = (scores == relevant).sum(axis=1) - 1
    totals = dict.fromkeys(METRICS, 0.0)
    for a, t in zip(above.tolist(), tied.tolist()):
        for name, value in tied_rank_metrics(a, t).items():
            totals[name] += value
    return {name: value / len(targets) for name, value in totals.items()} | {"queries": len(targets),
                                                                              "documents": len(docs)}


def model_encoder(model: Path, *, max_length: int, batch_tokens: int | None, check_stop=lambda: None) -> Encoder:
    """jobs.encode's engine over the model at `model` (bf16 on a GPU, fp32 on the CPU), texts used as given."""
    import torch

    from jobs.embedder import load_tokenizer
    from jobs.encode import BATCH_TOKENS, EncodeConfig, encode_windows, load_encoder

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model)
    net = load_encoder(model, device, "bfloat16" if device.type == "cuda" else "float32")
    settings = EncodeConfig("", max_length, batch_tokens or BATCH_TOKENS[device.type], None,
                            packed=net.config._attn_implementation == "flash_attention_2")
    return lambda windows: encode_windows(net, tokenizer, windows, settings, on_batch=lambda *_: check_stop())


def evaluate(model: str, records: Sequence[Record], *, max_length: int = 512, batch_tokens: int | None = None,
             check_stop=lambda: None) -> dict:
    return score(records, model_encoder(Path(model), max_length=max_length, batch_tokens=batch_tokens,
                                        check_stop=check_stop), str(model))


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    model = storage.resolve_model(args.model, args.cache_dir)
    if not model.joinpath("config.json").exists():
        raise BadInput(f"{args.model} has no config.json; give a model directory")
    if args.output and storage.exists(done_uri(args.output)):
        print(f"{args.output} is already evaluated", file=sys.stderr)
        return 0
    try:
        records = read_corpus(args.data)
    except (OSError, BadData) as exc:
        raise BadInput(str(exc)) from None
    metrics = evaluate(str(model), records, max_length=args.max_length, batch_tokens=args.batch_tokens,
                       check_stop=stop.check) | {"model": args.model}
    if args.output:
        storage.write_json_atomic(storage.join(args.output, "metrics.json"), metrics)
        storage.write_bytes_atomic(done_uri(args.output), b"")
    print(json.dumps(metrics, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory, fsspec URI or hub id (sentence-transformers "
                        "layout)")
    parser.add_argument("--data", required=True, help="held-out JSONL: query, positive, negatives, task, instruction")
    parser.add_argument("--output", help="also write DIR/metrics.json and DIR/DONE (path or fsspec URI)")
    parser.add_argument("--batch-tokens", type=int,
                        help="tokens per batch, padding included (default: 32768 on a GPU, 2048 on the CPU)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "planner-jobs",
                        help="where a remote model is copied once")
    args = parser.parse_args(argv)
    if (args.batch_tokens is not None and args.batch_tokens < 1) or args.max_length < 8:
        parser.error("--batch-tokens must be >= 1 and --max-length >= 8")
    return run_job(lambda stop: run(args, stop), "rerun the same command to evaluate again")


if __name__ == "__main__":
    raise SystemExit(main())
