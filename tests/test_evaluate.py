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


def test_perfect_model_scores_one(monkeypatch):
    """With an oracle encoder (a query and its positive share a one-hot direction) every metric is 1."""
    import torch

    from jobs.data import Record

    records = [Record(f"q{i}", f"p{i}", (f"n{i}",), "t") for i in range(12)]
    direction = {f"p{i}": i for i in range(12)} | {f"n{i}": 12 + i for i in range(12)}

    class Batch(list):
        def to(self, device):
            return self

    def oracle(net, batch):
        vectors = torch.zeros(len(batch), 24)
        for row, text in enumerate(batch):
            key = text.rsplit("Query:", 1)[-1].replace("q", "p")
            vectors[row, direction[key]] = 1.0
        return vectors

    monkeypatch.setattr("jobs.embedder.load_tokenizer", lambda model: None)
    monkeypatch.setattr("jobs.embedder.load_model", lambda *a, **k: torch.nn.Identity())
    monkeypatch.setattr("jobs.embedder.pick_device_dtype", lambda: ("cpu", None))
    monkeypatch.setattr("jobs.embedder.tokenize", lambda tok, batch, n: Batch(batch))
    monkeypatch.setattr("jobs.embedder.embed", oracle)
    metrics = evaluate.evaluate("oracle", records)
    assert metrics["overall"] == pytest.approx({"ndcg@10": 1.0, "recall@10": 1.0, "mrr@10": 1.0})


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
