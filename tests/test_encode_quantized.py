"""jobs.encode on checkpoints saved quantized (issue 23): a compressed-tensors W4A16 checkpoint (the format
of Qwen3-Embedding-4B-W4A16-G128, as llmcompressor writes it) made here from the tiny Qwen3 with
compressed-tensors itself loads through transformers on the CPU and encodes close to the unquantized
model; without the package, a GPTQ checkpoint off a GPU, or --dtype int8 on a quantized checkpoint, the
job refuses in one line (exit 2) naming the fix, before it writes anything."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jobs import encode as encode_job
from tests.test_encode import corpus, cosines, encode, read_output

GROUP = 32  # the tiny model's widths (64, 128) are multiples of it, as 4B's are of G128


def quantize_w4a16(source: Path, target: Path) -> Path:
    """The tiny model with every decoder Linear as symmetric int4 weights, one scale per GROUP inputs (the
    round-to-nearest of min-max scales; GPTQ's calibration chooses the same kind of numbers), packed in
    compressed-tensors' pack-quantized format; embeddings and norms stay 16/32-bit, as in W4A16-G128."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )
    from transformers import AutoModel

    shutil.copytree(source, target)
    model = AutoModel.from_pretrained(str(source)).eval()
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP)
    apply_quantization_config(model, QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}, format="pack-quantized"))
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_scale"):
                groups = module.weight.reshape(module.weight.shape[0], -1, GROUP)
                module.weight_scale.copy_(groups.abs().amax(-1) / 7)
                module.weight_zero_point.zero_()
                module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    for stale in target.glob("*.safetensors"):
        stale.unlink()
    model.save_pretrained(str(target))
    compressor.update_config(str(target))
    return target


def test_a_w4a16_checkpoint_encodes_on_the_cpu_close_to_the_unquantized_model(tiny_model_dir, tmp_path):
    pytest.importorskip("compressed_tensors")
    from safetensors import safe_open

    quantized = quantize_w4a16(tiny_model_dir, tmp_path / "w4a16")
    config = json.loads((quantized / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    with safe_open(str(quantized / "model.safetensors"), "pt") as stored:  # 4-bit packed on disk
        assert any(key.endswith("q_proj.weight_packed") for key in stored.keys())
    source, ids, _ = corpus(tmp_path / "docs.jsonl")
    assert encode(quantized, source, tmp_path / "q", "--dtype", "float32") == 0
    assert encode(tiny_model_dir, source, tmp_path / "full", "--dtype", "float32") == 0
    (q_ids, q), (f_ids, full) = read_output(tmp_path / "q"), read_output(tmp_path / "full")
    assert q_ids == f_ids == ids
    similarity = cosines(q, full)
    assert similarity.min() > 0.9 and not np.allclose(q, full)  # close, and really quantized
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["records"] == len(ids)


def prequantized(tiny_model_dir: Path, target: Path, method: str) -> Path:
    """The tiny model with a config that says it was saved quantized with `method` (no real weights needed:
    the job refuses before loading)."""
    shutil.copytree(tiny_model_dir, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps(config | {"quantization_config": {"quant_method": method}}))
    return target


@pytest.mark.parametrize("method, dtype, missing, words", [
    ("compressed-tensors", "float32", True, "which needs compressed_tensors: pip install 'planner[quantized]'"),
    ("gptq", "float32", False, "gptq checkpoint, whose kernels need a CUDA GPU"),
    ("compressed-tensors", "int8", False, "already quantized (compressed-tensors); --dtype int8 would quantize it"),
    ("awq", "float32", False, "quantized with awq, which jobs.encode does not load"),
])
def test_a_quantized_checkpoint_it_cannot_load_is_refused_in_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys,
                                                                       method, dtype, missing, words):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if missing and name == "compressed_tensors"
                        else (object() if name in ("compressed_tensors", "gptqmodel") else real(name, *a)))
    model = prequantized(tiny_model_dir, tmp_path / "model", method)
    source, _, _ = corpus(tmp_path / "docs.jsonl")
    if dtype == "int8":  # int8 is refused off a GPU before the checkpoint is read: pretend to have one
        monkeypatch.setattr(encode_job, "check_dtype", lambda dtype, device: None)
    assert encode(model, source, tmp_path / "out", "--dtype", dtype) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.parquet"))
