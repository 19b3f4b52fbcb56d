"""The multi-task training corpus: reading and checking it, drawing a bag, ordering batches, picking groups.

Formats, one JSON object a line (both may be mixed in one file); every line is checked first:
  ours          `query`, `positive` (non-empty strings), optional `negatives` (list of non-empty
                strings), `task` (a name; default "default"), `instruction` (the query instruction).
  FlagEmbedding `query`, `pos` (non-empty list of texts), `neg` (list of texts), optional
                `pos_scores`/`neg_scores` (teacher scores, one number per text), `prompt` (the
                query instruction), `type` (FlagEmbedding's data type: `only_1neg` trains groups of
                2, `symmetric_class` groups of at most len(neg)+1, `symmetric_sts` and
                `symmetric_clustering` put the query instruction on the documents too), and our
                optional `task`. bge-full-data is in this format.

Tasks, the authors' way (FlagEmbedding's AbsEmbedderSameDatasetTrainDataset, FlagEmbedding/abc/finetune/
embedder/AbsDataset.py, which the BOOM scripts run): a batch comes from one source file, and a file
under a directory (or a file) whose name ends in `no_in_batch_neg` trains without in-batch negatives;
bge-full-data keeps its classification and clustering files (types `symmetric_class`,
`symmetric_clustering`) in such directories. Here a batch comes from one task, and a task trains
without in-batch negatives when a component of its name ends in `no_in_batch_neg` or its records'
type is `symmetric_class`/`symmetric_clustering` (`in_batch_negatives`). One JSONL has no source
files, so `import_flagembedding` (`python -m jobs.data import-flagembedding DIR -o corpus.jsonl`, or
`planner data import-flagembedding`) converts a FlagEmbedding training directory into one corpus whose
`task` is each line's directory/file. A FlagEmbedding line without `task` falls back to its `prompt`
(else "default"), which merges files that share a prompt and splits a file with several: reading
such a corpus prints a warning naming the converter.

Scale: a corpus is never held in memory. `open_corpus` scans the file once (a remote URI is first
copied to a local cache by jobs.storage), checks every line and keeps, per record, only the byte
offset of its line and its task (about 12 bytes); records are parsed again when a batch needs
them. A bag is a list of indices into one or two such indices, and its hash is computed by
streaming its records. A 2.8 M-record corpus therefore costs tens of MB, not tens of GB
(bench/bench_corpus.py). `sample_stats` estimates a corpus's size and token lengths from a few
thousand lines read at spread-out offsets, without reading the whole file (for the planner).

Bags (jobs.train_bag): the bags of one campaign are distinct draws, not nested ones. A bag's draw
is seeded by `draw_seed(seed, fraction)`, the campaign's seed and the bag's identity (its fraction),
so the 20 % bag shares about 40 % of its records with the 40 % bag, as independent draws do (with
one seed for every bag, `random.Random(...).sample` returned prefixes of one draw: the 20 % bag lay
wholly inside the 40 % one). The model's initialisation seed stays the campaign's, shared by every
bag, as in the authors' runs (a shared init is what makes the bags mergeable). Within a bag we
sample without replacement, stratified by task (each task keeps `fraction` of its records, at
least one): our choice, since the paper says only that each bag is a distinct random subset. A
trained bag records the corpus lines it drew in `bag_lines.txt.gz` (`write_bag_lines`).

Determinism: every random choice here comes from `random.Random` seeded with a string built from
the user's seed (Python seeds string keys through SHA-512, the same on every platform and version),
never from global RNG state, so the same (data, fraction, seed) gives the same bag, batch order and
groups on any machine, and a resumed run recomputes exactly the order it was following. The bag
and batch order are the same as when the corpus was read whole (tests pin them).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import random
import sys
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobs import storage
from jobs.lifecycle import BadInput
from jobs.prompt import format_query
from jobs.protocol import CHARS_PER_TOKEN

DEFAULT_TASK = "default"
NO_IN_BATCH_NEG = "no_in_batch_neg"
SYMMETRIC_WITH_PROMPT = ("symmetric_sts", "symmetric_clustering")
NO_IN_BATCH_TYPES = ("symmetric_class", "symmetric_clustering")  # bge-full-data's *-no_in_batch_neg directories
FLAG_SUFFIXES = (".json", ".jsonl")  # the files FlagEmbedding reads from a training directory
BLOCK = 1 << 24


class BadData(ValueError):
    """A corpus problem, reported as `file:line: what is wrong`."""


@dataclass(frozen=True)
class Record:
    query: str
    positive: str
    negatives: tuple[str, ...] = ()
    task: str = DEFAULT_TASK
    instruction: str | None = None
    more_positives: tuple[str, ...] = ()  # FlagEmbedding's `pos` beyond the first
    positive_scores: tuple[float, ...] | None = None  # one per positive (`positive` first)
    negative_scores: tuple[float, ...] | None = None  # one per negative
    kind: str | None = None  # FlagEmbedding's `type`

    @property
    def positives(self) -> tuple[str, ...]:
        return (self.positive, *self.more_positives)

    @property
    def has_teacher_scores(self) -> bool:
        return self.positive_scores is not None and self.negative_scores is not None

    def canonical(self) -> str:
        """The record's identity for hashing; unchanged for records of our format (old hashes hold)."""
        fields = [self.query, self.positive, list(self.negatives), self.task, self.instruction]
        extra = [list(self.more_positives), self.positive_scores, self.negative_scores, self.kind]
        if any(extra):
            fields += [list(e) if isinstance(e, tuple) else e for e in extra]
        return json.dumps(fields, ensure_ascii=False)


