"""bge-full-data read the authors' way (issue 22): a FlagEmbedding training directory converted into one corpus
whose tasks are its files, classification and clustering trained without in-batch negatives, the loss equal to
FlagEmbedding's on the same batch.

The sample (tests/data/flagembedding_sample) is FlagEmbedding's own example data in bge-full-data's layout.
The reference functions below are ported from FlagOpen/FlagEmbedding at commit 7ed43d67 (MIT License),
FlagEmbedding/abc/finetune/embedder/AbsModeling.py (get_local_score, _compute_no_in_batch_neg_loss,
_compute_in_batch_neg_loss without teacher scores) and FlagEmbedding/finetune/embedder/decoder_only/base/
modeling.py (compute_score, compute_loss); FlagEmbedding is a reference here, not a dependency.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from jobs import data, loss, train_bag, train_config

SAMPLE = Path(__file__).parent / "data" / "flagembedding_sample"
TEMPERATURE = 0.02


# --- FlagEmbedding's reference, ported -----------------------------------------------------------

def flag_compute_score(q_reps, p_reps, temperature=TEMPERATURE):
    scores = torch.matmul(q_reps, p_reps.transpose(0, 1)) / temperature
    return scores.view(q_reps.size(0), -1)


def flag_get_local_score(q_reps, p_reps, all_scores):
    group_size = p_reps.size(0) // q_reps.size(0)
    indices = torch.arange(0, q_reps.size(0), device=q_reps.device) * group_size
    specific_scores = []
    for i in range(group_size):
        specific_scores.append(all_scores[torch.arange(q_reps.size(0), device=q_reps.device), indices + i])
    return torch.stack(specific_scores, dim=1).view(q_reps.size(0), -1)


def flag_no_in_batch_neg_loss(q_reps, p_reps):
    local_scores = flag_get_local_score(q_reps, p_reps, flag_compute_score(q_reps, p_reps))
    local_targets = torch.zeros(local_scores.size(0), device=local_scores.device, dtype=torch.long)
    return torch.nn.CrossEntropyLoss(reduction="mean")(local_scores, local_targets)


def flag_in_batch_neg_loss(q_reps, p_reps):
    group_size = p_reps.size(0) // q_reps.size(0)
    scores = flag_compute_score(q_reps, p_reps)
    targets = torch.arange(q_reps.size(0), device=q_reps.device, dtype=torch.long) * group_size
    return torch.nn.CrossEntropyLoss(reduction="mean")(scores, targets)


# --- the conversion -------------------------------------------------------------------------------

EXPECTED = {  # task: (records, type, in-batch negatives)
    "classification-no_in_batch_neg/AmazonClassification.jsonl": (10, "symmetric_class", False),
    "classification-no_in_batch_neg/Banking77Classification.jsonl": (10, "symmetric_class", False),
    "clustering-no_in_batch_neg/arXiv_title.jsonl": (10, "symmetric_clustering", False),
    "clustering-no_in_batch_neg/bioRXiv_title.jsonl": (10, "symmetric_clustering", False),
    "retrieval/msmarco.jsonl": (6, "normal", True),
    "retrieval/nli.jsonl": (6, "only_1neg", True),
    "retrieval/nq.jsonl": (6, "normal", True),
    "sts/sts.jsonl": (6, "symmetric_sts", True),
}


@pytest.fixture
def converted(tmp_path) -> Path:
    output = tmp_path / "corpus.jsonl"
    rows = data.import_flagembedding([SAMPLE], output)
    assert {r["task"]: (r["records"], r["type"], r["in_batch_negatives"]) for r in rows} == EXPECTED
    return output


def test_the_converter_keeps_each_file_as_its_task(converted, tmp_path, capsys):
    index = data.open_corpus(str(converted))
    assert "warning" not in capsys.readouterr().err
    assert {task: index.tasks.count(task) for task in set(index.tasks)} == {t: n for t, (n, _, _) in EXPECTED.items()}
    # the same tasks whether the root or the directories the authors pass are given
    again = tmp_path / "again.jsonl"
    data.import_flagembedding([SAMPLE / "retrieval", SAMPLE / "sts" / "sts.jsonl",
                               SAMPLE / "classification-no_in_batch_neg", SAMPLE / "clustering-no_in_batch_neg"], again)
    assert sorted(data.open_corpus(str(again)).tasks) == sorted(index.tasks)


def test_flagembedding_lines_without_a_task_get_a_warning_naming_the_fix(tmp_path, capsys):
    """Concatenated as is, tasks come from prompts: msmarco and nq share one and are merged into one task."""
    joined = tmp_path / "joined.jsonl"
    joined.write_text("".join(path.read_text() for path in sorted(SAMPLE.rglob("*.jsonl"))))
    index = data.open_corpus(str(joined))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "64 FlagEmbedding-format records have no 'task'" in err
    assert "python -m jobs.data import-flagembedding DIR -o corpus.jsonl" in err
    assert len(set(index.tasks)) < len(EXPECTED)
    # even so, the type keeps classification and clustering batches free of in-batch negatives
    kinds = {index.task(i): index[i].kind for i in range(len(index))}
    config = train_config.Config(model="m", data=str(joined), fraction=1.0, seed=0, output="o", batch_size=4,
                              cache_dir=str(tmp_path))
    bag = data.build_bag(config)
    per_epoch, _ = data.schedule(bag, config)
    batches = [b for step in range(per_epoch) for b in data.step_groups(bag, config, step, per_epoch, {})]
    assert {kinds[b.task] for b in batches if not b.in_batch} == {"symmetric_class", "symmetric_clustering"}
    assert all(b.in_batch for b in batches if kinds[b.task] not in ("symmetric_class", "symmetric_clustering"))


def test_classification_and_clustering_train_without_in_batch_negatives(converted, tmp_path):
    """Every batch of the converted sample, scored with our loss and with FlagEmbedding's on the same embeddings."""
    config = train_config.Config(model="m", data=str(converted), fraction=1.0, seed=0, output="o", batch_size=4,
                              cache_dir=str(tmp_path))
    bag = data.build_bag(config)
    per_epoch, _ = data.schedule(bag, config)
    generator = torch.Generator().manual_seed(0)
    seen, gaps = set(), []
    for step in range(per_epoch):
        for batch in data.step_groups(bag, config, step, per_epoch, {}):
            n, size = len(batch.groups), len(batch.groups[0].documents)
            assert all(len(g.documents) == size for g in batch.groups)
            # float64: a loss near 1e-3 is summed differently by the two (logsumexp over masked vs local scores),
            # and float32 leaves it equal to ~5e-5 relative only (it failed rel=1e-6 on torch 2.13's CPU kernels)
            q = F.normalize(torch.randn(n, 16, generator=generator, dtype=torch.float64), dim=-1)
            d = F.normalize(torch.randn(n * size, 16, generator=generator, dtype=torch.float64), dim=-1)
            ours = loss.info_nce(q, d, loss.batch_layout(batch, 1), TEMPERATURE)
            no_in_batch, in_batch = flag_no_in_batch_neg_loss(q, d), flag_in_batch_neg_loss(q, d)
            assert batch.in_batch == EXPECTED[batch.task][2]
            assert ours.item() == pytest.approx((in_batch if batch.in_batch else no_in_batch).item(), rel=1e-12)
            assert in_batch.item() > no_in_batch.item()  # other groups' documents only add to the denominator
            gaps.append(in_batch.item() - no_in_batch.item())
            seen.add(batch.task)
    assert {t for t in EXPECTED if not EXPECTED[t][2]} <= seen
    assert max(gaps) > 0.1  # the choice matters


