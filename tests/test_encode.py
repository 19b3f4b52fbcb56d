"""python -m jobs.encode: equal to sentence-transformers, Matryoshka, inputs, bad input, kill -9 and resume."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs.encode import EncodeConfig, collate_packed, encode_windows, load_encoder, main, plan_batches
from jobs.prompt import query_prompt
from tests.tiny import WORDS

ROOT = Path(__file__).resolve().parents[1]


def texts(count: int, seed: int = 0) -> list[str]:
    """Mixed lengths, 1 to 200 words: the longest exceed the tiny model's 128-token limit (truncation)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 3, 8, 20, 60, 200]))) for _ in range(count)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def corpus(path: Path, count: int = 40) -> tuple[Path, list[str], list[str]]:
    ids, values = [f"doc-{i:03d}" for i in range(count)], texts(count)
    return write_jsonl(path, [{"id": i, "text": t} for i, t in zip(ids, values)]), ids, values


def read_output(directory: Path) -> tuple[list, np.ndarray]:
    table = pq.read_table(sorted(directory.glob("shard-*.parquet")))
    dim = table.schema.field("embedding").type.list_size
    flat = table["embedding"].combine_chunks().flatten().to_numpy()
    return table["id"].to_pylist(), flat.reshape(-1, dim)


def encode(model: Path, source: Path, output: Path, *extra: str) -> int:
    return main(["--model", str(model), "--input", str(source), "--output", str(output), "--batch-tokens", "600",
                 "--shard-size", "16", *extra])


@pytest.fixture(scope="module")
def sentence_transformer(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_model_dir), device="cpu")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("flags, prompt", [
    (["--prompt-name", "query"], "query"),
    ([], None),
    (["--instruction", "Find the animal"], query_prompt("Find the animal")),
], ids=["prompt-name", "no-prompt", "instruction"])
def test_embeddings_equal_sentence_transformers_in_input_order(tiny_model_dir, sentence_transformer, tmp_path,
                                                                flags, prompt):
    source, ids, values = corpus(tmp_path / "in.jsonl")
    assert encode(tiny_model_dir, source, tmp_path / "out", *flags) == 0
    got_ids, ours = read_output(tmp_path / "out")
    kwargs = {"prompt_name": prompt} if prompt == "query" else {"prompt": prompt}
    reference = sentence_transformer.encode(values, normalize_embeddings=True, **kwargs)
    assert got_ids == ids
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert cosines(ours, reference).min() >= 0.9999
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["records"] == 40 and manifest["dim"] == 64 and manifest["prompt"] == (
        sentence_transformer.prompts["query"] if prompt == "query" else prompt or "")
    assert [s["records"] for s in manifest["shards"]] == [16, 16, 8] and (tmp_path / "out" / "DONE").exists()


def test_done_reports_the_memory_the_encode_used(tiny_model_dir, tmp_path):
    """Issue 23: an encode's DONE carries its peaks as a train-bag's does, so the supervisor stores them on the
    attempt (planner.plan.memory.peaks, read from DONE) and the planner learns encode's VRAM correction."""
    from planner.plan import memory
    from planner.run.backends.markers import read_done

    source, _, _ = corpus(tmp_path / "in.jsonl", count=8)
    assert encode(tiny_model_dir, source, tmp_path / "out") == 0
    used = memory.peaks(read_done(str(tmp_path / "out")))
    assert used["peak_rss_gb"] > 0.1  # a CPU run: RSS only, no VRAM figures
    assert "peak_vram_reserved_gb" not in used


def test_matryoshka_truncation_renormalizes(tiny_model_dir, sentence_transformer, tmp_path):
    source, _, values = corpus(tmp_path / "in.jsonl", count=20)
    assert encode(tiny_model_dir, source, tmp_path / "full") == 0
    assert encode(tiny_model_dir, source, tmp_path / "small", "--dim", "16") == 0
    _, full = read_output(tmp_path / "full")
    _, small = read_output(tmp_path / "small")
    assert small.shape == (20, 16)
    np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(small, full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True), atol=1e-6)
    reference = sentence_transformer.encode(values, normalize_embeddings=True, truncate_dim=16)
    assert cosines(small, reference).min() >= 0.9999


def test_jsonl_parquet_and_text_inputs_agree(tiny_model_dir, tmp_path):
    values = texts(12, seed=1)
    write_jsonl(tmp_path / "in.jsonl", [{"key": 100 + i, "body": t} for i, t in enumerate(values)])
    pq.write_table(pa.table({"key": [100 + i for i in range(12)], "body": values}), tmp_path / "in.parquet")
    (tmp_path / "in.txt").write_text("\n".join(values) + "\n")
    outputs = {}
    for name in ("in.jsonl", "in.parquet", "in.txt"):
        fields = [] if name.endswith(".txt") else ["--id-field", "key", "--text-field", "body"]
        assert encode(tiny_model_dir, tmp_path / name, tmp_path / f"out-{name}", *fields) == 0
        outputs[name] = read_output(tmp_path / f"out-{name}")
    assert outputs["in.jsonl"][0] == outputs["in.parquet"][0] == [100 + i for i in range(12)]
    assert outputs["in.txt"][0] == list(range(1, 13))  # ids of a text file are its line numbers
    np.testing.assert_array_equal(outputs["in.jsonl"][1], outputs["in.parquet"][1])
    np.testing.assert_array_equal(outputs["in.jsonl"][1], outputs["in.txt"][1])


