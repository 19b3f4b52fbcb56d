"""Retrieval metrics: hand-computed ranks, and an end-to-end run on the tiny model."""
from __future__ import annotations

import json
import math

import pytest

from jobs import evaluate


@pytest.mark.parametrize("rank, expected", [
    (1, {"ndcg@10": 1.0, "recall@10": 1.0, "mrr@10": 1.0}),
    (3, {"ndcg@10": 0.5, "recall@10": 1.0, "mrr@10": 1 / 3}),
    (10, {"ndcg@10": 1 / math.log2(11), "recall@10": 1.0, "mrr@10": 0.1}),
    (11, {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0}),
])
def test_rank_metrics(rank, expected):
    assert evaluate.rank_metrics(rank) == pytest.approx(expected)


def test_evaluate_end_to_end(tiny_model_dir, toy_corpus, tmp_path):
    out = tmp_path / "eval"
    assert evaluate.main(["--model", str(tiny_model_dir), "--data", str(toy_corpus), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "DONE").exists()
    assert set(metrics["tasks"]) == {"animals", "food", "cities"}
    for task in metrics["tasks"].values():
        assert 0.0 <= task["ndcg@10"] <= task["recall@10"] <= 1.0 and task["queries"] == 24
    mean = sum(t["mrr@10"] for t in metrics["tasks"].values()) / 3
    assert metrics["overall"]["mrr@10"] == pytest.approx(mean)


def test_perfect_model_scores_one():
    """With an oracle encoder (a query and its positive share a one-hot direction) every metric is 1."""
    import numpy as np

    from jobs.data import Record

    records = [Record(f"q{i}", f"p{i}", (f"n{i}",), "t") for i in range(12)]
    direction = {f"p{i}": i for i in range(12)} | {f"n{i}": 12 + i for i in range(12)}

    def oracle(windows):
        for texts in windows:
            vectors = np.zeros((len(texts), 24), dtype=np.float32)
            for row, text in enumerate(texts):
                vectors[row, direction[text.rsplit("Query:", 1)[-1].replace("q", "p")]] = 1.0
            yield vectors

    metrics = evaluate.score(records, oracle)
    assert metrics["overall"] == pytest.approx({"ndcg@10": 1.0, "recall@10": 1.0, "mrr@10": 1.0})


def random_ranking(pool: int) -> dict[str, float]:
    """The expected metrics of a uniformly random ranking of `pool` documents, one of them relevant."""
    return {name: sum(evaluate.rank_metrics(r)[name] for r in range(1, pool + 1)) / pool
            for name in ("ndcg@10", "recall@10", "mrr@10")}


def constant(value: float):
    import numpy as np

    def encode(windows):
        for texts in windows:
            yield np.full((len(texts), 8), value, dtype=np.float32)
    return encode


def test_ties_are_averaged_not_won():
    assert evaluate.tied_rank_metrics(0, 0) == pytest.approx(evaluate.rank_metrics(1))
    assert evaluate.tied_rank_metrics(2, 0) == pytest.approx(evaluate.rank_metrics(3))
    assert evaluate.tied_rank_metrics(0, 3) == pytest.approx(random_ranking(4))  # 4 documents, all tied
    assert evaluate.tied_rank_metrics(9, 1)["recall@10"] == 0.5  # rank 10 or 11, equally likely
    assert evaluate.tied_rank_metrics(12, 5) == {"ndcg@10": 0.0, "recall@10": 0.0, "mrr@10": 0.0}


def test_constant_embeddings_score_what_a_random_ranking_scores():
    """Issue 22: `(row > row[target]).sum() + 1` gave a collapsed model nDCG@10 = recall = MRR = 1.0."""
    from jobs.data import Record

    records = [Record(f"q{i}", f"p{i}", (f"n{i}a", f"n{i}b"), "t") for i in range(10)]  # a pool of 30
    metrics = evaluate.score(records, constant(0.125))
    assert metrics["overall"] == pytest.approx(random_ranking(30))
    assert metrics["overall"]["ndcg@10"] < 0.2 and metrics["tasks"]["t"]["documents"] == 30


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_embeddings_fail(value):
    from jobs.data import Record
    from jobs.lifecycle import BadInput

    records = [Record(f"q{i}", f"p{i}", (), "t") for i in range(3)]
    with pytest.raises(BadInput, match=r"3 of 3 document embeddings of task 't' are not finite"):
        evaluate.score(records, constant(value))


def test_symmetric_documents_carry_the_prompt_training_gave_them():
    from jobs.data import parse_record

    lines = [{"query": f"q{i}", "pos": [f"p{i}"], "neg": [f"n{i}"], "prompt": "Same topic?", "task": "clu",
              "type": "symmetric_clustering"} for i in range(3)]
    lines += [{"query": f"r{i}", "pos": [f"d{i}"], "neg": [], "prompt": "Find it", "task": "ret"} for i in range(3)]
    records = [parse_record(json.dumps(line), "x") for line in lines]
    seen = []

    def recording(windows):
        for texts in windows:
            seen.append(list(texts))
            yield constant(1.0)([texts]).__next__()

    evaluate.score(records, recording)
    clu_docs, clu_queries, ret_docs, ret_queries = seen
    assert clu_docs[0] == "Instruct: Same topic?\nQuery:n0" and clu_queries[0] == "Instruct: Same topic?\nQuery:q0"
    assert ret_docs == ["d0", "d1", "d2"] and ret_queries[0] == "Instruct: Find it\nQuery:r0"


def broken_copy(tiny_model_dir, tmp_path, value: float):
    """The tiny model with every weight (value 0: a zeroed model) or only the final norm (NaN) replaced."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, model)
    tensors = load_file(str(model / "model.safetensors"))
    for name, tensor in tensors.items():
        if value == 0 or name == "norm.weight":
            tensors[name] = torch.full_like(tensor, value)
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    return model


def test_a_zeroed_model_scores_no_better_than_random(tiny_model_dir, toy_corpus, tmp_path):
    model = broken_copy(tiny_model_dir, tmp_path, 0.0)
    out = tmp_path / "eval"
    assert evaluate.main(["--model", str(model), "--data", str(toy_corpus), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for task in metrics["tasks"].values():  # every embedding is the zero vector: every score ties
        assert {k: task[k] for k in ("ndcg@10", "recall@10", "mrr@10")} == pytest.approx(random_ranking(
            task["documents"]))


def test_a_nan_model_fails_the_job_with_one_line_and_writes_nothing(tiny_model_dir, toy_corpus, tmp_path, capsys):
    model = broken_copy(tiny_model_dir, tmp_path, float("nan"))
    out = tmp_path / "eval"
    assert evaluate.main(["--model", str(model), "--data", str(toy_corpus), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "are not finite (NaN or inf)" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("content, message", [
    ("not json\n", ":1: not valid JSON"),
    ('{"query": "a"}\n', "'positive' must be a non-empty string"),
    ("", "no records"),
])
def test_bad_data_exit_2(tiny_model_dir, tmp_path, capsys, content, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    assert evaluate.main(["--model", str(tiny_model_dir), "--data", str(data)]) == 2
    assert message in capsys.readouterr().err
