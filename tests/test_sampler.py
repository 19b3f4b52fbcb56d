"""The sampler matches FlagEmbedding's same-dataset sampler by default (issue 22): symmetric data in half batches,
each task's partial batch dropped, negatives repeated at random to fill a group, draw for draw.

The reference below is ported from FlagOpen/FlagEmbedding at commit 7ed43d67 (MIT License),
FlagEmbedding/abc/finetune/embedder/AbsDataset.py, AbsEmbedderSameDatasetTrainDataset: _get_file_batch_size,
refresh_epoch (one process), _get_train_group_size and _create_batch_data (module `random` passed in as `rng`,
_shuffle_text's default shuffle_ratio 0 left out). FlagEmbedding is a reference here, not a dependency.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from jobs import data
from jobs.data import Record
from jobs.lifecycle import BadInput

# --- FlagEmbedding's reference, ported -----------------------------------------------------------

def flag_get_file_batch_size(types: list[str | None], default_batch_size: int) -> int:
    if types[0] is not None:
        if "symmetric" in types[0]:
            return default_batch_size // 2  # make the symmetric data have smaller batch size
    return default_batch_size


def flag_refresh_epoch_sizes(dataset_lengths: list[int], batch_size_idxs: list[int], num_processes: int = 1):
    """The batches refresh_epoch cuts from each dataset (their lengths), shuffling aside."""
    batch_datas = []
    for dataset_inx, length in enumerate(dataset_lengths):
        cur_batch_size = batch_size_idxs[dataset_inx] * num_processes
        for start_index in range(0, length, cur_batch_size):
            if length - start_index < cur_batch_size:
                break
            batch_datas.append((dataset_inx, cur_batch_size))
    return batch_datas


def flag_get_train_group_size(batch_raw_data: dict, train_group_size: int):
    if "type" in batch_raw_data:
        data_type = batch_raw_data["type"][0]
        if data_type in ["only_1neg"]:
            return 2, data_type
        elif data_type in ["symmetric_class"]:
            return min(len(batch_raw_data["neg"][0]) + 1, train_group_size), data_type
        else:
            return train_group_size, data_type
    return train_group_size, None


def flag_create_batch_data(batch_raw_data: dict, args_train_group_size: int, rng):
    passages, teacher_scores = [], []
    train_group_size, data_type = flag_get_train_group_size(batch_raw_data, args_train_group_size)
    for i in range(len(batch_raw_data["query"])):
        tmp_passages = []
        pos_idx = rng.choice(list(range(len(batch_raw_data["pos"][i]))))
        tmp_passages.append(batch_raw_data["pos"][i][pos_idx])
        neg_all_idx = list(range(len(batch_raw_data["neg"][i])))
        if len(batch_raw_data["neg"][i]) < train_group_size - 1:
            num = math.ceil((train_group_size - 1) / len(batch_raw_data["neg"][i]))
            neg_idxs = rng.sample(neg_all_idx * num, train_group_size - 1)
        else:
            neg_idxs = rng.sample(neg_all_idx, train_group_size - 1)
        for neg_idx in neg_idxs:
            tmp_passages.append(batch_raw_data["neg"][i][neg_idx])
        if "pos_scores" in batch_raw_data and batch_raw_data["pos_scores"][i] is not None:
            teacher_scores.append(batch_raw_data["pos_scores"][i][pos_idx])
        for neg_idx in neg_idxs:
            if "neg_scores" in batch_raw_data and batch_raw_data["neg_scores"][i] is not None:
                teacher_scores.append(batch_raw_data["neg_scores"][i][neg_idx])
        passages.extend(tmp_passages)
    return passages, teacher_scores or None


# --- a hand-made corpus ---------------------------------------------------------------------------

def flag_line(task: str, i: int, kind: str | None, positives: int, negatives: int, scores: bool = False) -> dict:
    line = {"query": f"q {task} {i}", "pos": [f"p {task} {i} {k}" for k in range(positives)],
            "neg": [f"n {task} {i} {k}" for k in range(negatives)], "task": task}
    if kind:
        line["type"] = kind
    if scores:
        line["pos_scores"] = [0.9 - k / 10 for k in range(positives)]
        line["neg_scores"] = [k / 100 for k in range(negatives)]
    return line


CORPUS = {  # task: (records, type)
    "retrieval": (23, "normal"),
    "sts": (13, "symmetric_sts"),
    "classification": (9, "symmetric_class"),
    "tiny": (3, None),
}


def corpus_records() -> list[Record]:
    return [data.build_record(flag_line(task, i, kind, 1, 3)) for task, (n, kind) in CORPUS.items() for i in range(n)]


def test_batches_are_cut_as_flagembedding_cuts_them():
    records = corpus_records()
    tasks = sorted(CORPUS)
    sizes = [flag_get_file_batch_size([CORPUS[t][1]], 6) for t in tasks]
    reference = Counter((tasks[d], size) for d, size in flag_refresh_epoch_sizes([CORPUS[t][0] for t in tasks], sizes))
    for epoch in range(3):
        batches = data.epoch_batches(records, 6, seed=0, epoch=epoch)
        assert Counter((records[b[0]].task, len(b)) for b in batches) == reference
        assert all(len({records[i].task for i in b}) == 1 for b in batches)
        assert len({i for b in batches for i in b}) == sum(map(len, batches))  # without replacement
    assert reference == {("retrieval", 6): 3, ("sts", 3): 4, ("classification", 3): 3}  # tiny (3 < 6) sits out
    keep_all = data.epoch_batches(records, 6, seed=0, epoch=0, sampler=data.SAMPLERS["keep-all"])
    assert sorted(i for b in keep_all for i in b) == list(range(len(records)))  # the option: every record trains


RECORDS = [  # (type, positives, negatives, teacher scores)
    (None, 1, 12, False), (None, 2, 3, True), ("normal", 3, 7, True), ("normal", 1, 1, False),
    ("only_1neg", 1, 1, True), ("only_1neg", 2, 4, False), ("symmetric_class", 1, 4, False),
    ("symmetric_class", 1, 30, False), ("symmetric_clustering", 1, 5, False), ("symmetric_sts", 2, 2, False),
]


@pytest.mark.parametrize("kind, positives, negatives, scores", RECORDS)
def test_groups_are_flagembeddings_draw_for_draw(kind, positives, negatives, scores):
    line = flag_line("t", 0, kind, positives, negatives, scores)
    record = data.build_record(line)
    raw = {key: [value] for key, value in line.items()}
    for key in (f"group:0:{epoch}:{i}" for epoch in range(3) for i in range(20)):
        group = data.make_group(record, 8, key)
        passages, teacher = flag_create_batch_data(raw, 8, random.Random(key))
        assert list(group.documents) == passages
        assert (None if group.teacher_scores is None else list(group.teacher_scores)) == teacher
        assert group.prompt_documents == (kind in ("symmetric_sts", "symmetric_clustering"))


def test_a_short_group_is_filled_with_copies_at_random():
    record = data.build_record(flag_line("t", 0, None, 1, 3))
    groups = [data.make_group(record, 8, f"k{i}") for i in range(200)]
    assert all(len(g.documents) == 8 for g in groups)
    counts = [Counter(g.documents[1:]) for g in groups]
    assert all(set(c) == set(record.negatives) and max(c.values()) <= 3 for c in counts)  # 7 of the 3 x 3 copies
    assert len({g.documents for g in groups}) > 20  # the order is drawn too
    keep_all = data.make_group(record, 8, "k0", data.SAMPLERS["keep-all"])
    assert keep_all.documents == (record.positive, *record.negatives)  # the option: as given, no copies


def test_the_job_uses_flagembeddings_sampler_unless_told(tmp_path, capsys):
    records = corpus_records()
    config = SimpleNamespace(batch_size=6, seed=0, grad_accum=1, epochs=1, max_steps=None, group_size=8)
    assert data.sampler_of(config) == data.SAMPLERS["flagembedding"]
    per_epoch, total = data.schedule(records, config)
    assert per_epoch == total == 10  # 3 + 4 + 3: 23 - 5, 13 - 1, 9 and 3 - 3 records train
    note = capsys.readouterr().err
    assert "9 of 48 records sit out each epoch" in note and "1 of 4 tasks are smaller than a batch" in note
    assert data.schedule(records, SimpleNamespace(**vars(config), sampler="keep-all"))[0] == 9  # 4 + 2 + 2 + 1
    with pytest.raises(BadInput, match="has no full batch"):
        data.schedule(records[:20], SimpleNamespace(**vars(config) | {"batch_size": 32}))
    with pytest.raises(BadInput, match="--sampler must be one of flagembedding, keep-all"):
        data.sampler_of(SimpleNamespace(sampler="nested"))
