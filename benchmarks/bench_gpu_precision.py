"""GPU precision: what TF32 and bf16 buy and what they change, on the network alone.

The project's default U-Net (random weights, batch norm folded, as ``infer.py`` runs it) makes one
pass over the head box of a 1 mm MNI152 head on the GPU in three ways, interleaved, timed with CUDA
events (median of ``--repeats`` after three warm-up passes each):

==============  =================================================================================
``fp32_tf32``   fp32 with cuDNN's default, TF32 convolutions on Ampere and later GPUs
``fp32_ieee``   fp32 without TF32 (:func:`wmhseg.inference.backends.ieee_fp32`): what
                ``precision: fp32`` and ``auto`` run on a GPU
``bf16``        bf16 autocast (``precision: bf16``)
==============  =================================================================================

Each against ``fp32_ieee``: the largest logit difference and the Dice of the class-1 masks; and
``fp32_ieee`` and ``fp32_tf32`` against the same pass in fp32 on this machine's CPU.

    python benchmarks/bench_gpu_precision.py [--out FILE.json] [--repeats 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import torch
from network_paths import CROP_MARGIN, bbox, default_unet, head_volume, pad_to

from wmhseg.files import atomic_write_text
from wmhseg.inference.backends import ieee_fp32
from wmhseg.inference.optimize import inference_network
from wmhseg.metrics import dice

MODES = {
    "fp32_tf32": contextlib.nullcontext,
    "fp32_ieee": ieee_fp32,
    "bf16": lambda: torch.autocast("cuda", dtype=torch.bfloat16),
}


def run(repeats: int = 20) -> dict:
    """Time the three modes on the GPU; their logits against fp32 IEEE and against the CPU."""
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    net, _ = inference_network(default_unet(), dev, channels_last=False)
    vol, head = head_volume()
    x, _ = pad_to(torch.from_numpy(vol)[None][(slice(None), slice(None), *bbox(head, CROP_MARGIN))], 16)
    xg = x.to(dev)
    logits: dict[str, torch.Tensor] = {}
    ms: dict[str, list[float]] = {k: [] for k in MODES}
    with torch.inference_mode():
        for name, ctx in MODES.items():
            for _ in range(3):
                with ctx():
                    logits[name] = net(xg).float()
        torch.cuda.synchronize()
        for _ in range(repeats):
            for name, ctx in MODES.items():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                with ctx():
                    net(xg)
                end.record()
                torch.cuda.synchronize()
                ms[name].append(start.elapsed_time(end))
        cpu = net.cpu()(x).float()
    ref = logits["fp32_ieee"]
    out = {"gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__, "input": list(x.shape),
           "repeats": repeats, "modes": {}}
    for name in MODES:
        out["modes"][name] = {
            "median_ms": round(statistics.median(ms[name]), 3), "min_ms": round(min(ms[name]), 3),
            "max_abs_logit_diff_vs_ieee": float((logits[name] - ref).abs().max()),
            "dice_vs_ieee": round(dice((logits[name].argmax(1) == 1).cpu().numpy(), (ref.argmax(1) == 1).cpu().numpy()), 6),
            "max_abs_logit_diff_vs_cpu": float((logits[name].cpu() - cpu).abs().max()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit(f"bench_gpu_precision: no CUDA device visible to torch {torch.__version__}")
    res = run(args.repeats)
    for name, m in res["modes"].items():
        print(f"{name:>10}: {m['median_ms']:7.2f} ms (min {m['min_ms']:.2f}); vs fp32 IEEE: max |logit diff| "
              f"{m['max_abs_logit_diff_vs_ieee']:.1e}, Dice {m['dice_vs_ieee']:.5f}; vs the CPU's fp32 "
              f"{m['max_abs_logit_diff_vs_cpu']:.1e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
