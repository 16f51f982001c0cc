#!/usr/bin/env python3
"""One LoRA training step in PyTorch on the shapes `hyperlora bench train` times, for a side-by-side ratio.

The same work as our bench: a UNet of --config's shapes (`hyperlora bench train` passes SDXL base 1.0's, or the
demo's tiny one) with random weights, frozen; a rank-8
LoRA (scale 0.5 = alpha/rank) on to_q, to_k, to_v and to_out.0 of every attention, its factors the only trainable
tensors; the ε-prediction MSE at timestep 500 of SDXL's scaled-linear schedule; forward and backward. Once without
and once with diffusers' gradient checkpointing (`enable_gradient_checkpointing`, non-reentrant). One warm-up step,
then one step from a trimmed heap for the peak memory: the resident set's high-water mark during it minus the
resident set before it (Linux /proc), as ours is measured; then the median of --repeat steps run one after another,
as a training loop runs them.

    python3 bench/compare_train.py --config sdxl_unet_config.json --size 256 --repeat 2 --threads 2
    python3 bench/compare_train.py --config ../shared/fixtures/sdxl-tiny/unet/config.json --size 128

Prints one line of JSON: the versions, and per mode the seconds per step and the peak bytes.
"""
import argparse
import json
import statistics
import sys
import time



def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def trim():
    """Hand freed memory back to the OS (glibc's malloc_trim), as ours does before measuring."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--config", required=True, help="a diffusers UNet config.json")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    if a.size % 8 or a.size <= 0:
        sys.exit("--size must be a positive multiple of 8")

    import torch
    import diffusers
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

    if a.threads:
        torch.set_num_threads(a.threads)
    with open(a.config) as f:
        cfg = json.load(f)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(cfg).float()
    unet.requires_grad_(False)
    unet.train()

    class LoRALinear(torch.nn.Module):
        def __init__(self, base, rank=8, scale=0.5):
            super().__init__()
            self.base = base
            self.down = torch.nn.Parameter(torch.randn(rank, base.in_features) * 0.01)
            self.up = torch.nn.Parameter(torch.randn(base.out_features, rank) * 0.01)
            self.scale = scale

        def forward(self, x):
            return self.base(x) + self.scale * torch.nn.functional.linear(torch.nn.functional.linear(x, self.down), self.up)

    params = []
    for m in unet.modules():
        if isinstance(m, Attention):
            for name in ["to_q", "to_k", "to_v"]:
                setattr(m, name, LoRALinear(getattr(m, name)))
            m.to_out[0] = LoRALinear(m.to_out[0])
    for m in unet.modules():
        if isinstance(m, LoRALinear):
            params += [m.down, m.up]

    c = unet.config
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    lat = a.size // 8
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 4, lat, lat, generator=g)
    noise = torch.randn(1, 4, lat, lat, generator=g)
    ctx = torch.randn(1, 77, c.cross_attention_dim, generator=g)
    text_embeds = torch.randn(1, pooled, generator=g)
    time_ids = torch.tensor([[a.size, a.size, 0, 0, a.size, a.size]], dtype=torch.float32)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)[500].item()
    noisy = ac**0.5 * x0 + (1 - ac) ** 0.5 * noise
    t = torch.tensor([500])

    def step():
        for p in params:
            p.grad = None
        pred = unet(noisy, t, ctx, added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        loss.backward()
        assert torch.isfinite(loss)

    rows = []
    for checkpointing in [False, True]:
        if checkpointing:
            unet.enable_gradient_checkpointing()
        step()  # warm-up
        # the peak: one step from a trimmed heap, its high-water mark over the resident set before it
        trim()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status("VmRSS")
        step()
        peak = status("VmHWM") - before
        # the time: steps one after another, as a training loop runs them (the heap warm from the step before)
        times = []
        for _ in range(max(1, a.repeat)):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        rows.append({"checkpointing": checkpointing, "step_s": statistics.median(times), "peak_bytes": peak})
        print(f"torch, checkpointing {checkpointing}: {statistics.median(times):.2f} s, peak {peak / 1e6:.0f} MB", flush=True)
    print(json.dumps({
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "threads": torch.get_num_threads(),
        "size": a.size,
        "rows": rows,
    }))


if __name__ == "__main__":
    main()