def test_packed_batches_equal_padded_ones(tiny_model_dir):
    """The padding-free layout used with flash-attention: checked here through transformers' block mask."""
    import torch

    from jobs.embedder import load_tokenizer

    tokenizer, net = load_tokenizer(tiny_model_dir), load_encoder(tiny_model_dir, torch.device("cpu"), "float32")
    values = texts(30, seed=2)
    padded, packed = (next(encode_windows(net, tokenizer, [values], EncodeConfig("", 128, 500, None, packed=flag)))
                      for flag in (False, True))
    assert cosines(padded, packed).min() >= 0.9999


def test_collate_packed_marks_sequence_boundaries():
    batch = collate_packed([[5, 6, 7], [8], [9, 10]])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 4, 6] and batch["max_length_q"] == 3


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 300), max_size=60), st.integers(1, 1000), st.booleans())
def test_batches_cover_every_sequence_once_within_the_token_budget(lengths, budget, packed):
    batches = plan_batches(lengths, budget, packed=packed)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    order = [lengths[i] for batch in batches for i in batch]
    assert order == sorted(lengths, reverse=True)
    for batch in batches:
        cost = sum(lengths[i] for i in batch) if packed else len(batch) * max(lengths[i] for i in batch)
        assert cost <= budget or len(batch) == 1
    for batch, following in zip(batches, batches[1:]):  # greedy: the next sequence did not fit
        grown = batch + following[:1]
        cost = sum(lengths[i] for i in grown) if packed else len(grown) * max(lengths[i] for i in grown)
        assert cost > budget


# --- bad input: one line naming the record, exit 2, nothing written ------------------------------

BAD_JSONL = {
    "empty text": ('{"id": 1, "text": "cat"}\n{"id": 2, "text": "  "}\n', "line 2: the text is empty"),
    "missing text": ('{"id": 1, "text": "cat"}\n{"id": 2, "body": "dog"}\n', "line 2: no 'text' field"),
    "missing id": ('{"id": 1, "text": "cat"}\n\n{"text": "dog"}\n', "line 3: no 'id' field"),
    "not json": ('{"id": 1, "text": "cat"}\n{"id": 2, "text": \n', "line 2: not valid JSON"),
    "not an object": ('["cat"]\n', "line 1: a record must be a JSON object"),
    "repeated id": ('{"id": 1, "text": "cat"}\n{"id": 1, "text": "dog"}\n', "line 2: id 1 repeats the id at line 1"),
    "mixed id types": ('{"id": 1, "text": "cat"}\n{"id": "2", "text": "dog"}\n', "line 2: id '2' is a str"),
    "text not a string": ('{"id": 1, "text": 7}\n', "line 1: 'text' is int"),
}


@pytest.mark.parametrize("kind", sorted(BAD_JSONL))
def test_bad_jsonl_records_exit_2_naming_the_line(tiny_model_dir, tmp_path, capsys, kind):
    content, message = BAD_JSONL[kind]
    (tmp_path / "in.jsonl").write_text(content)
    assert encode(tiny_model_dir, tmp_path / "in.jsonl", tmp_path / "out") == 2
    error = capsys.readouterr().err.strip()
    assert message in error and error.startswith("error: ") and "\n" not in error
    assert not (tmp_path / "out").exists()


def bad_parquet(path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["cat", None, "dog"]}), path)


@pytest.mark.parametrize("name, make, extra, message", [
    ("in.txt", lambda p: p.write_text("cat\n\ndog\n"), [], "in.txt line 2: the text is empty"),
    ("in.txt", lambda p: p.write_bytes(b"cat\ndog \xff\n"), [], "in.txt line 2: not UTF-8"),
    ("in.parquet", bad_parquet, [], "in.parquet row 2: 'text' is null"),
    ("in.parquet", lambda p: p.write_bytes(b"not parquet at all"), [], "not a readable Parquet file"),
    ("in.parquet", bad_parquet, ["--text-field", "body"], "no 'body' column (columns: id, text)"),
    ("in.csv", lambda p: p.write_text("id,text\n"), [], "cannot tell the format"),
    ("missing.jsonl", lambda p: None, [], "missing.jsonl not found"),
    ("in.jsonl", lambda p: p.write_text(""), [], "in.jsonl: no records"),
    ("in.txt", lambda p: p.write_text("cat\n"), ["--dim", "65"], "--dim 65 exceeds the model's 64 dimensions"),
    ("in.txt", lambda p: p.write_text("cat\n"), ["--prompt-name", "passage"], "no prompt named 'passage'"),
    ("in.txt", lambda p: p.write_text("cat\n"), ["--dtype", "int8"], "--dtype int8 needs a CUDA GPU"),
], ids=["txt-empty-line", "txt-not-utf8", "parquet-null", "parquet-unreadable", "parquet-no-column",
        "unknown-format", "missing-file", "no-records", "dim-too-large", "unknown-prompt", "int8-on-cpu"])
