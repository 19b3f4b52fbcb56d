"""`python -m jobs.merge` on tiny random Qwen3 embedders: exact per-tensor merges, resume, bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from jobs.merge import main
from jobs.multislerp import multislerp
from jobs.storage import sha256_file

WEIGHTS = ["0.2", "0.4", "0.6"]
SMALL_SHARDS = ["--shard-size", "40KB"]  # the tiny model is ~400 KB: about a dozen shards


def make_variant(source: Path, target: Path, seed: int, *, shards: int = 1, edit=None) -> Path:
    """A copy of `source` with perturbed weights, saved in `shards` files; `edit` may change the tensors."""
    shutil.copytree(source, target)
    tensors = load_input(target)
    generator = torch.Generator().manual_seed(seed)
    tensors = {name: t + 0.02 * torch.randn(t.shape, generator=generator) for name, t in tensors.items()}
    if edit:
        edit(tensors)
    for file in [*target.glob("*.safetensors"), *target.glob("*.index.json")]:
        file.unlink()
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
        return target
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i::shards]
        save_file({n: tensors[n] for n in part}, target / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file))
    (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return target


@pytest.fixture(scope="module")
def bags(tiny_model_dir, tmp_path_factory) -> list[Path]:
    """Three fine-tuned-looking variants of the tiny model, sharded in three different ways."""
    root = tmp_path_factory.mktemp("bags")
    return [make_variant(tiny_model_dir, root / f"bag{i}", seed=i, shards=shards)
            for i, shards in enumerate([1, 2, 3])]


def load_output(directory: Path) -> dict[str, torch.Tensor]:
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    tensors = {}
    for file in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(directory / file))
    assert sorted(tensors) == sorted(index["weight_map"])
    return tensors


def load_input(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def merge_args(models: list[Path], output: Path, weights=WEIGHTS, *extra: str) -> list[str]:
    return ["--models", ",".join(map(str, models)), "--weights", ",".join(weights), "--output", str(output),
            *SMALL_SHARDS, *extra]


def test_every_tensor_is_the_multislerp_of_the_inputs(bags, tmp_path):
    output = tmp_path / "merged"
    assert main(merge_args(bags, output)) == 0

    inputs = [load_input(bag) for bag in bags]
    merged = load_output(output)
    assert sorted(merged) == sorted(inputs[0])
    for name, tensor in merged.items():
        assert torch.equal(tensor, multislerp([t[name] for t in inputs], [0.2, 0.4, 0.6])), name
    assert len(list(output.glob("model-*.safetensors"))) > 5
    assert (output / "DONE").exists()
    recipe = json.loads((output / "merge_recipe.json").read_text())
    assert recipe["recipe"]["models"] == [str(b) for b in bags] and recipe["recipe"]["weights"] == [0.2, 0.4, 0.6]
    assert recipe["inputs"][str(bags[2])] == {f.name: sha256_file(f) for f in sorted(bags[2].glob("*.safetensors"))}


def test_a_mergekit_config_gives_the_same_output_as_flags(bags, tmp_path):
    config = tmp_path / "merge.yaml"
    entries = "".join(f"  - model: {bag}\n    parameters: {{weight: {w}}}\n" for bag, w in zip(bags, WEIGHTS))
    config.write_text("merge_method: multislerp\ndtype: float32\nparameters: {normalize_weights: true}\n"
                      f"models:\n{entries}")
    assert main(["--config", str(config), "--output", str(tmp_path / "from-config"), *SMALL_SHARDS]) == 0
    assert main(merge_args(bags, tmp_path / "from-flags", WEIGHTS, "--dtype", "float32")) == 0
    assert tree(tmp_path / "from-config") == tree(tmp_path / "from-flags")


def test_a_base_model_merges_the_differences_and_adds_the_base_back(bags, tiny_model_dir, tmp_path):
    assert main(merge_args(bags[:2], tmp_path / "out", WEIGHTS[:2], "--base-model", str(tiny_model_dir))) == 0
    inputs, base = [load_input(bag) for bag in bags[:2]], load_input(tiny_model_dir)
    for name, tensor in load_output(tmp_path / "out").items():
        assert torch.equal(tensor, multislerp([t[name] for t in inputs], [0.2, 0.4], base[name])), name


def test_merging_copies_of_a_model_encodes_like_the_model(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    copies = [shutil.copytree(tiny_model_dir, tmp_path / f"copy{i}") for i in range(3)]
    assert main(merge_args(copies, tmp_path / "merged")) == 0

    texts = ["red apple", "python server code"]
    original = SentenceTransformer(str(tiny_model_dir), device="cpu")
    merged = SentenceTransformer(str(tmp_path / "merged"), device="cpu")
    torch.testing.assert_close(merged.encode(texts, prompt_name="query", convert_to_tensor=True),
                               original.encode(texts, prompt_name="query", convert_to_tensor=True), atol=1e-5, rtol=0)
    AutoModel.from_pretrained(str(tmp_path / "merged"))


def test_bfloat16_output(bags, tmp_path):
    from transformers import AutoModel

    assert main(merge_args(bags, tmp_path / "out", WEIGHTS, "--dtype", "bfloat16")) == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    for shard in (tmp_path / "out").glob("model-*.safetensors"):
        with safe_open(shard, framework="pt") as handle:
            assert {handle.get_slice(n).get_dtype() for n in handle.keys()} == {"BF16"}
    assert AutoModel.from_pretrained(str(tmp_path / "out")).dtype == torch.bfloat16


def test_a_tied_output_embedding_may_be_present_or_absent(bags, tmp_path):
    with_head = make_variant(bags[0], tmp_path / "with-head", seed=9,
                             edit=lambda t: t.update({"lm_head.weight": t["embed_tokens.weight"].clone()}))
    assert main(merge_args([bags[1], with_head], tmp_path / "out", WEIGHTS[:2])) == 0
    assert "lm_head.weight" not in load_output(tmp_path / "out")


KILL_AFTER_MERGES = """
import os, signal, sys
import jobs.multislerp
from jobs.merge import main

