"""The corpus through a line-offset index: the same bag as reading it whole, FlagEmbedding's format, groups,
sample_stats, the BOOM defaults, the model card, and a FlagEmbedding corpus with teacher scores trained end to end."""
from __future__ import annotations

import hashlib
import json
import random
import tracemalloc
from collections import Counter

import pytest

from jobs import data, recipe, train_bag


def write_ours(path, n_per_task: dict[str, int], seed: int = 0):
    rng = random.Random(seed)
    with open(path, "w") as out:
        for task, n in n_per_task.items():
            for i in range(n):
                out.write(json.dumps({"query": f"q {task} {i}", "positive": f"p {rng.random()}",
                                      "negatives": [f"n {rng.random()}"], "task": task}) + "\n")
                if i % 7 == 0:
                    out.write("\n")  # blank lines are skipped, as before
    return path


def old_read(path) -> list[data.Record]:
    """How jobs.data read a corpus before the index: the whole file, every line parsed and kept."""
    text = path.read_text()
    return [data.parse_record(line, f"{path}:{n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def test_the_index_draws_the_same_bag_and_batches_as_reading_the_whole_file(tmp_path):
    path = write_ours(tmp_path / "c.jsonl", {"b": 57, "a": 130, "c": 9})
    everything, index = old_read(path), data.open_corpus(str(path))
    assert list(index) == everything and index.tasks == [r.task for r in everything]
    for fraction, seed in ((0.2, 0), (0.55, 3), (1.0, 1)):
        chosen = data.stratified_sample(index, fraction, seed)
        assert chosen == data.stratified_sample(everything, fraction, seed)
        bag = data.Bag([(index, chosen)])
        whole = [everything[i] for i in chosen]
        assert list(bag) == whole and data.records_digest(bag) == data.records_digest(whole)
        assert data.epoch_batches(bag, 8, seed, 1) == data.epoch_batches(whole, 8, seed, 1)


def test_the_index_holds_offsets_not_records(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "BLOCK", 1 << 20)  # reads 1 MB at a time (16 MB in real runs)
    path = tmp_path / "big.jsonl"
    doc = "word " * 200  # 1 kB a text
    with open(path, "w") as out:
        for i in range(5000):
            out.write(json.dumps({"query": f"q{i}", "positive": doc, "negatives": [doc, doc], "task": f"t{i % 3}"}) + "\n")
    tracemalloc.start()
    index = data.open_corpus(str(path))
    bag = data.Bag([(index, data.stratified_sample(index, 0.5, 0))])
    digest = data.records_digest(bag)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    size = path.stat().st_size
    assert len(index) == 5000 and digest
    assert current < size / 20 and peak < size / 3, (current, peak, size)  # the file is 15 MB


def test_bad_lines_are_reported_with_their_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q", "pos": ["p"], "neg": []}\n\n{"query": "q", "pos": []}\n')
    with pytest.raises(data.BadData, match=r"bad.jsonl:3: 'pos' must be a non-empty list"):
        data.open_corpus(str(path))
    path.write_bytes(b'{"query": "q", "positive": "p"}\n{"query": "\xff"}\n')
    with pytest.raises(data.BadData, match=r"not UTF-8 text \(byte 43\)"):
        data.open_corpus(str(path))
    path.write_text('{"query": "q", "pos": ["a", "b"], "neg": ["n"], "pos_scores": [1.0]}\n')
    with pytest.raises(data.BadData, match="'pos_scores' must be a list of 2 numbers"):
        data.open_corpus(str(path))


def test_flagembedding_records_groups_and_types():
    line = json.dumps({"query": "q", "pos": ["p0", "p1"], "neg": [f"n{i}" for i in range(12)],
                       "pos_scores": [0.9, 0.8], "neg_scores": [i / 10 for i in range(12)], "prompt": "Find it",
                       "type": "normal"})
    record = data.parse_record(line, "x:1")
    assert record.task == record.instruction == "Find it" and record.positives == ("p0", "p1")
    group = data.make_group(record, 8, "group:0:0:5")
    assert len(group.documents) == 8 and group.documents[0] in ("p0", "p1")
    assert len(set(group.documents[1:])) == 7 and set(group.documents[1:]) <= set(record.negatives)
    p = record.positives.index(group.documents[0])
    assert group.teacher_scores == (record.positive_scores[p],
                                    *(record.negative_scores[record.negatives.index(n)] for n in group.documents[1:]))
    assert group == data.make_group(record, 8, "group:0:0:5")  # reproducible
    assert any(data.make_group(record, 8, f"group:0:{e}:5") != group for e in range(1, 6))  # redrawn per epoch
    few = data.parse_record(json.dumps({"query": "q", "positive": "p", "negatives": ["a", "b"]}), "x:2")
    keep_all = data.SAMPLERS["keep-all"]
    assert data.make_group(few, 8, "k", keep_all).documents == ("p", "a", "b")  # fewer than 7: all, in order, no repeats
    one = data.parse_record(json.dumps({"query": "q", "pos": ["p"], "neg": ["a", "b", "c"], "type": "only_1neg"}), "x")
    assert len(data.make_group(one, 8, "k").documents) == 2
    sts = data.parse_record(json.dumps({"query": "q", "pos": ["p"], "neg": ["a"], "type": "symmetric_sts",
                                        "prompt": "Same meaning"}), "x")
    assert data.make_group(sts, 8, "k").prompt_documents
    assert not data.in_batch_negatives("classification-no_in_batch_neg") and data.in_batch_negatives("retrieval")


def test_our_records_keep_their_old_hash():
    record = data.Record("q", "p", ("n",), "t", None)
    assert record.canonical() == json.dumps(["q", "p", ["n"], "t", None])
    assert hashlib.sha256((record.canonical() + "\n").encode()).hexdigest() == data.records_digest([record])


def test_sample_stats_estimates_from_a_sample(tmp_path):
    path = tmp_path / "c.jsonl"
    rng = random.Random(0)
    with open(path, "w") as out:
        for i in range(60_000):
            out.write(json.dumps({"query": "w " * rng.randint(3, 9), "pos": ["x" * 400],
                                  "neg": ["y" * 400] * rng.randint(0, 10), "prompt": f"task {i % 4}"}) + "\n")
    stats = data.sample_stats(str(path), sample_records=2000)
    assert not stats.exact and stats.sampled_records <= 2100
    assert abs(stats.records - 60_000) / 60_000 < 0.05
    assert stats.mean_doc_tokens == pytest.approx(101, abs=1)  # 400 chars / 4 + the appended token
    # FlagEmbedding's sampler fills a group short of negatives with copies: 8 documents, 1 without any negative
    assert stats.mean_group_docs == pytest.approx(1 / 11 + 8 * 10 / 11, abs=0.15)
    keep_all = data.sample_stats(str(path), sample_records=2000, sampler=data.SAMPLERS["keep-all"])
    assert 1 + 4 < keep_all.mean_group_docs < 1 + 6  # 1 positive + min(negatives, 7): about 5.2
    assert stats.tasks_seen == 4 and stats.teacher_scores == 0
    small = data.sample_stats(str(write_ours(tmp_path / "s.jsonl", {"a": 10})))
    assert small.exact and small.records == 10


def test_the_readme_lists_every_deviation_from_the_authors_scripts():
    """README's list under `DEVIATIONS` names each of jobs.recipe.DEVIATIONS, and nothing else (issue 22)."""
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    listed = readme[readme.index("`jobs/recipe.py` `DEVIATIONS`"):].split("\n\n")[1]
    names = [line[len("- **"):line.index("**:")] for line in listed.splitlines() if line.startswith("- **")]
    assert names == list(recipe.DEVIATIONS)
    assert all(len(reason) > 60 for reason in recipe.DEVIATIONS.values())  # each with its reason


def test_boom_recipe_defaults():
    qwen3_4b = {"vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128}
    assert 4.0e9 < recipe.parameter_count(qwen3_4b) < 4.1e9
    big = recipe.recipe_for(recipe.parameter_count(qwen3_4b))
    assert (big["method"], big["batch_size"], big["kd_loss"], big["lr"], big["group_size"]) == ("lora", 128, "m3",
                                                                                                 5e-5, 8)
    small = recipe.recipe_for(recipe.parameter_count(qwen3_4b | {"hidden_size": 1024, "intermediate_size": 3072,
                                                                 "num_hidden_layers": 28, "num_attention_heads": 16}))
    assert (small["method"], small["batch_size"], small["kd_loss"]) == ("full", 256, "none")
    assert recipe.LORA["r"] == recipe.LORA["lora_alpha"] == 32 and len(recipe.LORA["target_modules"]) == 7
    config = train_bag.Config(model="m", data="d", fraction=1.0, seed=0, output="o")
    resolved, _ = train_bag.resolve(config, "cuda", qwen3_4b)
    assert (resolved.method, resolved.dtype, resolved.batch_size, resolved.lr) == ("lora", "bfloat16", 128, 5e-5)
    resolved, _ = train_bag.resolve(train_bag.Config(model="m", data="d", fraction=1.0, seed=0, output="o",
                                                     method="full", batch_size=4), "cpu", qwen3_4b)
    assert (resolved.method, resolved.dtype, resolved.batch_size) == ("full", "float32", 4)


def test_flagembedding_corpus_with_teacher_scores_trains_and_writes_a_card(tiny_model_dir, tmp_path):
    from jobs.toy import WORDS

    rng = random.Random(0)
    path = tmp_path / "flag.jsonl"
    with open(path, "w") as out:
        for i in range(24):
            words = rng.sample(WORDS, 4)
            out.write(json.dumps({"query": " ".join(words[:2]), "pos": [" ".join(words * 2)],
                                  "neg": [" ".join(rng.sample(WORDS, 8)) for _ in range(9)],
                                  "pos_scores": [0.9], "neg_scores": [rng.random() * 0.5 for _ in range(9)],
                                  "prompt": "Find the passage" if i % 2 else "Retrieve it"}) + "\n")
    output = tmp_path / "bag"
    args = ["--model", str(tiny_model_dir), "--data", str(path), "--fraction", "1.0", "--seed", "0",
            "--output", str(output), "--batch-size", "4", "--max-steps", "3", "--kd-loss", "m3",
            "--mini-batch-size", "8"]
    assert train_bag.main(args) == 0
    done = json.loads((output / "DONE").read_text())
    assert done["config"]["kd_loss"] == "m3" and done["config"]["group_size"] == 8
    assert done["config"]["method"] == "full"  # the tiny model is under 1 B parameters: BOOM's 0.6B recipe
    assert done["tokens_per_s"] > 0 and done["tflops_per_gpu"] > 0 and done["gpus"] == 1
    # FLOPs per token the forward computed, padding included (issue 22): real tokens/s x padded / real
    assert done["tflops_per_gpu"] == pytest.approx(
        done["tokens_per_s"] * done["padding"] * 10 * done["parameters"] / 1e12, rel=0.05)
    card = (output / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers")
    assert done["bag_sha256"] in card and "| fraction | 1.0 |" in card and "| seed | 0 |" in card
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                 "1_Pooling/config.json"):
        assert (output / name).exists()
    assert Counter(r.task for r in data.read_corpus(str(path))) == {"Find the passage": 12, "Retrieve it": 12}
