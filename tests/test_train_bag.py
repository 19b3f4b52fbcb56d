"""The train-bag job on the tiny model: sampling, the loss, kill -9 and SIGTERM resumes, LoRA, outputs."""
from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jobs import data, recipe, train_bag
from jobs.checkpoint import LATEST, CheckpointStore
from jobs.data import Record

ROOT = Path(__file__).resolve().parents[1]


def flags(model, corpus, output, *extra) -> list[str]:
    # group 2: the toy corpus has one negative a query, which FlagEmbedding's sampler would copy 7 times
    return ["--model", str(model), "--data", str(corpus), "--fraction", "0.5", "--seed", "3", "--output", str(output),
            "--batch-size", "6", "--epochs", "2", "--lr", "1e-3", "--save-every-steps", "2", "--group-size", "2",
            *extra]


def weights(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / "model.safetensors"))


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    handle = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "jobs.train_bag", *args], cwd=ROOT, stdout=handle,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float = 120, seen: int = 0) -> None:
    """Wait until `text` occurs in the log more than `seen` times."""
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(text) <= seen:
        assert process.poll() is None, f"the job ended before printing {text!r}:\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in the log"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, toy_corpus, tmp_path_factory) -> Path:
    """An uninterrupted run, in a subprocess like every interrupted one it is compared with."""
    output = tmp_path_factory.mktemp("reference") / "bag"
    subprocess.run([sys.executable, "-m", "jobs.train_bag", *flags(tiny_model_dir, toy_corpus, output)], cwd=ROOT,
                   check=True, capture_output=True)
    return output


# --- the bag ------------------------------------------------------------------------------------

def corpus(n_per_task: dict[str, int]) -> list[Record]:
    return [Record(f"q{t}{i}", f"p{t}{i}", task=t) for t, n in n_per_task.items() for i in range(n)]


def test_bag_is_stratified_seeded_and_without_replacement():
    records = corpus({"a": 100, "b": 40, "c": 3})
    bag = data.stratified_sample(records, 0.4, seed=7)
    assert Counter(records[i].task for i in bag) == {"a": 40, "b": 16, "c": 1}
    assert len(set(bag)) == len(bag)
    assert bag == data.stratified_sample(list(records), 0.4, seed=7)
    assert bag != data.stratified_sample(records, 0.4, seed=8)
    assert len(data.stratified_sample(records, 1.0, seed=1)) == len(records)
    # the 20 % bag is not a prefix of the 40 % one: each fraction is its own sample
    assert set(data.stratified_sample(records, 0.2, seed=7)) - set(bag)


def test_bag_is_the_same_on_any_machine():
    """Pinned: string-seeded random.Random is platform-independent, so this list must never change."""
    records = corpus({"a": 10, "b": 10})
    assert data.stratified_sample(records, 0.3, seed=0) == [0, 6, 8, 12, 18, 19]


