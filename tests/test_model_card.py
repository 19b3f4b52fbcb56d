"""Model cards: a merge writes README.md with its recipe and the bags' provenance, and loads in sentence-transformers."""
from __future__ import annotations

import json
import shutil

from jobs import merge


def test_merge_writes_a_card_naming_models_weights_and_bags(tiny_model_dir, tmp_path):
    bags = []
    for i, fraction in enumerate((0.2, 0.4)):
        bag = tmp_path / f"bag{i}"
        shutil.copytree(tiny_model_dir, bag)
        (bag / "DONE").write_text(json.dumps({"bag_sha256": f"{i}" * 64, "config": {
            "model": "Qwen/Qwen3-4B", "data": "s3://corpus/train.jsonl", "fraction": fraction, "seed": 7}}))
        bags.append(str(bag))
    output = tmp_path / "merged"
    assert merge.main(["--models", ",".join(bags), "--weights", "0.2,0.4", "--output", str(output)]) == 0
    card = (output / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers") and "- Qwen/Qwen3-4B" in card
    assert "| weights | [0.2, 0.4] |" in card and "| method | multislerp |" in card
    assert "0.333, 0.667" in card and "on 0.4 of s3://corpus/train.jsonl (seed 7, data sha256 1111111111111111)" in card
    for name in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
                 "1_Pooling/config.json"):
        assert (output / name).exists()

    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(output), device="cpu").encode(["cat"]).shape == (1, 64)
