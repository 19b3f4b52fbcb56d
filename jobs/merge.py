"""Merge several safetensors models into one by Multi-SLERP, streaming tensor by tensor, resumable.

    python -m jobs.merge --config merge.yaml --output URI [--shard-size 2GB]
    python -m jobs.merge --models A,B,C --weights 0.2,0.4,0.6 [--base-model M]
                         [--dtype float32|bfloat16|float16] --output URI [--shard-size 2GB]

The config is mergekit's format (`models: [{model, parameters: {weight}}]`, `merge_method: multislerp`,
optional `base_model`, `dtype`/`out_dtype`, `parameters: {normalize_weights, eps, weight}`). Models
are local directories or fsspec URIs (copied to a local cache first), each one safetensors file or
several with model.safetensors.index.json, sharded alike or not. Every input is checked before
anything is written; a bad one exits 2 with one line naming the model and tensor.

The merge holds one tensor per model plus the result at a time: for each output tensor it reads
that tensor from every model, merges it (jobs.multislerp, in float32 whatever the storage dtype)
and appends its bytes to the output shard it belongs to. The output directory ends up with

    merge_recipe.json              models, weights, method, input hashes and the shard plan (first)
    model-0000i-of-0000n.safetensors, model.safetensors.index.json
    .merge/<shard>.done            a shard counts only once its marker exists
    config, tokenizer, sentence-transformers files of the first model (or of the base)
    DONE                           last

The shard plan is a pure function of the recipe and the input headers, so a killed merge rerun
with the same arguments keeps the finished shards, redoes the rest and ends byte-identical to an
uninterrupted run; a rerun of a finished merge exits 0 at once; a different recipe for an existing
output is refused. Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from jobs import card, storage
from jobs.lifecycle import BadInput, StopRequest, run_job
from jobs.protocol import DONE_MARKER, done_uri

METHOD = "multislerp"
INDEX = "model.safetensors.index.json"
RECIPE = "merge_recipe.json"
MARKERS = ".merge"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json")
NOT_COPIED = {"README.md", RECIPE, DONE_MARKER}
TIED_OUTPUT_EMBEDDING = "lm_head.weight"  # dropped when the config ties it to the input embedding
FLOATS = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2)}
DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}  # output dtype -> safetensors code
CONFIG_KEYS = {"models", "merge_method", "base_model", "dtype", "out_dtype", "parameters"}
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


# --- the recipe: what to merge, as data -------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    models: tuple[str, ...]
    weights: tuple[float, ...]
    base_model: str | None = None
    dtype: str | None = None  # output dtype; None keeps each tensor's dtype in the first model (or base)
    normalize_weights: bool = True
    eps: float = 1e-8


def recipe_from_config(config: object) -> Recipe:
    """A Recipe from a parsed mergekit YAML config (multislerp only)."""
    if not isinstance(config, dict):
        raise BadInput("the merge config must be a YAML mapping with 'models' and 'merge_method'")
    if unknown := sorted(set(config) - CONFIG_KEYS):
        raise BadInput(f"merge config key '{unknown[0]}' is not supported; use only {sorted(CONFIG_KEYS)}")
    if config.get("merge_method") != METHOD:
        raise BadInput(f"merge_method is {config.get('merge_method')!r}: only 'multislerp' is supported")
    parameters = config.get("parameters") or {}
    if not isinstance(parameters, dict) or set(parameters) - {"normalize_weights", "eps", "weight"}:
        raise BadInput("top-level 'parameters' may hold only normalize_weights, eps and weight")
    base = config.get("base_model")
    if base is not None and not isinstance(base, str):
        raise BadInput(f"base_model must be a path or URI, got {base!r}")
    entries = config.get("models")
    if not isinstance(entries, list) or not entries:
        raise BadInput("'models' must be a non-empty list of {model: PATH, parameters: {weight: W}}")
    models, weights = [], []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise BadInput(f"each entry of 'models' needs a 'model' path, got {entry!r}")
        if entry["model"] == base:
            continue  # mergekit treats a listed base model as the origin only
        model_parameters = entry.get("parameters") or {}
        if not isinstance(model_parameters, dict) or set(model_parameters) - {"weight"}:
            raise BadInput(f"model {entry['model']}: only the 'weight' parameter is supported")
        if "weight" not in model_parameters and "weight" not in parameters:
            raise BadInput(f"model {entry['model']} has no weight; set parameters: {{weight: W}}")
        models.append(entry["model"])
        weights.append(_positive_weight(model_parameters.get("weight", parameters.get("weight")), entry["model"]))
    dtype = config.get("out_dtype") or config.get("dtype")
    normalize = parameters.get("normalize_weights", True)
    eps = parameters.get("eps", 1e-8)
    if not isinstance(normalize, bool):
        raise BadInput(f"normalize_weights must be true or false, got {normalize!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise BadInput(f"eps must be a small positive number, got {eps!r}")
    return _checked(Recipe(tuple(models), tuple(weights), base, dtype, normalize, float(eps)))


def recipe_from_args(models: str, weights: str, base_model: str | None, dtype: str | None) -> Recipe:
    paths = [m.strip() for m in models.split(",") if m.strip()]
    values = [w.strip() for w in weights.split(",") if w.strip()]
    if len(paths) != len(values):
        raise BadInput(f"{len(paths)} models but {len(values)} weights: give one weight per model")
    return _checked(Recipe(tuple(paths), tuple(_positive_weight(_number(v, m), m) for m, v in zip(paths, values)),
                           base_model, dtype))


def _number(text: str, model: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BadInput(f"weight {text!r} of model {model} is not a number") from None


def _positive_weight(value: object, model: str) -> float:
    if isinstance(value, list):
        raise BadInput(f"model {model}: per-layer weight lists are not supported; give one positive number")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise BadInput(f"weight of model {model} is {value!r}: it must be a positive number")
    return float(value)


def _checked(recipe: Recipe) -> Recipe:
    if not recipe.models:
        raise BadInput("no models to merge besides the base model")
    if len(set(recipe.models)) != len(recipe.models):
        raise BadInput("a model is listed twice; give each model once with its total weight")
    if recipe.base_model in recipe.models:
        raise BadInput(f"base model {recipe.base_model} is also listed among the models; list it once, as the base")
    if recipe.dtype is not None and recipe.dtype not in DTYPES:
        raise BadInput(f"dtype {recipe.dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    return recipe


def parse_size(text: str) -> int:
    """'2GB' -> 2_000_000_000 (decimal units like transformers; KiB/MiB/GiB binary)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).upper()
    if not match or unit not in SIZE_UNITS or float(match.group(1)) * SIZE_UNITS[unit] < 1:
        raise BadInput(f"shard size {text!r} is not a size like 2GB, 500MB or 1GiB")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