def test_batches_are_task_homogeneous_cover_the_bag_and_depend_on_epoch():
    records = corpus({"a": 23, "b": 13, "c": 7})
    batches = data.epoch_batches(records, 6, seed=1, epoch=0, sampler=data.SAMPLERS["keep-all"])
    assert all(len({records[i].task for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(records)))
    assert all(len(b) >= 2 for b in batches)
    assert batches == data.epoch_batches(records, 6, seed=1, epoch=0, sampler=data.SAMPLERS["keep-all"])
    assert batches != data.epoch_batches(records, 6, seed=1, epoch=1, sampler=data.SAMPLERS["keep-all"])


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('{"query": "q"}', "'positive' must be a non-empty string"),
    ('{"query": "q", "positive": "p", "negatives": "n"}', "'negatives' must be a list"),
    ('{"query": "q", "positive": "p", "task": ""}', "'task' must be a non-empty string"),
    ('["q", "p"]', "expected a JSON object"),
])
def test_bad_line_is_reported_as_file_and_line(tiny_model_dir, tmp_path, capsys, line, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p"}\n' + line + "\n")
    assert train_bag.main(flags(tiny_model_dir, bad, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: {message}" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--fraction", "0"], "--fraction must be in (0, 1]"),
    (["--fraction", "1.5"], "--fraction must be in (0, 1]"),
    (["--batch-size", "1"], "--batch-size must be at least 2"),
    (["--replay-fraction", "0.4"], "--replay-data and --replay-fraction go together"),
    (["--model", "/nonexistent/model"], "model /nonexistent/model not found"),
])
def test_bad_flags_exit_2_before_anything_is_written(tiny_model_dir, toy_corpus, tmp_path, capsys, extra, message):
    assert train_bag.main(flags(tiny_model_dir, toy_corpus, tmp_path / "out", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_spec_file_carries_the_same_fields(tiny_model_dir, toy_corpus, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": str(tiny_model_dir), "data": str(toy_corpus), "fraction": 0.2, "seed": 1,
                                "output": str(tmp_path / "out"), "max_steps": 2, "batch_size": 4}))
    assert train_bag.main(["--spec", str(spec)]) == 0
    done = json.loads((tmp_path / "out" / "DONE").read_text())
    assert done["steps"] == 2 and done["config"]["fraction"] == 0.2
    spec.write_text(json.dumps({"model": "m", "fractoin": 0.2}))
    assert train_bag.main(["--spec", str(spec)]) == 2


# --- training -----------------------------------------------------------------------------------

def test_training_learns_the_toy_retrieval_task(tiny_model_dir, toy_corpus, tmp_path):
    from jobs.evaluate import evaluate

    records = data.read_corpus(str(toy_corpus))
    output = tmp_path / "bag"
    assert train_bag.main(flags(tiny_model_dir, toy_corpus, output, "--fraction", "1.0", "--epochs", "4")) == 0
    before = evaluate(str(tiny_model_dir), records)["overall"]["mrr@10"]
    after = evaluate(str(output), records)["overall"]["mrr@10"]
    assert after > before + 0.2, (before, after)
    done = json.loads((output / "DONE").read_text())
    chance = math.log(12)  # 6 queries, each against 6 positives + 6 hard negatives
    assert done["final_loss"] < chance - 0.5 and done["tokens_seen"] > 0 and done["peak_memory_bytes"] > 0
    assert done["bag_sha256"] == data.records_digest(records)  # fraction 1.0 keeps every record, in file order
    # FLOPs count what the forward computed, padding included (issue 22), the planner's formula per token
    assert done["padded_tokens"] > done["tokens_seen"] and done["padding"] == round(
        done["padded_tokens"] / done["tokens_seen"], 4)
    assert done["flops"] == pytest.approx(done["padded_tokens"] * recipe.train_flops_per_token(
        done["parameters"], "full", cached_passes=False), rel=1e-9)  # 6 queries, 12 documents: one chunk
    assert not (output / ".checkpoints").exists()


def test_output_loads_in_sentence_transformers_with_our_pooling(reference):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from jobs.embedder import embed, load_model, load_tokenizer, tokenize
    from jobs.prompt import format_query

    texts = ["cat run", "paris bread"]
    st = SentenceTransformer(str(reference), device="cpu")
    theirs = st.encode(texts, prompt_name="query", convert_to_tensor=True, normalize_embeddings=True)
    tokenizer = load_tokenizer(reference)
    net = load_model(reference, device=torch.device("cpu"), dtype=torch.float32).eval()
    with torch.inference_mode():
        ours = embed(net, tokenize(tokenizer, [format_query(t) for t in texts], 512))
    assert torch.nn.functional.cosine_similarity(ours, theirs).min() > 0.9999
    assert AutoModel.from_pretrained(str(reference)).config.model_type == "qwen3"
    assert not list(reference.glob("*.bin"))


def test_rerun_of_a_finished_job_exits_0_at_once(reference, tiny_model_dir, toy_corpus, capsys):
    before = (reference / "model.safetensors").stat().st_mtime_ns
    assert train_bag.main(flags(tiny_model_dir, toy_corpus, reference)) == 0
    assert "already trained" in capsys.readouterr().err
    assert (reference / "model.safetensors").stat().st_mtime_ns == before