def test_bad_input_exits_2_before_any_model_work(tiny_model_dir, tmp_path, capsys, name, make, extra, message):
    make(tmp_path / name)
    assert encode(tiny_model_dir, tmp_path / name, tmp_path / "out", *extra) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and error.startswith("error: ") and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_finished_job_reruns_as_a_no_op_and_refuses_other_commands(tiny_model_dir, tmp_path, capsys):
    source, _, _ = corpus(tmp_path / "in.jsonl", count=20)
    assert encode(tiny_model_dir, source, tmp_path / "out") == 0
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    capsys.readouterr()
    assert encode(tiny_model_dir, source, tmp_path / "out") == 0
    assert "already encoded" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == before
    assert encode(tiny_model_dir, source, tmp_path / "out", "--dim", "8") == 2
    assert "finished encode of a different command" in capsys.readouterr().err


def test_unfinished_job_refuses_a_changed_input(tiny_model_dir, tmp_path, capsys):
    source, _, _ = corpus(tmp_path / "in.jsonl", count=20)
    assert encode(tiny_model_dir, source, tmp_path / "out") == 0
    (tmp_path / "out" / "DONE").unlink()
    source.write_text(source.read_text().replace("doc-000", "doc-999"))
    assert encode(tiny_model_dir, source, tmp_path / "out") == 2
    assert "input_sha256" in capsys.readouterr().err


# --- kill -9, SIGTERM and resume --------------------------------------------------------------------

def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "jobs.encode", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def signal_after_shards(process: subprocess.Popen, shards: int, signum: int) -> list[str]:
    """Send `signum` once the job has reported `shards` written shards; returns the lines it logged."""
    lines = []
    while len([line for line in lines if " written " in line]) < shards:
        line = process.stderr.readline()
        assert line, f"the job ended before {shards} shards: {''.join(lines)[-2000:]}"
        lines.append(line)
    process.send_signal(signum)
    lines += process.stderr.readlines()
    process.wait(timeout=60)
    return lines


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """The finished shards: a shard is done once its marker is written, after its file (a kill between the
    two leaves a file the resumed job rewrites)."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.glob("shard-*.parquet")
            if (directory / ".encode" / f"{p.name}.done").exists()}


def test_killed_job_resumes_only_the_remaining_shards_with_identical_bytes(tiny_model_dir, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in enumerate(texts(240, seed=3))])
    args = ["--model", str(tiny_model_dir), "--input", str(source), "--shard-size", "4", "--batch-tokens", "300"]
    assert main([*args, "--output", str(tmp_path / "reference")]) == 0
    output = tmp_path / "out"

    killed = start([*args, "--output", str(output)])
    signal_after_shards(killed, 3, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    kept = snapshot(output)
    assert 3 <= len(kept) < 60 and not (output / "DONE").exists()

    stopped = start([*args, "--output", str(output)])
    lines = signal_after_shards(stopped, 2, signal.SIGTERM)
    assert stopped.returncode == 75
    assert any(f"{60 - len(kept)} of 60 shards to encode ({len(kept)} already done)" in line for line in lines)
    assert {name: kept[name] for name in snapshot(output) if name in kept} == kept  # finished shards untouched
    kept = snapshot(output)

    finished = subprocess.run([sys.executable, "-m", "jobs.encode", *args, "--output", str(output)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert finished.stderr.count(" written ") == 60 - len(kept)
    assert {name: snapshot(output)[name] for name in kept} == kept
    files = sorted(p.name for p in (tmp_path / "reference").iterdir() if p.is_file())
    assert files == sorted(p.name for p in output.iterdir() if p.is_file())
    for name in files:
        assert (output / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


def test_ranks_split_the_shards_and_the_last_one_finishes(tiny_model_dir, tmp_path, monkeypatch, capsys):
    source, _, _ = corpus(tmp_path / "in.jsonl", count=40)
    assert encode(tiny_model_dir, source, tmp_path / "single") == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, finished in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        assert encode(tiny_model_dir, source, tmp_path / "ranks") == 0
        assert (tmp_path / "ranks" / "DONE").exists() is finished
    err = capsys.readouterr().err
    assert "rank 1/2: 1 of 1 shards to encode" in err and "rank 0/2: 2 of 2 shards to encode" in err
    for name in ("manifest.json", *(f"shard-0000{i}-of-00003.parquet" for i in range(3))):
        assert (tmp_path / "ranks" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
