"""Distinct bags (issue 22): each bag of a campaign is its own draw, and says which corpus lines it trained on."""
from __future__ import annotations

import gzip
import json
import random
from collections import Counter

import pytest
import torch

from jobs import data, train_bag


def read_bag_lines(path) -> list[int]:
    """The line numbers a bag_lines.txt.gz lists."""
    with gzip.open(path, "rt") as handle:
        return [int(line) for line in handle]


def write_corpus(path, n_per_task: dict[str, int]):
    rng = random.Random(0)
    with open(path, "w") as out:
        for task, n in n_per_task.items():
            for i in range(n):
                out.write(json.dumps({"query": f"q {task} {i}", "positive": f"p {rng.random()}", "task": task}) + "\n")
    return path


def test_draw_seed_depends_on_the_campaign_seed_and_the_bag():
    seeds = {data.draw_seed(seed, fraction) for seed in (0, 1) for fraction in (0.2, 0.4, 0.6, 0.8, 1.0)}
    assert len(seeds) == 10 and all(0 <= s < 2 ** 31 for s in seeds)
    assert data.draw_seed(0, 0.4) == data.draw_seed(0, 0.4) != data.draw_seed(0, 0.4, "replay")


def test_two_bags_of_one_campaign_share_what_independent_draws_share(tiny_model_dir, tmp_path):
    """The 20 % and 40 % bags, trained for one step each, read back from bag_lines.txt.gz: about 40 % of the
    20 % bag lies in the 40 % one (independent draws), not 100 % (nested draws, the old behaviour)."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", {"a": 600, "b": 300, "c": 100})
    lines, cards = {}, {}
    for fraction in (0.2, 0.4):
        output = tmp_path / f"bag{fraction}"
        assert train_bag.main(["--model", str(tiny_model_dir), "--data", str(corpus), "--fraction", str(fraction),
                               "--seed", "0", "--output", str(output), "--batch-size", "4", "--max-steps", "1"]) == 0
        lines[fraction] = read_bag_lines(output / "bag_lines.txt.gz")
        cards[fraction] = (output / "README.md").read_text()
        assert json.loads((output / "DONE").read_text())["bag_draws"]["bag draw seed"] == data.draw_seed(0, fraction)
    small, large = set(lines[0.2]), set(lines[0.4])
    assert len(small) == len(lines[0.2]) == 200 and len(large) == 400 and lines[0.2] == sorted(lines[0.2])
    overlap = len(small & large) / len(small)
    assert 0.3 < overlap < 0.5, overlap  # expected 0.4; nested draws gave 1.0
    assert f"| bag draw seed | {data.draw_seed(0, 0.2)} |" in cards[0.2]
    assert "| bag corpus lines | 200 (listed in bag_lines.txt.gz) |" in cards[0.2]
    # the lines are the records the bag trained on, stratified by task
    text = corpus.read_text().splitlines()
    tasks = Counter(json.loads(text[n - 1])["task"] for n in lines[0.2])
    assert tasks == {"a": 120, "b": 60, "c": 20}
    index = data.open_corpus(str(corpus))
    redrawn = data.stratified_sample(index, 0.2, data.draw_seed(0, 0.2))  # the card's seed redraws the bag
    assert [index.lines[i] for i in redrawn] == lines[0.2]


def test_bag_lines_are_byte_reproducible_and_cover_replay(tmp_path):
    corpus = write_corpus(tmp_path / "new.jsonl", {"new": 30})
    old = write_corpus(tmp_path / "old.jsonl", {"x": 20, "y": 10})
    config = train_bag.Config(model="m", data=str(corpus), fraction=0.5, seed=3, output="o", replay_data=str(old),
                              replay_fraction=0.4, cache_dir=str(tmp_path))
    bag = data.build_bag(config)
    rows = data.write_bag_lines(bag, str(tmp_path / "a"))
    data.write_bag_lines(data.build_bag(config), str(tmp_path / "b"))
    for name in ("bag_lines.txt.gz", "replay_lines.txt.gz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert len(read_bag_lines(tmp_path / "a" / "bag_lines.txt.gz")) == 15
    assert len(read_bag_lines(tmp_path / "a" / "replay_lines.txt.gz")) == 12
    assert rows["replay draw seed"] == data.draw_seed(3, 0.4, "replay")
    assert gzip.decompress((tmp_path / "a" / "bag_lines.txt.gz").read_bytes()).decode().endswith("\n")


@pytest.mark.parametrize("fraction", [0.2, 0.6])
def test_a_bag_is_drawn_from_its_own_seed(tmp_path, fraction):
    corpus = write_corpus(tmp_path / "c.jsonl", {"a": 50, "b": 50})
    config = train_bag.Config(model="m", data=str(corpus), fraction=fraction, seed=0, output="o",
                              cache_dir=str(tmp_path))
    bag = data.build_bag(config)
    assert bag.draws[0].seed == data.draw_seed(0, fraction)
    assert list(bag.parts[0][1]) == data.stratified_sample(bag.parts[0][0], fraction, data.draw_seed(0, fraction))


def test_the_bags_of_one_campaign_start_from_one_initialisation(tiny_model_dir, tmp_path):
    """Only the data draw depends on the bag: LoRA's random A matrices come from the campaign's seed, the same for
    every bag (the authors' runs share their init, which helps the merge). One step each, at the log warmup's
    lr 0, so each bag's adapter is still its initialisation."""
    from safetensors.torch import load_file

    corpus = write_corpus(tmp_path / "corpus.jsonl", {"a": 40, "b": 20})
    adapters = {}
    for fraction, seed in ((0.2, 0), (0.4, 0), (0.4, 1)):
        output = tmp_path / f"bag{fraction}-{seed}"
        assert train_bag.main(["--model", str(tiny_model_dir), "--data", str(corpus), "--fraction", str(fraction),
                               "--seed", str(seed), "--output", str(output), "--batch-size", "4", "--max-steps", "1",
                               "--method", "lora"]) == 0
        adapters[fraction, seed] = load_file(str(output / "adapter" / "adapter_model.safetensors"))
    a_matrices = [k for k in adapters[0.2, 0] if "lora_A" in k]
    assert a_matrices and all(adapters[0.2, 0][k].abs().sum() > 0 for k in a_matrices)
    assert all(torch.equal(adapters[0.2, 0][k], adapters[0.4, 0][k]) for k in adapters[0.2, 0])
    assert not all(torch.equal(adapters[0.4, 0][k], adapters[0.4, 1][k]) for k in a_matrices)  # another campaign
