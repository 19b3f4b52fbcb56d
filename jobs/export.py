"""A trained bag as its output directory: float32 weights, the sentence-transformers files, the model card.

The directory loads with SentenceTransformer(path) and AutoModel.from_pretrained(path) (safetensors,
float32) and has a README.md model card; LoRA runs also keep the adapter in adapter/. A remote output
is staged locally and uploaded as a tree. The trainer writes DONE after this, never before.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from jobs import card, recipe, storage
from jobs.embedder import load_model, write_sentence_transformers_files


def float32_model(config, base_model_path: str, net, optimizer):
    """The trained embedder on the CPU in float32: compensated weights (full), or the adapter merged
    into the base re-read in float32 (LoRA: merging into bf16 weights would round the update away)."""
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        adapter = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(net).items()}
        base = load_model(base_model_path, device=torch.device("cpu"), dtype=torch.float32)
        wrapped = get_peft_model(base, LoraConfig(**recipe.LORA))
        set_peft_model_state_dict(wrapped, adapter)
        return wrapped.merge_and_unload()
    precise = {p: optimizer.precise(p) if hasattr(optimizer, "precise") else p.detach().float()
               for p in net.parameters() if p.requires_grad}
    with torch.no_grad():
        for p, value in precise.items():
            p.data = value.to(p.device)
    return net.to(device="cpu", dtype=torch.float32)


def write_output(config, base_model_path: str, net, tokenizer, optimizer, done: dict) -> None:
    """The trained embedder as a sentence-transformers + transformers directory in float32, with a
    model card (and the adapter for LoRA), at config.output."""
    remote = storage.is_remote(config.output)
    staging = Path(tempfile.mkdtemp(prefix="train-bag-", dir=config.cache_dir)) if remote else storage.local_path(
        config.output)
    staging.mkdir(parents=True, exist_ok=True)
    if config.method == "lora":
        net.save_pretrained(str(staging / "adapter"), safe_serialization=True)
    out = float32_model(config, base_model_path, net, optimizer)
    out.config.use_cache = True
    out.save_pretrained(str(staging), safe_serialization=True)
    tokenizer.save_pretrained(str(staging))
    write_sentence_transformers_files(staging, hidden_size=out.config.hidden_size,
                                      max_seq_length=max(config.query_max_len, config.doc_max_len))
    (staging / card.CARD).write_text(model_card(config, done))
    if remote:
        storage.upload_tree(staging, config.output)


def model_card(config, done: dict) -> str:
    training = {"method": config.method, "LoRA": json.dumps({k: v for k, v in recipe.LORA.items()})
                if config.method == "lora" else None, "training dtype": config.dtype,
                "optimizer": "AdamW, Kahan-compensated bf16 weights, fp32 moments (jobs.optim)"
                if config.optimizer == "adamw" else "torch.optim.AdamW",
                "learning rate": config.learning_rate, "warmup ratio": config.warmup_ratio,
                "schedule": f"{config.warmup} warmup, then linear decay to 0", "weight decay": config.weight_decay,
                "epochs": config.epochs, "max steps": config.max_steps, "queries per step": config.batch_size,
                "group size": f"{config.group_size} (1 positive + up to {config.group_size - 1} hard negatives)",
                "temperature": config.temperature, "distillation": config.kd_loss,
                "in-batch gradient scale": config.in_batch_grad_scale,
                "query / document max tokens": f"{config.query_max_len} / {config.doc_max_len}",
                "gradient checkpointing": config.gradient_checkpointing,
                "gradient cache chunk": config.mini_batch_size or "off", "recipe source": done["recipe_source"],
                "output dtype": "float32"}
    bag = {"data": config.data, "fraction": config.fraction, "seed": config.seed,
           "replay data": config.replay_data, "replay fraction": config.replay_fraction,
           "records": done["bag_records"], **done["bag_draws"], "data hash (sha256 of the bag's records)": done["bag_sha256"]}
    run = {"steps": done["steps"], "tokens": done["tokens_seen"], "final loss": round(done["final_loss"], 5),
           "tokens/s": done["tokens_per_s"], "GPUs": done["gpus"], "TFLOP/s per GPU": done["tflops_per_gpu"]}
    return card.render(
        title=(f"BOOM bag: {Path(config.model.rstrip('/')).name} on {config.fraction:.0%} of the data "
               f"(seed {config.seed})"),
        summary=(f"One bag of BOOM (bagging-based model merging, arXiv 2602.05787): `{config.model}` fine-tuned "
                 f"with InfoNCE on a seeded, task-stratified {config.fraction:.0%} sample of `{config.data}`. "
                 "Trained by `python -m jobs.train_bag`."),
        base_models=[config.model], sections={"Training": training, "Bag": bag, "Run": run}, tags=["boom", "bagging"])