real, calls = jobs.multislerp.multislerp, []
def dies_midway(*args, **kwargs):
    calls.append(1)
    if len(calls) == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
jobs.multislerp.multislerp = dies_midway
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_midway_then_rerun_gives_a_byte_identical_output(bags, tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    args = merge_args(bags, killed)
    env = {**os.environ, "KILL_AT": "15", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", KILL_AFTER_MERGES, *args], env=env, capture_output=True)
    assert run.returncode == -9, run.stderr.decode()[-2000:]
    finished = sorted(p.name.removesuffix(".done") for p in (killed / ".merge").glob("*.done"))
    assert len(finished) >= 2 and not (killed / "DONE").exists()
    inodes = {name: (killed / name).stat().st_ino for name in finished}

    assert main(args) == 0
    assert main(merge_args(bags, clean)) == 0
    assert tree(killed) == tree(clean)
    assert {name: (killed / name).stat().st_ino for name in finished} == inodes  # kept, not rewritten


def test_rerunning_a_finished_merge_exits_0_and_a_different_recipe_is_refused(bags, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(merge_args(bags, output)) == 0
    before = {p: p.stat().st_mtime_ns for p in output.rglob("*")}
    assert main(merge_args(bags, output)) == 0
    assert {p: p.stat().st_mtime_ns for p in output.rglob("*")} == before
    capsys.readouterr()
    assert main(merge_args(bags, output, ["0.2", "0.4", "0.9"])) == 2
    assert "different merge" in capsys.readouterr().err


def drop_norm(tensors):
    del tensors["norm.weight"]


def grow_vocabulary(tensors):
    tensors["embed_tokens.weight"] = torch.cat([tensors["embed_tokens.weight"], torch.zeros(1, 64)])


@pytest.mark.parametrize(("case", "expected"), [
    ("method", "only 'multislerp'"),
    ("slices", "'slices' is not supported"),
    ("missing-model", "not found"),
    ("zero-weight", "positive number"),
    ("negative-weight", "positive number"),
    ("text-weight", "not a number"),
    ("weight-list", "per-layer weight lists"),
    ("weight-count", "one weight per model"),
    ("missing-tensor", "tensor 'norm.weight'"),
    ("shape", "tensor 'embed_tokens.weight' has shape [400, 64]"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, expected, bags, tmp_path, capsys):
    output = tmp_path / "out"
    models, weights = [str(b) for b in bags[:2]], ["0.2", "0.4"]
    config = None
    if case in ("method", "slices", "weight-list"):
        entries = [{"model": m, "parameters": {"weight": [0.1, 0.2] if case == "weight-list" else 1.0}} for m in models]
        config = {"merge_method": "ties" if case == "method" else "multislerp", "models": entries}
        if case == "slices":
            config["slices"] = []
    elif case == "missing-model":
        models[1] = str(tmp_path / "nowhere")
    elif case in ("zero-weight", "negative-weight", "text-weight"):
        weights[1] = {"zero-weight": "0", "negative-weight": "-1", "text-weight": "abc"}[case]
    elif case == "weight-count":
        weights.append("0.6")
    else:
        edit = drop_norm if case == "missing-tensor" else grow_vocabulary
        models[1] = str(make_variant(bags[1], tmp_path / "odd", seed=5, edit=edit))
    if config:
        (tmp_path / "merge.yaml").write_text(json.dumps(config))  # JSON is YAML
        args = ["--config", str(tmp_path / "merge.yaml"), "--output", str(output)]
    else:
        args = ["--models", ",".join(models), "--weights", ",".join(weights), "--output", str(output)]

    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and expected in error, error
    if case in ("missing-tensor", "shape"):
        assert models[1] in error
    assert not output.exists()


def test_remote_inputs_and_output(bags, tmp_path):
    import fsspec

    memory = fsspec.filesystem("memory")
    for bag in bags[:2]:
        memory.put(str(bag), f"/remote/{bag.name}", recursive=True)
    remote_models = [f"memory://remote/{bag.name}" for bag in bags[:2]]
    args = ["--models", ",".join(remote_models), "--weights", "0.2,0.4", "--output", "memory://remote/out",
            "--cache-dir", str(tmp_path / "cache"), *SMALL_SHARDS]
    assert main(args) == 0
    assert main(merge_args(bags[:2], tmp_path / "local", WEIGHTS[:2])) == 0
    local = load_output(tmp_path / "local")
    assert memory.exists("/remote/out/DONE")
    for file in memory.ls("/remote/out", detail=False):
        if file.endswith(".safetensors"):
            memory.get(file, str(tmp_path / "fetched.safetensors"))
            for name, tensor in load_file(tmp_path / "fetched.safetensors").items():
                assert torch.equal(tensor, local[name])
