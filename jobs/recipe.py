"""The BOOM training recipe as data, and the FLOP count of a training step: pure Python, no torch.

The planner may import this module (it imports neither torch nor anything outside the standard
library), so the job and the planner agree on the defaults and on how achieved TFLOP/s are counted.

Sources (repository hengran/Bagging-Based-Model-Merging, FlagEmbedding-based, commit aabd1b55):
  LORA_RECIPE  Training/examples/finetune/embedder/decoder_only/base_same_dataset.sh (Qwen3-4B):
               --use_lora True --lora_rank 32 --lora_alpha 32 --target_modules q k v o gate down up,
               --learning_rate 5e-5 --warmup_ratio 0.1 --num_train_epochs 1, 8 GPUs x
               --per_device_train_batch_size 16 = 128 queries per optimizer step with
               --negatives_cross_device (the loss spans all 128), --train_group_size 8,
               --same_dataset_within_batch True, --temperature 0.02, --query_max_len 512
               --passage_max_len 512, --gradient_checkpointing, --knowledge_distillation True
               --kd_loss_type m3_kd_loss, last-token pooling, normalized embeddings.
  FULL_RECIPE  Training/base_same_0.6B.sh (Qwen3-0.6B): the same with --use_lora False,
               per-device batch 32 x 8 GPUs = 256 queries, --knowledge_distillation False.
  Not set by either script, so transformers' TrainingArguments defaults: weight decay 0.0,
  max_grad_norm 1.0, AdamW betas (0.9, 0.999), eps 1e-8. FlagEmbedding's decoder-only model arguments
  default lora_dropout to 0.1 (FlagEmbedding/finetune/embedder/decoder_only/base/arguments.py).
  Schedule: Training/examples/finetune/ds_stage3.json (the 4B script's) sets DeepSpeed's "WarmupDecayLR"
  (all "auto"), and so does the 0.6B script's examples/finetune/ds_stage1.json, which the authors'
  repository does not hold (FlagEmbedding's file of that name, FlagOpen/FlagEmbedding examples/finetune/
  ds_stage1.json, does; its fp16 and bf16 are both "auto", so --fp16 trains that one in fp16); so the
  scripts' schedule is DeepSpeed's, not transformers' lr_scheduler_type "linear": its warmup is
  logarithmic (WarmupLR's warmup_type defaults to "log", deepspeed/runtime/lr_schedules.py), from 0
  (transformers/integrations/deepspeed.py fills warmup_min_lr 0, warmup_max_lr the learning rate,
  warmup_num_steps ceil(0.1 x steps), total_num_steps the steps), then linear decay to 0. That is
  COMMON["warmup"] = "log"; jobs.optim.warmup_decay states the formula.
  Gradient scale: the scripts run 8 ranks (AUTHORS_WORLD_SIZE) under DDP/ZeRO, which average the
  ranks' gradients. With --negatives_cross_device every rank computes the same loss over the gathered
  batch, but its gradient reaches only that rank's own embeddings (AbsModeling._dist_gather_tensor puts
  the local tensor back into the gathered one); the average over 8 ranks is 1/8 of the loss's gradient.
  A `no_in_batch_neg` batch computes each rank's loss over its own queries (the mean over 16), and the
  average is the whole loss's gradient. So IN_BATCH_GRAD_SCALE = 1/8 for batches with in-batch
  negatives and 1 without reproduces what their optimizer saw (measured in issue 22: ratio 0.125 and
  1.000, cosine 1.0), whatever our own number of GPUs: it matters for clipping at 1.0 and, under Adam,
  for the relative step of classification/clustering batches vs retrieval batches.
"""
from __future__ import annotations

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
WARMUPS = ("log", "linear")  # jobs.optim.warmup_decay
AUTHORS_WORLD_SIZE = 8  # GPUs of both BOOM scripts (num_gpus=8; torchrun --nproc_per_node 8 in the .log)
# The gradient scale of a batch with in-batch negatives relative to its loss's gradient (train-bag
# --in-batch-grad-scale): what their DDP average made of it (see above).
IN_BATCH_GRAD_SCALE = 1 / AUTHORS_WORLD_SIZE
COMMON = {"lr": 5e-5, "warmup": "log", "warmup_ratio": 0.1, "epochs": 1, "group_size": 8, "temperature": 0.02,
          "query_max_len": 512, "doc_max_len": 512, "weight_decay": 0.0, "max_grad_norm": 1.0,
          "gradient_checkpointing": True}
LORA_RECIPE = COMMON | {"method": "lora", "batch_size": 128, "kd_loss": "m3",
                        "source": "hengran/Bagging-Based-Model-Merging Training/examples/finetune/embedder/"
                                  "decoder_only/base_same_dataset.sh"}
FULL_RECIPE = COMMON | {"method": "full", "batch_size": 256, "kd_loss": "none",
                        "source": "hengran/Bagging-Based-Model-Merging Training/base_same_0.6B.sh"}
LORA = {"r": 32, "lora_alpha": 32, "lora_dropout": 0.1, "target_modules": list(LORA_TARGETS)}
# Sequences per gradient-cache chunk (jobs.train_bag --mini-batch-size): 32 sequences of 512 tokens keep a
# GPU busy; the planner only goes lower where a card cannot hold them, so a job's numbers do not depend
# on which card it landed on.
DEFAULT_MINI_BATCH = 32
# Padded / real tokens of a step's forward passes with its sequences sorted by length before chunking
# (jobs.gradcache; bench/RESULTS.md "train-bag: padding per step": 1.017 uniform, 1.042 log-normal lengths).
# The job counts its FLOPs on the padded tokens (train_bag's Meter), so the planner, which learns its
# efficiency from those FLOPs, counts a bag's work on its real tokens times this (planner.plan.estimate).
SORTED_CHUNK_PADDING = 1.04
LORA_FROM_PARAMS = 1.0e9  # BOOM fine-tunes the 4B with LoRA and the 0.6B fully; the line is drawn between

