"""Model cards: the README.md a trained bag or a merge carries, so its directory can be pushed to a hub as is.

The card has the hub's YAML front matter (library_name sentence-transformers, pipeline_tag
sentence-similarity, tags, base_model when it is a hub id) and says what the model is: the base
model, the recipe (method, learning rate, batch, group size, temperature, lengths, precision),
the bag (data URI, fraction, seed, records, data hash) or, for a merge, the models and weights,
and how to load it with sentence-transformers. The sentence-transformers module files themselves
(modules.json, sentence_bert_config.json, config_sentence_transformers.json, 1_Pooling/,
2_Normalize/) are written by jobs.embedder.write_sentence_transformers_files. Pure Python.
"""
from __future__ import annotations

import json

from jobs import storage

CARD = "README.md"


def _table(rows: dict) -> str:
    lines = ["| | |", "|---|---|"]
    for key, value in rows.items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)
        lines.append(f"| {key} | {text.replace('|', '/')} |")
    return "\n".join(lines)


def render(*, title: str, summary: str, base_models: list[str], sections: dict[str, dict], tags: list[str]) -> str:
    hub = [m for m in base_models if storage.looks_like_hub_id(m)]
    front = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity", "tags:"]
    front += [f"- {tag}" for tag in ["sentence-transformers", "feature-extraction", "sentence-similarity", *tags]]
    if hub:
        front += ["base_model:", *[f"- {m}" for m in hub]]
    front.append("---")
    body = [f"# {title}", "", summary, ""]
    for heading, rows in sections.items():
        body += [f"## {heading}", "", _table(rows), ""]
    body += ["## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
             'model = SentenceTransformer("PATH_OR_HUB_ID")',
             'queries = model.encode(["what is a bag?"], prompt_name="query")  # Instruct: ...\\nQuery: prompt',
             'documents = model.encode(["Bagging trains each model on a random subset."])',
             "print(model.similarity(queries, documents))", "```", "",
             "Embeddings: last-token pooling (an appended end-of-text token, left padding), L2-normalized.", ""]
    return "\n".join(front + [""] + body)


def write_card(output: str, text: str) -> None:
    storage.write_bytes_atomic(storage.join(output, CARD), text.encode())
