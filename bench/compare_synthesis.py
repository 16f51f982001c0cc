#!/usr/bin/env python3
"""torch's time for HyperLoRA's LoRA synthesis on the same bases `hyperlora bench hyper --hyperlora DIR` reads.

Synthesis is, per basis tensor [K, a, b] of a variant's `hyper_lora_modules.safetensors`, the coefficient-weighted
sum over its K rows (spec §2.3 steps 4–5). Two ways torch does it, both timed over all the ID-branch bases:
  f16    the bases as stored (f16), one einsum per tensor in f16 — what a reimplementation reading the file gets;
  f32    the bases upcast to f32 beforehand (outside the clock: twice the memory), one einsum per tensor in f32.

    python3 bench/compare_synthesis.py DIR [--threads 2] [--repeat 5]

Prints one line of JSON: the median seconds of each, and the GB of bases read.
"""
import argparse
import json
import os
import statistics
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant", help="a HyperLoRA variant folder (hyper_lora_modules.safetensors)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(a.threads)
    bases = {k: v for k, v in load_file(os.path.join(a.variant, "hyper_lora_modules.safetensors")).items() if ".id_" in k}
    k = next(iter(bases.values())).shape[0]
    g = torch.Generator().manual_seed(0)
    coeffs = {name: torch.randn(k, generator=g) for name in bases}
    gb = sum(t.numel() * t.element_size() for t in bases.values()) / 1e9

    def run(ts, cs):
        return [torch.einsum("k,kab->ab", cs[n], t) for n, t in ts.items()]

    def median(ts, cs):
        run(ts, cs)  # warm-up
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            run(ts, cs)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    with torch.inference_mode():
        f16 = median(bases, {n: c.half() for n, c in coeffs.items()})
        up = {n: t.float() for n, t in bases.items()}
        f32 = median(up, coeffs)
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tensors": len(bases),
        "bases_gb": round(gb, 3),
        "f16_s": round(f16, 4),
        "f32_upcast_s": round(f32, 4),
    }))


if __name__ == "__main__":
    main()