def _check_texts(raw: dict, name: str, where: str, *, required: bool) -> int:
    value = raw.get(name)
    if value is None and not required:
        return 0
    if not isinstance(value, list) or not all(isinstance(t, str) and t.strip() for t in value) or (
            required and not value):
        raise BadData(f"{where}: '{name}' must be a {'non-empty ' if required else ''}list of non-empty strings")
    return len(value)


def _check_scores(raw: dict, name: str, count: int, where: str) -> None:
    value = raw.get(name)
    if value is not None and (
            not isinstance(value, list) or len(value) != count
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in value)):
        raise BadData(f"{where}: '{name}' must be a list of {count} numbers, one per text")


def _check_name(raw: dict, name: str, where: str) -> None:
    value = raw.get(name)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise BadData(f"{where}: '{name}' must be a non-empty string when given")


def _load(line: str, where: str) -> dict:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadData(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise BadData(f"{where}: expected a JSON object with 'query' and 'positive' (or FlagEmbedding's 'pos')")
    return raw


def _is_flag(raw: dict) -> bool:
    return "pos" in raw and "positive" not in raw


def check_record(raw: dict, where: str) -> str:
    """Check a parsed line as a record of either format; returns its task."""
    if not isinstance(raw.get("query"), str) or not raw["query"].strip():
        raise BadData(f"{where}: 'query' must be a non-empty string")
    if _is_flag(raw):
        positives = _check_texts(raw, "pos", where, required=True)
        negatives = _check_texts(raw, "neg", where, required=False)
        for name in ("prompt", "type", "task"):
            _check_name(raw, name, where)
        _check_scores(raw, "pos_scores", positives, where)
        _check_scores(raw, "neg_scores", negatives, where)
        return raw.get("task") or raw.get("prompt") or DEFAULT_TASK
    if not isinstance(raw.get("positive"), str) or not raw["positive"].strip():
        raise BadData(f"{where}: 'positive' must be a non-empty string")
    negatives = raw.get("negatives") or []
    if not isinstance(negatives, list) or not all(isinstance(n, str) and n.strip() for n in negatives):
        raise BadData(f"{where}: 'negatives' must be a list of non-empty strings")
    task = raw.get("task", DEFAULT_TASK)
    if not isinstance(task, str) or not task.strip():
        raise BadData(f"{where}: 'task' must be a non-empty string")
    _check_name(raw, "instruction", where)
    return task


def build_record(raw: dict) -> Record:
    """The Record of a line that check_record accepted (no checks: records are re-read this way)."""
    if _is_flag(raw):
        positives, negatives = raw["pos"], raw.get("neg") or []
        scores = raw.get("pos_scores"), raw.get("neg_scores")
        return Record(raw["query"], positives[0], tuple(negatives),
                      raw.get("task") or raw.get("prompt") or DEFAULT_TASK, raw.get("prompt"), tuple(positives[1:]),
                      None if scores[0] is None else tuple(float(v) for v in scores[0]),
                      None if scores[1] is None else tuple(float(v) for v in scores[1]), raw.get("type"))
    return Record(raw["query"], raw["positive"], tuple(raw.get("negatives") or ()), raw.get("task", DEFAULT_TASK),
                  raw.get("instruction"))


def parse_record(line: str, where: str) -> Record:
    raw = _load(line, where)
    check_record(raw, where)
    return build_record(raw)


# --- the corpus: a line-offset index over one JSONL file ------------------------------------------

class CorpusIndex(Sequence):
    """Every record of a JSONL file, checked once, kept as (line offset, task); records re-read on access."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = Path(path), name
        self.offsets = array("q")
        self.lines = array("q")  # 1-based line numbers, for messages
        self._task_ids = array("i")
        self._task_names: list[str] = []
        self._task_kinds: list[str | None] = []  # each task's FlagEmbedding type, from its first record
        self.untasked_flag_records = 0  # FlagEmbedding lines without `task`: grouped by prompt (open_corpus warns)
        self._handle = None
        self._scan()

    def _scan(self) -> None:
        task_index: dict[str, int] = {}
        position, number, carry = 0, 0, b""
        with open(self.path, "rb") as handle:
            while block := handle.read(BLOCK):
                parts = (carry + block).split(b"\n")
                carry = parts.pop()
                for part in parts:
                    number += 1
                    start, position = position, position + len(part) + 1
                    self._add(part, start, number, task_index)
        if carry:  # last line without a final newline
            self._add(carry, position, number + 1, task_index)
        if not self.offsets:
            raise BadData(f"{self.name}: no records; expected JSONL lines with 'query' and 'positive' (or 'pos')")

    def _add(self, raw: bytes, start: int, number: int, task_index: dict[str, int]) -> None:
        if not raw.strip():
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadData(f"{self.name}: not UTF-8 text (byte {start + exc.start})") from None
        where = f"{self.name}:{number}"
        raw = _load(line, where)
        name = check_record(raw, where)
        self.untasked_flag_records += _is_flag(raw) and "task" not in raw
        task = task_index.setdefault(name, len(task_index))
        if task == len(self._task_names):
            self._task_names.append(name)
            self._task_kinds.append(raw.get("type") if _is_flag(raw) else None)
        self.offsets.append(start)
        self.lines.append(number)
        self._task_ids.append(task)

    def __len__(self) -> int:
        return len(self.offsets)

    def task(self, i: int) -> str:
        return self._task_names[self._task_ids[i]]

    @property
    def tasks(self) -> list[str]:
        names = self._task_names
        return [names[t] for t in self._task_ids]

    @property
    def task_kinds(self) -> dict[str, str | None]:
        return dict(zip(self._task_names, self._task_kinds))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self._handle is None:
            self._handle = open(self.path, "rb")
        self._handle.seek(self.offsets[i])
        return build_record(json.loads(self._handle.readline()))

    def __iter__(self) -> Iterator[Record]:
        with open(self.path, "rb") as handle:
            for offset in self.offsets:
                handle.seek(offset)
                yield build_record(json.loads(handle.readline()))

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_handle"} | {"_handle": None}


def open_corpus(uri: str, cache_dir: Path | None = None) -> CorpusIndex:
    """Index a JSONL corpus at a local path or fsspec URI (a remote one is cached locally first)."""
    if not storage.exists(uri):
        raise BadData(f"{uri}: not found; give a JSONL file (local path or fsspec URI)")
    cache = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "planner-jobs"
    path = storage.cached_local_copy(uri, cache / "data") if storage.is_remote(uri) else storage.local_path(uri)
    index = CorpusIndex(path, uri)
    if index.untasked_flag_records:
        print(f"warning: {uri}: {index.untasked_flag_records} FlagEmbedding-format records have no 'task', so they are "
              "grouped by 'prompt', which merges files that share a prompt and splits a file with several "
              "(FlagEmbedding batches by file); convert the training directory with `python -m jobs.data "
              "import-flagembedding DIR -o corpus.jsonl` (or `planner data import-flagembedding`) to keep each file "
              "as its task", file=sys.stderr)
    return index


def read_corpus(uri: str) -> list[Record]:
    """Every record of a JSONL corpus (local path or fsspec URI), all checked; blank lines are skipped."""
    return list(open_corpus(uri))


@dataclass(frozen=True)
class Draw:
    """One sample of a corpus taken into a bag: its seed, and where its lines go."""
    name: str  # "bag", or "replay" for the old corpus of an incremental stage
    seed: int  # stratified_sample's: draw_seed(campaign seed, fraction)

    @property
    def lines_file(self) -> str:
        return f"{self.name}_lines.txt.gz"


class Bag(Sequence):
    """Chosen records of one or more corpus indices, in order; reads a record when it is asked for."""

    def __init__(self, parts: list[tuple[CorpusIndex, list[int]]], draws: Sequence[Draw] = ()):
        self.parts = [(corpus, array("q", indices)) for corpus, indices in parts]
        self.draws = list(draws)  # one per part when the bag was drawn by build_bag
        self._starts = []
        total = 0
        for _, indices in self.parts:
            self._starts.append(total)
            total += len(indices)
        self._len = total

    def __len__(self) -> int:
        return self._len

    def _locate(self, i: int) -> tuple[CorpusIndex, int]:
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        part = max(p for p, start in enumerate(self._starts) if start <= i)
        corpus, indices = self.parts[part]
        return corpus, indices[i - self._starts[part]]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        corpus, index = self._locate(i)
        return corpus[index]

    def __iter__(self) -> Iterator[Record]:
        for corpus, indices in self.parts:
            for index in indices:
                yield corpus[index]

    @property
    def tasks(self) -> list[str]:
        return [corpus.task(i) for corpus, indices in self.parts for i in indices]

    @property
    def task_kinds(self) -> dict[str, str | None]:
        kinds: dict[str, str | None] = {}
        for corpus, _ in reversed(self.parts):  # the first part's type wins where both have a task
            kinds |= corpus.task_kinds
        return kinds


def _tasks_of(records) -> list[str]:
    tasks = getattr(records, "tasks", None)
    return list(tasks) if tasks is not None else [r.task for r in records]


def _kinds_of(records) -> dict[str, str | None]:
    """Each task's FlagEmbedding type (its first record's)."""
    kinds = getattr(records, "task_kinds", None)
    if kinds is not None:
        return kinds
    found: dict[str, str | None] = {}
    for record in records:
        found.setdefault(record.task, record.kind)
    return found


def by_task(records, indices: list[int] | None = None) -> dict[str, list[int]]:
    tasks = _tasks_of(records)
    groups: dict[str, list[int]] = defaultdict(list)
    for i in range(len(tasks)) if indices is None else indices:
        groups[tasks[i]].append(i)
    return dict(sorted(groups.items()))


def stratified_sample(records, fraction: float, seed: int, *, salt: str = "bag") -> list[int]:
    """Indices of a sample without replacement of `fraction` of each task (at least one record per task)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    chosen: list[int] = []
    for task, members in by_task(records).items():
        keep = max(1, round(len(members) * fraction))
        chosen += random.Random(f"{salt}:{seed}:{task}").sample(members, keep)
    return sorted(chosen)