# Where train-bag still differs from the authors' scripts, and why (README.md, "The jobs", lists them too).
DEVIATIONS = {
    "query format": "`Instruct: {instruction}\\nQuery:{query}` (the released BOOM and Qwen3-Embedding model "
                    "cards, jobs.embedder) instead of the 4B script's `<instruct>{}\\n<query>{}` with three added "
                    "special tokens, or the 0.6B script's `Instruct: {}\\nQuery: {}` (a space after Query:): the "
                    "merged model is used the way its card says, and added tokens would start untrained",
    "default instruction": "a line without its own instruction (`prompt`) gets jobs.embedder.DEFAULT_INSTRUCTION "
                           "(the Qwen3-Embedding card's web-search one) instead of both scripts' 'Given a query, "
                           "retrieve passages that are relevant to the query.': the one the card's users query "
                           "with; every line of FlagEmbedding's example data (tests/data/flagembedding_sample) carries its "
                           "own `prompt`, so there it reaches none",
    "precision": "bf16 weights with Kahan-compensated AdamW, fp32 moments and fp32 gradient sums (jobs.optim), "
                 "close to DeepSpeed's fp32 master weights; the 4B script passes --fp16 while its ds_stage3.json "
                 "enables bf16 (fp16 'auto'), a pair transformers' DeepSpeed integration reports as a mismatch, "
                 "and the log does not say which ran; the 0.6B script's ds_stage1.json (FlagEmbedding's) would "
                 "train in fp16, whose loss scaling a bf16 GPU does not need: ours is the precision-safe reading",
    "gradient cache": "the step's whole batch on one GPU in chunks (--mini-batch-size), the same gradient up to "
                      "rounding, instead of 8 GPUs x 16 (4B) or x 32 (0.6B) queries: it fits one 24 GB card",
    "padding": "each step's sequences sorted by length before chunking, each chunk padded to its longest, "
               "instead of each GPU's micro-batch padded to its longest (--pad_to_multiple_of 8): the same "
               "gradient up to rounding, less compute spent on padding",
    "kl distillation scale": "--kd-loss kl (not the recipe's) scales its whole loss by --in-batch-grad-scale; "
                             "their DDP would scale only its InfoNCE term (the KL term is each rank's own)",
    "model size": "LoRA (4B script) from 1 B parameters up and full fine-tuning (0.6B script) below, so any "
                  "Qwen3 size gets the nearer of the two scripts",
    "output": "float32 weights (LoRA merged into the base re-read in float32) instead of "
              "--save_merged_lora_model's 16-bit merge, so the bags' small updates survive the merge",
    "checkpoints": "every 500 steps and every jobs.protocol.CHECKPOINT_MINUTES, and on SIGTERM, instead of "
                   "--save_steps 1000: interruptible cloud GPUs; no effect on the weights",
    "bags": "each bag is a sample without replacement of --fraction of every task, drawn with a seed of the "
            "campaign's seed and the fraction (jobs.data): the authors' repository holds no sampling code and "
            "the paper says only that the subsets are distinct; batches and groups are FlagEmbedding's "
            "same-dataset sampler's, drawn from seeded generators of our own (not its global random state), "
            "so a resumed run redraws them",
    "in-batch negatives": "a task also trains without them when its records' type is symmetric_class or "
                          "symmetric_clustering, not only when its directory or file name ends in "
                          "no_in_batch_neg (FlagEmbedding's only test): a bge-full-data corpus concatenated "
                          "without the converter still keeps those batches free of false negatives",
}


def recipe_for(params: int) -> dict:
    """The BOOM recipe for a base model of `params` parameters: LoRA from 1 B up, full fine-tuning below."""
    return dict(LORA_RECIPE if params >= LORA_FROM_PARAMS else FULL_RECIPE)


def parameter_count(config: dict) -> int:
    """Parameters of a Qwen3-style decoder (no LM head) from its config.json; the planner's ModelShape.params."""
    config = config.get("text_config", config)
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads) + 2 * head_dim
    mlp = 3 * hidden * config["intermediate_size"]
    return config["vocab_size"] * hidden + config["num_hidden_layers"] * (attention + mlp + 2 * hidden) + hidden


def train_flops_per_token(params: int, method: str, *, gradient_checkpointing: bool = True,
                          cached_passes: bool = False) -> float:
    """FLOPs the planner counts per trained token (planner/plan/estimate.py train_needs, duplicated here).

    full: 6 P (forward 2P, backward 4P) plus 2P for checkpointing's second forward = 8P;
    lora: 4 P (forward 2P, activation gradients 2P, no weight gradients for the frozen base) + 2P = 6P.
    `cached_passes` (gradient caching, --mini-batch-size smaller than the batch) adds the first,
    graph-free forward: + 2P. P counts every parameter of the embedder, embeddings included, as
    the planner does; achieved TFLOP/s = this x tokens/s, so it compares with the planner's estimate.
    """
    base = 6 if method == "full" else 4
    return float((base + (2 if gradient_checkpointing else 0) + (2 if cached_passes else 0)) * params)
