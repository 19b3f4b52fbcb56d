#!/usr/bin/env bash
# The GPU figures in one command, on one H100/H200 in under 8 minutes, no network needed:
#
#     bash bench/gpu.sh            # writes bench/out/gpu.json and bench/out/gpu.md (paste into bench/RESULTS.md)
#     bash bench/gpu.sh --smoke    # the same code on tiny models, on any device (CPU included), in ~1 minute
#
# 1. train: bench/bench_train_bag.py gpu on a random model with Qwen3-4B's exact config (hidden 2560,
#    36 layers, 32 heads, 8 KV heads, head_dim 128, intermediate 9728, vocab 151936, tied embeddings,
#    rope_theta 1e6; hard-coded in bench_encode.QWEN3_4B), bf16: the BOOM recipe with LoRA (r 32,
#    group size 8, gradient checkpointing) and full fine-tuning (Kahan-compensated bf16 AdamW), 32
#    queries x 8 documents of 512 tokens a step, 3 steps each (the first is warm-up), at gradient-cache
#    chunks of 8 and 32 sequences: tokens/s, MFU, the job's own TFLOP/s per GPU, and for each chunk the
#    job's measured peak VRAM (allocated / reserved, jobs.memory) beside the planner's need at that
#    chunk (planner/plan/estimate.py Needs.vram_at): the first lent GPU checks the memory model.
# 2. encode: bench/bench_encode.py gpu, 4,000 documents of 50-1,000 tokens: ours vs sentence-transformers,
#    tokens/s and MFU, bf16 (int8/nf4 too when bitsandbytes imports).
# Environment: PYTHON (default .venv/bin/python if present, else python), GPU_BENCH_OUT (default bench/out).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
OUT=${GPU_BENCH_OUT:-bench/out}
mkdir -p "$OUT"
smoke=()
if [ "${1:-}" = "--smoke" ]; then smoke=(--smoke); fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)

"$PYTHON" bench/bench_train_bag.py gpu "${smoke[@]}" --methods lora full --batch-sizes 32 --steps 3 \
    --group-size 8 --mini-batch-sizes 8 32 --out "$OUT/train-gpu.json" > "$OUT/train-gpu.md"
"$PYTHON" bench/bench_encode.py gpu "${smoke[@]}" --docs 4000 --vram-docs 500 --sweep --st-batch-sizes 32 \
    --out "$OUT/encode-gpu.json" > "$OUT/encode-gpu.md"

"$PYTHON" - "$OUT" "$start" <<'EOF'
import json, sys, time
from pathlib import Path

out, start = Path(sys.argv[1]), int(sys.argv[2])
train, encode = (json.loads((out / f"{name}-gpu.json").read_text()) for name in ("train", "encode"))
failed = [f"{r['method']} batch {r['batch_size']}" for r in train["runs"] if "error" in r]
(out / "gpu.json").write_text(json.dumps({"train": train, "encode": encode, "seconds": time.time() - start,
                                          "failed": failed}, indent=2) + "\n")
(out / "gpu.md").write_text("### Training (bench/bench_train_bag.py gpu)\n\n" + (out / "train-gpu.md").read_text()
                            + "\n### Encoding (bench/bench_encode.py gpu)\n\n" + (out / "encode-gpu.md").read_text())
print((out / "gpu.md").read_text())
print(f"bench/gpu.sh: {time.time() - start:.0f} s; wrote {out / 'gpu.json'} and {out / 'gpu.md'}"
      + (f"; FAILED: {', '.join(failed)}" if failed else ""))
sys.exit(1 if failed else 0)
EOF