def test_kill_9_at_random_points_then_resume_gives_bitwise_identical_weights(reference, tiny_model_dir, toy_corpus,
                                                                            tmp_path):
    output, log = tmp_path / "bag", tmp_path / "log"
    args = flags(tiny_model_dir, toy_corpus, output)
    rng = random.Random(0)
    for _ in range(3):
        seen = log.read_text(errors="replace").count("tok/s") if log.exists() else 0
        process = spawn(args, log)
        wait_for(log, "tok/s", process, seen=seen)
        time.sleep(rng.uniform(0.0, 0.15))  # anywhere: mid-step, mid-save, between
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    assert subprocess.run([sys.executable, "-m", "jobs.train_bag", *args], cwd=ROOT, capture_output=True).returncode == 0
    assert "resuming from step" in log.read_text() or (output / "DONE").exists()
    mine, ref = weights(output), weights(reference)
    assert mine.keys() == ref.keys()
    assert all(torch.equal(mine[k], ref[k]) for k in ref)


def test_sigterm_saves_exits_75_and_resumes_cleanly(reference, tiny_model_dir, toy_corpus, tmp_path):
    output, log = tmp_path / "bag", tmp_path / "log"
    args = flags(tiny_model_dir, toy_corpus, output, "--save-every-steps", "1000")
    process = spawn(args, log)
    wait_for(log, "step 3/", process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 75
    text = log.read_text()
    assert "interrupted by SIGTERM" in text and "checkpoint at step" in text  # the save fitted in the grace
    assert (output / ".checkpoints" / LATEST).exists() and not (output / "DONE").exists()
    rerun = subprocess.run([sys.executable, "-m", "jobs.train_bag", *args], cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0 and "resuming from step" in rerun.stderr
    mine, ref = weights(output), weights(reference)
    assert all(torch.equal(mine[k], ref[k]) for k in ref)


def test_sigterm_without_time_to_save_keeps_the_last_checkpoint(tiny_model_dir, toy_corpus, tmp_path):
    output, log = tmp_path / "bag", tmp_path / "log"
    process = spawn(flags(tiny_model_dir, toy_corpus, output, "--sigterm-grace-seconds", "0.5"), log)
    wait_for(log, "step 3/", process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 75
    latest = (output / ".checkpoints" / LATEST).read_text()
    assert latest == "step-000002"  # the regular save at step 2; none on SIGTERM


def test_changed_run_on_the_same_checkpoint_is_refused(tiny_model_dir, toy_corpus, tmp_path, capsys):
    output = tmp_path / "bag"
    store = CheckpointStore(str(output / ".checkpoints"), tmp_path / "cache")
    store.save(2, {"w": torch.zeros(2)}, {}, {}, {"fraction": 0.9}, {"step": 2})
    assert train_bag.main(flags(tiny_model_dir, toy_corpus, output)) == 2
    assert "holds a checkpoint of a different run (" in capsys.readouterr().err


def test_lora_writes_merged_full_weights_and_the_adapter(tiny_model_dir, toy_corpus, tmp_path):
    output = tmp_path / "lora"
    assert train_bag.main(flags(tiny_model_dir, toy_corpus, output, "--method", "lora", "--max-steps", "4")) == 0
    assert (output / "adapter" / "adapter_model.safetensors").exists()
    merged, base = weights(output), load_file(str(tiny_model_dir / "model.safetensors"))
    assert merged.keys() == base.keys()  # plain model weights, no lora_ names
    assert any(not torch.equal(merged[k], base[k]) for k in base if "proj" in k)
    assert all(torch.equal(merged[k], base[k]) for k in base if "norm" in k)  # LoRA touches only projections


def test_replay_mixes_a_share_of_the_old_corpus(tiny_model_dir, toy_corpus, tmp_path):
    new = tmp_path / "new.jsonl"
    new.write_text("".join(json.dumps({"query": f"q{i}", "positive": f"p{i}", "task": "new"}) + "\n" for i in range(10)))
    config = train_bag.Config(model=str(tiny_model_dir), data=str(new), fraction=1.0, seed=0, output="x",
                              replay_data=str(toy_corpus), replay_fraction=0.4)
    bag = data.build_bag(config)
    assert Counter(r.task for r in bag) == {"new": 10, "animals": 10, "food": 10, "cities": 10}


# --- checkpoints --------------------------------------------------------------------------------

def test_checkpoint_round_trip_through_a_remote_uri(tmp_path):
    import fsspec

    fsspec.filesystem("memory").store.clear()
    first = CheckpointStore("memory://run/ckpt", tmp_path / "machine-a")
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    first.save(4, tensors, {"state": {}}, {"tokens_seen": 9}, {"id": 1}, {"step": 4, "total_steps": 10})
    first.flush()
    fresh = CheckpointStore("memory://run/ckpt", tmp_path / "machine-b").load()  # a new machine
    assert fresh.step == 4 and torch.equal(fresh.tensors["w"], tensors["w"]) and fresh.identity == {"id": 1}
    assert json.loads(fsspec.open("memory://run/ckpt/progress.json").open().read())["step"] == 4


def test_a_torn_checkpoint_is_never_used(tmp_path):
    store = CheckpointStore(str(tmp_path / "ckpt"), tmp_path)
    store.save(2, {"w": torch.ones(1)}, {}, {}, {}, {})
    (tmp_path / "ckpt" / ".step-000004.tmp-1").mkdir()  # killed while writing step 4
    (tmp_path / "ckpt" / "step-000006").mkdir()  # killed after the rename, before LATEST moved
    assert store.load().step == 2
    store.save(6, {"w": torch.full((1,), 6.0)}, {}, {}, {}, {})
    assert store.load().tensors["w"].item() == 6.0
    assert not list((tmp_path / "ckpt").glob(".step-*"))


# --- torchrun data parallelism ------------------------------------------------------------------

def torchrun(args: list[str], log: Path) -> subprocess.Popen:
    handle = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(29500 + os.getpid() % 1000), "-m", "jobs.train_bag", *args],
                            cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def two_ranks(tiny_model_dir, toy_corpus, tmp_path_factory) -> Path:
    """An uninterrupted run on two ranks (CPU, gloo)."""
    work = tmp_path_factory.mktemp("two-ranks")
    process = torchrun(flags(tiny_model_dir, toy_corpus, work / "bag"), work / "log")
    assert process.wait(timeout=300) == 0, (work / "log").read_text()[-3000:]
    return work / "bag"


def test_two_ranks_under_torchrun_train_what_one_process_trains(two_ranks, reference):
    done, ref_done = json.loads((two_ranks / "DONE").read_text()), json.loads((reference / "DONE").read_text())
    assert done["tokens_seen"] == ref_done["tokens_seen"] and done["steps"] == ref_done["steps"]
    assert done["config"]["world_size"] == 2
    assert done["final_loss"] == pytest.approx(ref_done["final_loss"], abs=1e-5)
    mine, ref = weights(two_ranks), weights(reference)
    # the same gradient summed in another order: equal up to float rounding, not bitwise
    assert max((mine[k] - ref[k]).abs().max().item() for k in ref) < 1e-4


def test_two_ranks_interrupted_resume_to_the_same_bits(two_ranks, tiny_model_dir, toy_corpus, tmp_path):
    output, log = tmp_path / "bag", tmp_path / "log"
    args = flags(tiny_model_dir, toy_corpus, output)
    process = torchrun(args, log)
    wait_for(log, "checkpoint at step 4", process, timeout=300)
    os.killpg(process.pid, signal.SIGTERM)  # what a container stop delivers to the whole process group
    assert process.wait(timeout=120) != 0 and not (output / "DONE").exists()
    rerun = torchrun(args, tmp_path / "rerun.log")
    assert rerun.wait(timeout=300) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    assert "resuming from step" in (tmp_path / "rerun.log").read_text()
    mine, ref = weights(output), weights(two_ranks)
    assert all(torch.equal(mine[k], ref[k]) for k in ref)


# --- the recipe as the authors ran it (issue 22) ---------------------------------------------------

def deepspeed_warmup_decay_lr(updates: int, warmup_num_steps: int, total_num_steps: int) -> float:
    """The lr of the update after `updates` updates, ported from deepspeedai/DeepSpeed deepspeed/runtime/
    lr_schedules.py (Apache-2.0): WarmupLR.__init__ (warmup_num_steps = max(2, ...), last_batch_iteration -1,
    lr = min lr then), get_lr and WarmupDecayLR._get_gamma with warmup_type "log", min lr 0 and max lr 1;
    its engine calls step() (last_batch_iteration + 1) after each optimizer update."""
    last_batch_iteration, warmup_num_steps = updates - 1, max(2, warmup_num_steps)
    if last_batch_iteration < 0:
        return 0.0
    if last_batch_iteration < warmup_num_steps:
        return (1.0 / math.log(warmup_num_steps)) * math.log(last_batch_iteration + 1)
    return max(0.0, float(total_num_steps - last_batch_iteration) / float(max(1.0, total_num_steps - warmup_num_steps)))


def test_log_warmup_is_deepspeeds_warmup_decay_lr_as_the_boom_scripts_run_it():
    """deepspeed/runtime/lr_schedules.py WarmupDecayLR (warmup_type "log", the default), as transformers
    fills ds_stage3.json's "auto": min 0, max the lr, warmup ceil(0.1 x steps). DeepSpeed starts at
    iteration -1 (lr = min) and steps after each update, so update k runs at iteration k - 1."""
    from jobs.optim import warmup_decay
    from jobs.recipe import COMMON

    total, warmup = 100, math.ceil(0.1 * 100)
    lrs = [warmup_decay(k, warmup_steps=warmup, total_steps=total, warmup="log") for k in range(total)]
    assert COMMON["warmup"] == "log" and lrs[0] == lrs[1] == 0.0
    assert lrs[2] == pytest.approx(math.log(2) / math.log(10)) and lrs[10] == pytest.approx(math.log(10) / math.log(10))
    assert lrs[11] == pytest.approx((100 - 10) / 90) and lrs[-1] == pytest.approx(2 / 90)
    assert all(a <= b for a, b in zip(lrs[:11], lrs[1:11])) and all(a >= b for a, b in zip(lrs[11:], lrs[12:]))
    for total_steps in (1, 5, 37, 1000):  # DeepSpeed's own schedule, update for update
        warmup_steps = math.ceil(0.1 * total_steps)
        for k in range(total_steps):
            assert warmup_decay(k, warmup_steps=warmup_steps, total_steps=total_steps, warmup="log") == \
                pytest.approx(deepspeed_warmup_decay_lr(k, warmup_steps, total_steps), abs=1e-12), (total_steps, k)
    # linear: transformers' get_linear_schedule_with_warmup, step for step
    from transformers import get_linear_schedule_with_warmup

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    hf = get_linear_schedule_with_warmup(opt, warmup, total)
    for k in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(
            warmup_decay(k, warmup_steps=warmup, total_steps=total, warmup="linear"))
        opt.step()
        hf.step()


def test_the_config_is_declared_once_flags_and_spec_alike():
    """Every Config field is a flag and a --spec key; the flags' defaults are the dataclass's."""
    import dataclasses

    from jobs.train_config import Config, parse_args, parser

    flags_by_dest = {a.dest: a for a in parser("")._actions if a.dest not in ("help", "spec")}
    assert set(flags_by_dest) == {f.name for f in dataclasses.fields(Config)}
    base = ["--model", "m", "--data", "d", "--fraction", "0.5", "--seed", "1", "--output", "o"]
    assert parse_args(base) == Config(model="m", data="d", fraction=0.5, seed=1, output="o")
    assert parse_args(base + ["--no-gradient-checkpointing", "--warmup", "linear"]).gradient_checkpointing is False