def draw_seed(seed: int, fraction: float, salt: str = "bag") -> int:
    """The seed of one bag's draw: the campaign's `seed` and the bag's identity, its `fraction` (a 31-bit
    integer, so `stratified_sample(corpus, fraction, draw_seed(seed, fraction))` redraws a bag by hand)."""
    digest = hashlib.sha256(f"draw:{salt}:{seed}:{float(fraction)!r}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1


def write_bag_lines(bag: Bag, output: str) -> dict:
    """Write each draw's corpus lines to OUTPUT/<draw>_lines.txt.gz (gzip text, one 1-based line number of
    the corpus file a line, ascending; byte-reproducible: no timestamp) and return the model card's rows."""
    rows = {}
    for (corpus, indices), draw in zip(bag.parts, bag.draws, strict=True):
        text = "".join(f"{corpus.lines[i]}\n" for i in indices).encode()
        storage.write_bytes_atomic(storage.join(output, draw.lines_file), gzip.compress(text, mtime=0))
        rows[f"{draw.name} draw seed"] = draw.seed
        rows[f"{draw.name} corpus lines"] = f"{len(indices)} (listed in {draw.lines_file})"
    return rows


def records_digest(records) -> str:
    """sha256 over the records' canonical lines, streamed (a Bag is read record by record)."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(record.canonical().encode())
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class Sampler:
    """How a bag becomes batches and groups (FlagEmbedding's AbsEmbedderSameDatasetTrainDataset, FlagOpen/
    FlagEmbedding FlagEmbedding/abc/finetune/embedder/AbsDataset.py: _get_file_batch_size, refresh_epoch,
    _create_batch_data)."""
    halve_symmetric: bool  # a task of a symmetric type (sts, class, clustering) gets batches of half the size
    drop_last: bool  # each task's partial last batch sits the epoch out (a task smaller than a batch: all of it)
    repeat_negatives: bool  # a group short of negatives is filled by drawing them again; negatives always shuffled


SAMPLERS = {
    # What the BOOM scripts ran (--same_dataset_within_batch, --dataloader_drop_last).
    "flagembedding": Sampler(halve_symmetric=True, drop_last=True, repeat_negatives=True),
    # Ours before: every record of the bag trains every epoch (a remainder of one joins the previous batch),
    # and a group keeps the negatives it has, in file order, with no copies; better for small bags or tasks,
    # which FlagEmbedding's drop-last leaves out whole, and for data with few negatives.
    "keep-all": Sampler(halve_symmetric=False, drop_last=False, repeat_negatives=False),
}
DEFAULT_SAMPLER = "flagembedding"


def sampler_of(config) -> Sampler:
    """The trainer config's sampler: its `sampler` name (jobs.train_bag), FlagEmbedding's when it names none."""
    name = getattr(config, "sampler", None) or DEFAULT_SAMPLER
    if name not in SAMPLERS:
        raise BadInput(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name]


def task_batch_size(kind: str | None, batch_size: int, sampler: Sampler) -> int:
    """FlagEmbedding's _get_file_batch_size: symmetric data gets half the batch (at least 2 queries here)."""
    if sampler.halve_symmetric and kind is not None and "symmetric" in kind:
        return max(2, batch_size // 2)
    return batch_size


def epoch_batches(records, batch_size: int, seed: int, epoch: int,
                  sampler: Sampler = SAMPLERS[DEFAULT_SAMPLER]) -> list[list[int]]:
    """One epoch's batches: each from a single task (in-batch negatives stay meaningful), shuffled across tasks.

    Records are shuffled within their task and cut into batches of `batch_size` (half that for a
    symmetric task under `halve_symmetric`). With `drop_last` a task's partial last batch is left out
    of the epoch, as FlagEmbedding does; without it a remainder of fewer than two records joins the
    previous batch (a lone query has no in-batch negative). The order of all batches is then shuffled.
    Depends only on (records' tasks and types, batch_size, seed, epoch, sampler).
    """
    batches: list[list[int]] = []
    kinds = _kinds_of(records)
    for task, members in by_task(records).items():
        size = task_batch_size(kinds.get(task), batch_size, sampler)
        members = list(members)
        random.Random(f"order:{seed}:{epoch}:{task}").shuffle(members)
        chunks = [members[i:i + size] for i in range(0, len(members), size)]
        if sampler.drop_last:
            chunks = [chunk for chunk in chunks if len(chunk) == size]
        elif len(chunks) > 1 and len(chunks[-1]) < 2:
            remainder = chunks.pop()
            chunks[-1] += remainder
        batches += chunks
    random.Random(f"batches:{seed}:{epoch}").shuffle(batches)
    return batches


# --- a query's group: one positive and up to group_size - 1 hard negatives -----------------------

@dataclass(frozen=True)
class Group:
    query: str  # with its instruction prompt applied later by the trainer
    instruction: str | None
    documents: tuple[str, ...]  # the positive first, then the negatives
    teacher_scores: tuple[float, ...] | None  # one per document, when the record has them
    prompt_documents: bool  # FlagEmbedding's symmetric_sts/_clustering: documents carry the query prompt


def group_size_for(record: Record, group_size: int) -> int:
    """FlagEmbedding's _get_train_group_size: `only_1neg` -> 2, `symmetric_class` -> min(len(neg)+1, G)."""
    if record.kind == "only_1neg":
        return 2
    if record.kind == "symmetric_class":
        return min(len(record.negatives) + 1, group_size)
    return group_size


def make_group(record: Record, group_size: int, key: str, sampler: Sampler = SAMPLERS[DEFAULT_SAMPLER]) -> Group:
    """The record's group for one epoch: a positive (drawn when there are several) and up to
    group_size - 1 negatives. With `repeat_negatives` (FlagEmbedding's _create_batch_data) the
    negatives are a seeded random sample in random order, and when there are fewer than needed the
    list is repeated ceil((group_size - 1) / count) times and sampled from, so copies fill the group
    (m3 distillation masks a group's earlier members, so the order matters); without it, a sample
    without replacement when there are more, else all of them in file order.
    A record without negatives gets a group of its positive alone (FlagEmbedding cannot train those).
    `key` names the draw (seed, epoch, position in the bag) so it is reproducible."""
    size = group_size_for(record, group_size)
    positives, negatives = record.positives, record.negatives
    rng = random.Random(key)
    if sampler.repeat_negatives:  # FlagEmbedding's draws, call for call: the same rng state picks the same group
        p = rng.choice(range(len(positives)))
        copies = math.ceil((size - 1) / len(negatives)) if 0 < len(negatives) < size - 1 else 1
        chosen = rng.sample(list(range(len(negatives))) * copies, size - 1) if negatives else []
    else:
        p = rng.randrange(len(positives)) if len(positives) > 1 else 0
        chosen = rng.sample(range(len(negatives)), size - 1) if len(negatives) > size - 1 else list(range(len(negatives)))
    scores = None
    if record.has_teacher_scores:
        scores = (record.positive_scores[p], *(record.negative_scores[j] for j in chosen))
    return Group(record.query, record.instruction, (positives[p], *(negatives[j] for j in chosen)), scores,
                 record.kind in SYMMETRIC_WITH_PROMPT)


def in_batch_negatives(task: str, kind: str | None = None) -> bool:
    """Whether a batch of `task` (its records of FlagEmbedding type `kind`) scores queries against every
    document of the batch (else only against their own group): not when a directory or file of the task's
    name ends in `no_in_batch_neg` (FlagEmbedding's flag, the file's extension aside) or the type is a
    classification or clustering one."""
    stems = [part.rsplit(".", 1)[0] if part.endswith(FLAG_SUFFIXES) else part for part in task.split("/")]
    return kind not in NO_IN_BATCH_TYPES and not any(stem.endswith(NO_IN_BATCH_NEG) for stem in stems)


# --- a bag and its schedule: which records each optimizer step trains on ---------------------------
# `config` is the trainer's (jobs.train_bag): data, fraction, seed, replay_data, replay_fraction,
# cache_dir, batch_size, grad_accum, epochs, max_steps, group_size and, when it has one, sampler are read.

def build_bag(config) -> Bag:
    """The bag of `config` (data, fraction, seed, replay_data, replay_fraction, cache_dir): its own draw."""
    corpus = open_corpus(config.data, Path(config.cache_dir))
    draws = [Draw("bag", draw_seed(config.seed, config.fraction))]
    parts = [(corpus, stratified_sample(corpus, config.fraction, draws[0].seed))]
    if config.replay_data:
        old = open_corpus(config.replay_data, Path(config.cache_dir))
        draws.append(Draw("replay", draw_seed(config.seed, config.replay_fraction, "replay")))
        parts.append((old, stratified_sample(old, config.replay_fraction, draws[1].seed, salt="replay")))
    return Bag(parts, draws)


def schedule(bag, config) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps). A bag with no full batch is bad input; records that sit
    every epoch out (drop-last) are reported on stderr."""
    sampler = sampler_of(config)
    batches = epoch_batches(bag, config.batch_size, config.seed, 0, sampler)
    if not batches:
        raise BadInput(f"the bag of {len(bag)} records has no full batch: every task has fewer records than a batch "
                       f"of {config.batch_size} (half that for symmetric data); lower --batch-size or raise --fraction")
    left_out = len(bag) - sum(map(len, batches))
    if left_out:
        tasks = by_task(bag)
        kinds = _kinds_of(bag)
        whole = [t for t, m in tasks.items() if len(m) < task_batch_size(kinds.get(t), config.batch_size, sampler)]
        print(f"note: {left_out} of {len(bag)} records sit out each epoch (each task's partial last batch is dropped, "
              f"as FlagEmbedding does; {len(whole)} of {len(tasks)} tasks are smaller than a batch and never train)",
              file=sys.stderr)
    per_epoch = math.ceil(len(batches) / config.grad_accum)
    return per_epoch, config.max_steps or config.epochs * per_epoch


def step_indices(bag, config, step: int, per_epoch: int, cache: dict) -> tuple[int, list[list[int]]]:
    """(epoch, the bag indices of each batch of optimizer step `step`): a pure function of the step."""
    epoch, index = divmod(step, per_epoch)
    if epoch not in cache:
        cache.clear()
        cache[epoch] = epoch_batches(bag, config.batch_size, config.seed, epoch, sampler_of(config))
    return epoch, cache[epoch][index * config.grad_accum:(index + 1) * config.grad_accum]


def step_batches(bag, config, step: int, per_epoch: int, cache: dict) -> list[list]:
    """The records of each batch of optimizer step `step`."""
    return [[bag[i] for i in batch] for batch in step_indices(bag, config, step, per_epoch, cache)[1]]


@dataclass(frozen=True)
class Batch:
    task: str
    groups: list[Group]  # in batch order; rank r encodes groups[r::world]
    in_batch: bool = True  # queries scored against every document of the batch (in_batch_negatives)


def step_groups(bag, config, step: int, per_epoch: int, cache: dict) -> list[Batch]:
    epoch, batches = step_indices(bag, config, step, per_epoch, cache)
    sampler = sampler_of(config)
    out = []
    for batch in batches:
        records = [bag[i] for i in batch]
        out.append(Batch(records[0].task, [make_group(r, config.group_size, f"group:{config.seed}:{epoch}:{i}", sampler)
                                           for i, r in zip(batch, records)],
                         in_batch_negatives(records[0].task, records[0].kind)))
    return out


# --- FlagEmbedding training directories into one corpus ---------------------------------------------

def flagembedding_files(sources: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """Each training file FlagEmbedding would read from `sources` (directories, searched recursively, or
    .json/.jsonl files) with its task, "directory/file": its path from the source directory, which keeps
    the directory FlagEmbedding reads `no_in_batch_neg` from (a file directly in SOURCE, or given itself,
    is named with its own directory's name), so `jsonl_output` and the four directories the BOOM script
    passes give the same tasks."""
    found: list[tuple[Path, str]] = []
    for source in map(Path, sources):
        if source.is_file():
            if not source.name.endswith(FLAG_SUFFIXES):
                raise BadData(f"{source}: not a .json or .jsonl training file")
            found.append((source, f"{source.resolve().parent.name}/{source.name}"))
        elif source.is_dir():
            files = sorted(p for p in source.rglob("*") if p.is_file() and p.name.endswith(FLAG_SUFFIXES))
            if not files:
                raise BadData(f"{source}: no .json or .jsonl training files under it")
            for path in files:
                task = path.relative_to(source).as_posix()
                found.append((path, task if "/" in task else f"{source.resolve().name}/{task}"))
        else:
            raise BadData(f"{source}: not found; give FlagEmbedding training directories or files")
    seen: dict[str, Path] = {}
    for path, task in found:
        if task in seen:
            raise BadData(f"{path} and {seen[task]} would both be task {task!r}; convert them separately")
        seen[task] = path
    return found


def import_flagembedding(sources: Iterable[str | Path], output: str | Path) -> list[dict]:
    """Convert FlagEmbedding training data into one JSONL corpus whose every line carries its file's task.

    Every line is checked (jobs.data's formats), its `task` set to its file's (flagembedding_files), and
    a file must keep one `type` (FlagEmbedding batches by file and asserts one type per batch). The
    output is written to a temporary file beside it and renamed, so a failure leaves nothing behind.
    Returns one row per task: task, records, type, whether it trains with in-batch negatives, prompts.
    """
    output, sources = Path(output), list(sources)
    files = flagembedding_files(sources)
    if any(path.resolve() == output.resolve() for path, _ in files):
        raise BadData(f"{output}: the output is one of the inputs; write it outside the training directories")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    rows = []
    try:
        with open(partial, "w", encoding="utf-8") as out:
            for path, task in files:
                records, kind, prompts = 0, None, set()
                with open(path, "rb") as handle:
                    for number, raw_line in enumerate(handle, start=1):
                        where = f"{path}:{number}"
                        try:
                            line = raw_line.decode("utf-8")
                        except UnicodeDecodeError:
                            raise BadData(f"{where}: not UTF-8 text") from None
                        if not line.strip():
                            continue
                        raw = _load(line, where)
                        check_record(raw, where)
                        if records and raw.get("type") != kind:
                            raise BadData(f"{where}: type {raw.get('type')!r} differs from the file's {kind!r}; "
                                          "FlagEmbedding batches by file, so give each type its own file")
                        kind, records = raw.get("type"), records + 1
                        prompts.add(raw.get("prompt") if _is_flag(raw) else raw.get("instruction"))
                        out.write(json.dumps(raw | {"task": task}, ensure_ascii=False) + "\n")
                if records:  # FlagEmbedding skips an empty file too
                    rows.append({"task": task, "records": records, "type": kind,
                                 "in_batch_negatives": in_batch_negatives(task, kind), "prompts": len(prompts)})
        if not rows:
            raise BadData("no records in " + ", ".join(str(s) for s in sources))
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.data import-flagembedding DIR [DIR|FILE ...] -o corpus.jsonl`: exit 0, or 2 with one line."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m jobs.data", description="Training corpora.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("import-flagembedding", help=import_flagembedding.__doc__.split("\n")[0])
    convert.add_argument("sources", nargs="+", help="FlagEmbedding training directories (searched recursively) or files")
    convert.add_argument("-o", "--output", required=True, help="the corpus JSONL to write")
    args = parser.parse_args(argv)
    try:
        rows = import_flagembedding(args.sources, args.output)
    except (BadData, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    width = max(len(row["task"]) for row in rows)
    print(f"{'task':<{width}}  {'records':>8}  {'type':<20}  in-batch negatives  prompts")
    for row in rows:
        print(f"{row['task']:<{width}}  {row['records']:>8}  {str(row['type'] or '-'):<20}  "
              f"{'yes' if row['in_batch_negatives'] else 'no':<18}  {row['prompts']}")
    print(f"{sum(row['records'] for row in rows)} records in {len(rows)} tasks written to {args.output}",
          file=sys.stderr)
    return 0


# --- a cheap estimate for the planner ---------------------------------------------------------------

@dataclass(frozen=True)
class SampleStats:
    records: int  # estimated (exact when `exact`)
    exact: bool  # the whole file was read
    file_bytes: int
    sampled_records: int
    mean_record_bytes: float
    mean_query_tokens: float  # instruction prompt included, truncated at query_max_len
    mean_doc_tokens: float  # per document of a group, truncated at doc_max_len
    mean_group_docs: float  # documents per query: 1 positive + min(negatives, group_size - 1)
    mean_tokens_per_record: float  # query + its group's documents: what one record costs to train on
    teacher_scores: float  # share of sampled records carrying pos_scores and neg_scores
    tasks_seen: int


def sample_stats(uri: str, *, sample_records: int = 4000, probes: int = 32, group_size: int = 8,
                 query_max_len: int = 512, doc_max_len: int = 512,
                 sampler: Sampler = SAMPLERS[DEFAULT_SAMPLER]) -> SampleStats:
    """Estimate a corpus's record count and token lengths from about `sample_records` lines read at
    `probes` evenly spread offsets (local path or fsspec URI; only those bytes are read) plus the
    file's size. Tokens are estimated as characters / CHARS_PER_TOKEN (no tokenizer); the query counts
    the instruction prompt the job puts before it (jobs.prompt). Raises BadData if no line parses."""
    import fsspec

    if not storage.exists(uri):
        raise BadData(f"{uri}: not found; give a JSONL file (local path or fsspec URI)")
    fs, path = fsspec.core.url_to_fs(str(uri))
    size = fs.size(path)
    per_probe = max(1, math.ceil(sample_records / probes))
    lines: list[bytes] = []
    read_bytes = 0
    exact = False
    with fs.open(path, "rb") as handle:
        if size <= 64 * 1024 * 1024 and size <= sample_records * 4096:
            data = handle.read()
            lines, exact = [line for line in data.split(b"\n") if line.strip()], True
        else:
            for k in range(probes):
                handle.seek(size * k // probes)
                if k:
                    handle.readline()  # finish the line the offset fell into
                for _ in range(per_probe):
                    line = handle.readline()
                    if not line:
                        break
                    if line.strip():
                        lines.append(line)
                        read_bytes += len(line)
    records, query_tokens, doc_tokens, group_docs, scored, tasks = 0, 0.0, 0.0, 0.0, 0, set()
    first_problem = None
    for number, line in enumerate(lines, start=1):
        try:
            record = parse_record(line.decode("utf-8", errors="replace"),
                                  f"{uri}:{number}" if exact else f"{uri}:sample {number}")
        except BadData as exc:
            first_problem = first_problem or exc
            continue
        records += 1
        query_tokens += min(query_max_len, len(format_query(record.query, record.instruction)) / CHARS_PER_TOKEN + 1)
        group = group_size_for(record, group_size)
        docs = [record.positive, *record.negatives[:group - 1]]
        doc_tokens += sum(min(doc_max_len, len(d) / CHARS_PER_TOKEN + 1) for d in docs) / len(docs)
        # as make_group builds it: a group short of negatives is filled with copies by FlagEmbedding's sampler
        group_docs += group if sampler.repeat_negatives and record.negatives else len(docs)
        scored += record.has_teacher_scores
        tasks.add(record.task)
    if not records:
        raise BadData(str(first_problem) if first_problem else f"{uri}: no parsable records in the sample")
    mean_bytes = (sum(len(line) + 1 for line in lines) / len(lines)) if exact else read_bytes / len(lines)
    count = records if exact else max(records, round(size / mean_bytes))
    mean_query, mean_doc, mean_docs = query_tokens / records, doc_tokens / records, group_docs / records
    return SampleStats(count, exact, size, records, mean_bytes, mean_query, mean_doc, mean_docs,
                       mean_query + mean_doc * mean_docs, scored / records, len(tasks))


if __name__ == "__main__":
    raise SystemExit(main())
