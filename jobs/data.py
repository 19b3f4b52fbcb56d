"""The multi-task training corpus: reading and checking it, drawing a bag, and ordering the batches.

Format: JSONL, one record per line with `query` and `positive` (non-empty strings), optional
`negatives` (a list of non-empty strings), `task` (a name; default "default") and `instruction`
(the task's query instruction). Every line is checked before anything else happens.

Determinism: every random choice here comes from `random.Random` seeded with a string built from
the user's seed (Python seeds string keys through SHA-512, the same on every platform and version),
never from global RNG state, so the same (data, fraction, seed) gives the same bag and batch order
on any machine, and a resumed run recomputes exactly the order it was following.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass

from jobs import storage

DEFAULT_TASK = "default"


class BadData(ValueError):
    """A corpus problem, reported as `file:line: what is wrong`."""


@dataclass(frozen=True)
class Record:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    task: str = DEFAULT_TASK
    instruction: str | None = None

    def canonical(self) -> str:
        return json.dumps([self.query, self.positive, list(self.negatives), self.task, self.instruction],
                          ensure_ascii=False)


def parse_record(line: str, where: str) -> Record:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadData(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise BadData(f"{where}: expected a JSON object with 'query' and 'positive'")
    for name in ("query", "positive"):
        if not isinstance(raw.get(name), str) or not raw[name].strip():
            raise BadData(f"{where}: '{name}' must be a non-empty string")
    negatives = raw.get("negatives") or []
    if not isinstance(negatives, list) or not all(isinstance(n, str) and n.strip() for n in negatives):
        raise BadData(f"{where}: 'negatives' must be a list of non-empty strings")
    task = raw.get("task", DEFAULT_TASK)
    if not isinstance(task, str) or not task.strip():
        raise BadData(f"{where}: 'task' must be a non-empty string")
    instruction = raw.get("instruction")
    if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
        raise BadData(f"{where}: 'instruction' must be a non-empty string when given")
    return Record(raw["query"], raw["positive"], tuple(negatives), task, instruction)


def read_corpus(uri: str) -> list[Record]:
    """Every record of a JSONL corpus (local path or fsspec URI), all checked; blank lines are skipped."""
    if not storage.exists(uri):
        raise BadData(f"{uri}: not found; give a JSONL file (local path or fsspec URI)")
    try:
        text = storage.read_bytes(uri).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadData(f"{uri}: not UTF-8 text (byte {exc.start})") from None
    records = [parse_record(line, f"{uri}:{number}")
               for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not records:
        raise BadData(f"{uri}: no records; expected JSONL lines with 'query' and 'positive'")
    return records


def by_task(records: list[Record], indices: list[int] | None = None) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i in range(len(records)) if indices is None else indices:
        groups[records[i].task].append(i)
    return dict(sorted(groups.items()))


def stratified_sample(records: list[Record], fraction: float, seed: int, *, salt: str = "bag") -> list[int]:
    """Indices of a sample without replacement of `fraction` of each task (at least one record per task)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    chosen: list[int] = []
    for task, members in by_task(records).items():
        keep = max(1, round(len(members) * fraction))
        chosen += random.Random(f"{salt}:{seed}:{task}").sample(members, keep)
    return sorted(chosen)


def content_hash(records: list[Record]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(record.canonical().encode())
        digest.update(b"\n")
    return digest.hexdigest()


def epoch_batches(records: list[Record], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches: each from a single task (in-batch negatives stay meaningful), shuffled across tasks.

    Records are shuffled within their task, cut into batches of `batch_size`; a task's remainder of
    fewer than two records joins its previous batch (a lone query has no in-batch negative). The order
    of all batches is then shuffled. Depends only on (records, batch_size, seed, epoch).
    """
    batches: list[list[int]] = []
    for task, members in by_task(records).items():
        members = list(members)
        random.Random(f"order:{seed}:{epoch}:{task}").shuffle(members)
        chunks = [members[i:i + batch_size] for i in range(0, len(members), batch_size)]
        if len(chunks) > 1 and len(chunks[-1]) < 2:
            remainder = chunks.pop()
            chunks[-1] += remainder
        batches += chunks
    random.Random(f"batches:{seed}:{epoch}").shuffle(batches)
    return batches
