#!/usr/bin/env bash
# The GPU figures in one command: whole-brain volumes per minute, bf16 against fp32, peak memory.
#
#   benchmarks/gpu.sh [CKPT] [OUT_DIR]
#
# CKPT (optional): a trained checkpoint for the accuracy section (bf16 and one-pass masks: Dice
# against the fp32 sliding window on held-out synthetic scans). Without it, a smoke network is
# trained on the GPU first (about a minute), so a short loan of a GPU needs no preparation.
# OUT_DIR (default benchmarks/results/gpu): latest.json (every figure, with the GPU and the load),
# latest.md (the table) and precision.json (TF32, IEEE fp32 and bf16 on the network alone).
# PYTHON selects the interpreter (default .venv/bin/python, else python3).
# Nothing in the repository's README table changes (--no-readme); copy the rows by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
OUT_DIR="${2:-benchmarks/results/gpu}"
"$PYTHON" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"benchmarks/gpu.sh: no CUDA device visible to torch {torch.__version__}")
print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA {torch.version.cuda}; "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}")
PY
CKPT="${1:-}"
if [ -z "$CKPT" ]; then
    RUN_DIR="$(mktemp -d)"
    "$PYTHON" train.py experiment=smoke trainer.accelerator=gpu trainer.devices=1 hydra.run.dir="$RUN_DIR" >"$RUN_DIR/train.log" 2>&1 \
        || { tail -20 "$RUN_DIR/train.log"; exit 1; }
    CKPT="$RUN_DIR/checkpoints/last.ckpt"
fi
# inference: vol/min (goal >= 300 on an H100-class GPU), bf16 variants, torch.cuda.max_memory_allocated;
# accuracy: Dice of bf16 and one-pass masks against the fp32 sliding window on a trained network
"$PYTHON" benchmarks/run.py --device cuda --sections inference,accuracy --ckpt "$CKPT" --out "$OUT_DIR" --no-readme
# precision: fp32 with and without TF32 and bf16 on the network alone, timed, against the CPU's logits
"$PYTHON" benchmarks/bench_gpu_precision.py --out "$OUT_DIR/precision.json"
"$PYTHON" - "$OUT_DIR/latest.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
for section in results["sections"]:
    d = section.get("details", {})
    for name, v in sorted(d.get("variants", {}).items()):
        s = v.get("median_s") or v.get("predict_median_s")
        dice = v.get("dice_vs_baseline", v.get("dice_vs_reference", "-"))
        print(f"{section['name']:>9} {name:<22} {s:8.3f} s  {60 / s:7.0f} vol/min  "
              f"peak {v.get('peak_mem_mib', '-')} MiB  Dice vs the fp32 sliding window {dice}")
    for row in section.get("rows", []):
        print(f"{section['name']:>9} | {row['goal']} | {row['candidate']} | met: {row['met']}")
PY