def test_the_type_alone_turns_in_batch_negatives_off():
    assert not data.in_batch_negatives("banking", "symmetric_class")
    assert not data.in_batch_negatives("arxiv", "symmetric_clustering")
    assert not data.in_batch_negatives("classification-no_in_batch_neg/x.jsonl", None)
    assert not data.in_batch_negatives("my-no_in_batch_neg.jsonl", "normal")  # FlagEmbedding's file flag
    assert data.in_batch_negatives("retrieval/msmarco.jsonl", "normal")
    assert data.in_batch_negatives("sts/sts.jsonl", "symmetric_sts")


def test_the_converted_sample_trains(converted, tiny_model_dir, tmp_path):
    output = tmp_path / "bag"
    assert train_bag.main(["--model", str(tiny_model_dir), "--data", str(converted), "--fraction", "1.0", "--seed",
                           "0", "--output", str(output), "--batch-size", "4", "--max-steps", "3",
                           "--query-max-len", "48", "--doc-max-len", "48"]) == 0
    assert json.loads((output / "DONE").read_text())["steps"] == 3


@pytest.mark.parametrize("content, message", [
    ('{"query": "q", "pos": ["p"], "neg": []}\n{oops\n', "bad/x.jsonl:2: not valid JSON"),
    ('{"query": "q", "pos": ["p"], "type": "normal"}\n{"query": "q", "pos": ["p"], "type": "only_1neg"}\n',
     "bad/x.jsonl:2: type 'only_1neg' differs from the file's 'normal'"),
    ('{"query": "q", "pos": []}\n', "bad/x.jsonl:1: 'pos' must be a non-empty list"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, content, message):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jsonl").write_text(content)
    output = tmp_path / "out" / "corpus.jsonl"
    assert data.main(["import-flagembedding", str(tmp_path / "bad"), "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not output.exists() and not list((tmp_path / "out").iterdir())


def test_the_planner_command_converts_and_reports_the_task_table(tmp_path):
    from planner.interface.cli import app

    output = tmp_path / "corpus.jsonl"
    result = CliRunner().invoke(app, ["data", "import-flagembedding", str(SAMPLE), "-o", str(output), "--json"])
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    assert table["records"] == 64 and {r["task"] for r in table["tasks"]} == set(EXPECTED)
    missing = CliRunner().invoke(app, ["data", "import-flagembedding", str(tmp_path / "nope"), "-o", str(output)])
    assert missing.exit_code == 2 and "not found" in missing.output