# --- the inputs: tensor headers, validated before anything is written ----------------------

@dataclass(frozen=True)
class TensorSource:
    file: Path
    dtype: str  # safetensors code: F32, BF16, ...
    shape: tuple[int, ...]


@dataclass(frozen=True)
class InputModel:
    uri: str
    path: Path
    config: dict
    tensors: dict[str, TensorSource]

    @property
    def weight_files(self) -> list[Path]:
        return sorted({source.file for source in self.tensors.values()})

    def read(self, name: str):
        from safetensors import safe_open

        # opened per tensor: the file's memory map, and the pages it touched, go away on close
        with safe_open(self.tensors[name].file, framework="pt") as handle:
            return handle.get_tensor(name)


def open_model(uri: str, cache_dir: Path) -> InputModel:
    from safetensors import SafetensorError, safe_open

    path = storage.resolve_model(uri, cache_dir)  # a directory, an fsspec URI or a hub id
    if not path.is_dir():
        raise BadInput(f"model {uri} is not a directory with config.json and safetensors weights")
    if (path / INDEX).exists():
        files = sorted(set(json.loads((path / INDEX).read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise BadInput(f"model {uri} has neither model.safetensors nor {INDEX}; save it with safe_serialization")
    tensors = {}
    for file in files:
        try:
            with safe_open(path / file, framework="pt") as handle:
                for name in handle.keys():
                    piece = handle.get_slice(name)
                    tensors[name] = TensorSource(path / file, piece.get_dtype(), tuple(piece.get_shape()))
        except (OSError, SafetensorError) as exc:
            raise BadInput(f"model {uri}: {file} is not a readable safetensors file ({exc})") from None
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    return InputModel(uri, path, config, tensors)


def merged_tensors(template: InputModel, others: list[InputModel]) -> dict[str, TensorSource]:
    """The tensors to merge, as the template (base or first model) has them; BadInput on any mismatch.

    When the template's config ties the output embedding to the input one, lm_head.weight is left
    out everywhere (present or not): transformers re-ties it on load.
    """
    tied = {TIED_OUTPUT_EMBEDDING} if template.config.get("tie_word_embeddings", False) else set()
    expected = set(template.tensors) - tied
    for model in [template, *others]:
        present = set(model.tensors) - tied
        if missing := sorted(expected - present):
            raise BadInput(f"tensor '{missing[0]}' of model {template.uri} is missing from model {model.uri}")
        if extra := sorted(present - expected):
            raise BadInput(f"tensor '{extra[0]}' of model {model.uri} is not in model {template.uri}")
        for name in sorted(expected):
            mine, theirs = template.tensors[name], model.tensors[name]
            if theirs.dtype not in FLOATS:
                raise BadInput(f"tensor '{name}' of model {model.uri} is {theirs.dtype}: "
                               "only floating-point tensors can be merged")
            if mine.shape != theirs.shape:
                raise BadInput(f"tensor '{name}' has shape {list(mine.shape)} in model {template.uri} "
                               f"but {list(theirs.shape)} in model {model.uri}")
    return {name: template.tensors[name] for name in sorted(expected)}


# --- the shard plan: a pure function of the tensor list --------------------------------------

@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * FLOATS[self.dtype][1]


@dataclass(frozen=True)
class Shard:
    file: str
    tensors: tuple[OutputTensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def plan_shards(tensors: list[OutputTensor], max_bytes: int) -> list[Shard]:
    """Greedy packing in the given order; a tensor larger than max_bytes gets a shard of its own."""
    groups: list[list[OutputTensor]] = [[]]
    for tensor in tensors:
        if groups[-1] and sum(t.nbytes for t in groups[-1]) + tensor.nbytes > max_bytes:
            groups.append([])
        groups[-1].append(tensor)
    return [Shard(f"model-{i:05d}-of-{len(groups):05d}.safetensors", tuple(group))
            for i, group in enumerate(groups, start=1)]


def safetensors_header(shard: Shard) -> bytes:
    """The shard's header: 8-byte little-endian length, then JSON padded with spaces to 8 bytes."""
    entries, offset = {"__metadata__": {"format": "pt"}}, 0
    for tensor in shard.tensors:
        entries[tensor.name] = {"dtype": tensor.dtype, "shape": list(tensor.shape),
                                "data_offsets": [offset, offset + tensor.nbytes]}
        offset += tensor.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


# --- running the merge -----------------------------------------------------------------------

def merge(recipe: Recipe, output: str, *, shard_bytes: int = 2 * 10**9, cache_dir: Path,
          stop: StopRequest | None = None) -> None:
    """Validate everything, then write (or finish) the merged model at `output`."""
    identity = {"recipe": {"method": METHOD, **asdict(recipe)}, "shard_bytes": shard_bytes}
    recorded = storage.read_json(storage.join(output, RECIPE)) if storage.exists(storage.join(output, RECIPE)) else None
    if recorded is not None and {key: recorded.get(key) for key in identity} != _as_json(identity):
        raise BadInput(f"{output} holds a different merge ({RECIPE} differs); choose a new --output or delete it")
    # hidden entries are the planner's (.attempts: how each attempt on a box went), not another output
    if recorded is None and storage.exists(output) and [n for n in storage.listing(output) if not n.startswith(".")]:
        raise BadInput(f"{output} exists and is not a merge output; choose a new or empty --output")
    if storage.exists(done_uri(output)):
        print(f"{output} is already merged", file=sys.stderr)
        return

    models = [open_model(uri, cache_dir) for uri in recipe.models]
    base = open_model(recipe.base_model, cache_dir) if recipe.base_model else None
    inputs = [*models, *([base] if base else [])]
    template = base or models[0]
    sources = merged_tensors(template, [m for m in inputs if m is not template])
    plan = plan_shards([OutputTensor(name, DTYPES.get(recipe.dtype, source.dtype), source.shape)
                        for name, source in sources.items()], shard_bytes)
    identity["shards"] = [{"file": s.file, "tensors": [asdict(t) for t in s.tensors]} for s in plan]
    if recorded is not None and recorded.get("shards") != _as_json(identity["shards"]):
        raise BadInput(f"the inputs' tensors changed since {output} was started; choose a new --output or delete it")
    if recorded is None:
        hashes = storage.sha256_files([file for m in inputs for file in m.weight_files])
        storage.write_json_atomic(storage.join(output, RECIPE), {**identity, "inputs": {
            m.uri: {str(file.relative_to(m.path)): hashes[file] for file in m.weight_files} for m in inputs}})

    _write_shards(plan, models, base, recipe, output, cache_dir, stop)
    storage.write_json_atomic(storage.join(output, INDEX), {
        "metadata": {"total_size": sum(s.nbytes for s in plan)},
        "weight_map": {t.name: s.file for s in plan for t in s.tensors},
    })
    _copy_model_files(template, output, recipe.dtype)
    card.write_card(output, model_card(recipe, models, base))
    storage.write_bytes_atomic(done_uri(output), b"")


def _write_shards(plan: list[Shard], models: list[InputModel], base: InputModel | None, recipe: Recipe,
                  output: str, cache_dir: Path, stop: StopRequest | None = None) -> None:
    import torch
    from tqdm import tqdm

    from jobs.multislerp import multislerp

    staging = (cache_dir / "staging" / storage.short_digest(output)) if storage.is_remote(output) else storage.local_path(output)
    todo = [s for s in plan if not storage.exists(_marker(output, s))]
    tensors_done, tensors_total = sum(len(s.tensors) for s in plan if s not in todo), sum(len(s.tensors) for s in plan)
    with tqdm(total=sum(s.nbytes for s in plan), initial=sum(s.nbytes for s in plan if s not in todo),
              unit="B", unit_scale=True, desc="multislerp") as progress:
        for shard in todo:
            if stop is not None:
                stop.check()  # SIGTERM: the finished shards stand; exit 75, a rerun does the rest
            partial = staging / MARKERS / f"{shard.file}.partial"
            partial.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as handle:
                handle.write(safetensors_header(shard))
                for tensor in shard.tensors:
                    try:
                        merged = multislerp([m.read(tensor.name) for m in models], recipe.weights,
                                            base.read(tensor.name) if base else None,
                                            normalize_weights=recipe.normalize_weights, eps=recipe.eps)
                    except ValueError as exc:
                        raise BadInput(f"tensor '{tensor.name}': {exc}") from None
                    stored = merged.to(getattr(torch, FLOATS[tensor.dtype][0]))
                    handle.write(stored.reshape(-1).view(torch.uint8).numpy())
                    tensors_done += 1
                    progress.set_postfix_str(f"{tensors_done}/{tensors_total} tensors", refresh=False)
                    progress.update(tensor.nbytes)
                handle.flush()
                os.fsync(handle.fileno())
            storage.publish_file(partial, storage.join(output, shard.file))
            storage.write_bytes_atomic(_marker(output, shard), b"")


def _marker(output: str, shard: Shard) -> str:
    return storage.join(output, MARKERS, f"{shard.file}.done")


def _copy_model_files(template: InputModel, output: str, dtype: str | None) -> None:
    """Config, tokenizer and sentence-transformers module files: everything but weights and cards."""
    for file in sorted(p for p in template.path.rglob("*") if p.is_file()):
        relative = file.relative_to(template.path)
        if (relative.name in NOT_COPIED or relative.name.endswith(WEIGHT_SUFFIXES)
                or any(part.startswith(".") for part in relative.parts)):
            continue
        data = file.read_bytes()
        if relative.as_posix() == "config.json" and dtype:
            config = json.loads(data)
            config["torch_dtype" if "torch_dtype" in config and "dtype" not in config else "dtype"] = dtype
            data = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        storage.write_bytes_atomic(storage.join(output, *relative.parts), data)


def model_card(recipe: Recipe, models: list[InputModel], base: InputModel | None) -> str:
    """README.md of the merge: the Multi-SLERP recipe and, per input, its weight and (for our train-bag
    outputs, from their DONE markers) base model, fraction, seed and data hash."""
    rows = {}
    for model, weight in zip(models, recipe.weights):
        done = _done_of(model)
        config = done.get("config", {})
        bag = (f"; {config.get('model')} on {config.get('fraction')} of {config.get('data')} (seed {config.get('seed')}, "
               f"data sha256 {done.get('bag_sha256', '?')[:16]})" if config else "")
        rows[model.uri] = f"weight {weight:g}{bag}"
    bases = [c for m in models if (c := _done_of(m).get("config", {}).get("model"))]
    total = sum(recipe.weights)
    return card.render(
        title=f"BOOM merge of {len(models)} models",
        summary=(f"Multi-SLERP merge (BOOM, arXiv 2602.05787) of {len(models)} embedders with weights "
                 f"{', '.join(f'{w:g}' for w in recipe.weights)}"
                 + (f" (normalized: {', '.join(f'{w / total:.3f}' for w in recipe.weights)})"
                    if recipe.normalize_weights else "")
                 + (f", around base model `{recipe.base_model}`" if recipe.base_model else "")
                 + ". Merged by `python -m jobs.merge`, tensor by tensor in float32."),
        base_models=sorted(set(bases + ([recipe.base_model] if recipe.base_model else []))),
        sections={"Merge": {"method": METHOD, "weights": list(recipe.weights),
                            "normalize weights": recipe.normalize_weights, "eps": recipe.eps,
                            "base model": recipe.base_model, "output dtype": recipe.dtype or "as the inputs"},
                  "Models": rows},
        tags=["boom", "merge", "multislerp"])


def _done_of(model: InputModel) -> dict:
    marker = model.path / DONE_MARKER
    try:
        return json.loads(marker.read_text()) if marker.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _as_json(value):
    return json.loads(json.dumps(value))


# --- command line ------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.merge", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="mergekit YAML config with merge_method: multislerp")
    source.add_argument("--models", help="comma-separated model directories or fsspec URIs")
    parser.add_argument("--weights", help="comma-separated positive weights, one per model")
    parser.add_argument("--base-model", help="merge the differences from this model and add it back")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="output dtype (default: the inputs')")
    parser.add_argument("--output", required=True, help="output directory or fsspec URI")
    parser.add_argument("--shard-size", default="2GB", help="largest output shard, e.g. 2GB or 500MB")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "planner-jobs",
                        help="where remote inputs are downloaded to")
    args = parser.parse_args(argv)
    if args.config and (args.weights or args.base_model or args.dtype):
        parser.error("--weights, --base-model and --dtype go in the config file when --config is given")
    if args.models and not args.weights:
        parser.error("--models needs --weights, one positive weight per model")

    def body(stop: StopRequest) -> int:
        if args.config:
            import yaml

            if not args.config.is_file():
                raise BadInput(f"config {args.config} not found")
            try:
                recipe = recipe_from_config(yaml.safe_load(args.config.read_text()))
            except yaml.YAMLError as exc:
                raise BadInput(f"config {args.config} is not valid YAML ({str(exc).splitlines()[0]})") from None
        else:
            recipe = recipe_from_args(args.models, args.weights, args.base_model, args.dtype)
        merge(recipe, args.output, shard_bytes=parse_size(args.shard_size), cache_dir=args.cache_dir, stop=stop)
        return 0

    return run_job(body, "rerun the same command: finished shards are kept")

if __name__ == "__main__":
    raise SystemExit(main())
