#!/usr/bin/env python3
"""diffusers' SDXL UNet denoising loop on the shapes `hyperlora bench sdxl` times, for a side-by-side ratio.

Same work as our bench: a UNet of SDXL base 1.0's shapes with random weights (nothing is downloaded), one
prompt with classifier-free guidance (UNet batch 2, CFG 5), DPM++ 2M Karras, the given size and steps, one
warm-up step first, the device synchronised before the clock stops. diffusers picks its default attention
(PyTorch's scaled_dot_product_attention), as a user of diffusers gets.

    python3 bench/compare_diffusers.py --device cuda --dtype fp16 --size 1024 --steps 20
    python3 bench/compare_diffusers.py --device cpu --dtype fp32 --size 256 --steps 2 --threads 2
    python3 bench/compare_diffusers.py --config ../shared/fixtures/sdxl-tiny/unet/config.json --size 64 --steps 3

Prints one line of JSON (also written to --json): the versions, the settings, seconds in total and per step.
"""
import argparse
import json
import sys
import time

# SDXL base 1.0's UNet: the same values as hyperlora's built-in configuration (src/sdxl/model.rs); keys left
# out take diffusers' defaults, which are SDXL's (mid block with cross-attention, SiLU).
SDXL_BASE_UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "use_linear_projection": True,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels (latents are size/8)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--config", help="a diffusers UNet config.json instead of SDXL base's shapes")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args()
    if a.size % 8 or a.size <= 0 or a.steps < 1:
        sys.exit("--size must be a positive multiple of 8 and --steps at least 1")

    import torch
    import diffusers
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel

    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    dev = torch.device(a.device)
    cfg = SDXL_BASE_UNET
    if a.config:
        with open(a.config) as f:
            cfg = json.load(f)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with dev:  # parameters made on the device: random init of 2.6 B weights on a CPU takes a minute
        unet = UNet2DConditionModel.from_config(cfg)
    unet = unet.to(dtype=dtype).eval()
    load_s = time.perf_counter() - t0
    c = unet.config
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    lat = a.size // 8

    # SDXL base's scheduler, as DPM++ 2M Karras
    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        algorithm_type="dpmsolver++",
        solver_order=2,
        use_karras_sigmas=True,
    )
    g = torch.Generator("cpu").manual_seed(1)
    ctx = torch.randn(1, 77, c.cross_attention_dim, generator=g).to(dev, dtype)
    text = torch.randn(1, pooled, generator=g).to(dev, dtype)
    ctx2 = torch.cat([torch.zeros_like(ctx), ctx])
    text2 = torch.cat([torch.zeros_like(text), text])
    ids = torch.tensor([[a.size, a.size, 0, 0, a.size, a.size]] * 2, device=dev, dtype=dtype)
    noise = torch.randn(1, c.in_channels, lat, lat, generator=g).to(dev, dtype)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def denoise(steps):
        sched.set_timesteps(steps, device=dev)
        x = noise * sched.init_noise_sigma
        for t in sched.timesteps[:steps]:
            xin = sched.scale_model_input(torch.cat([x, x]), t)
            eps = unet(xin, t, encoder_hidden_states=ctx2, added_cond_kwargs={"text_embeds": text2, "time_ids": ids}).sample
            un, co = eps.chunk(2)
            x = sched.step(un + a.cfg * (co - un), t, x).prev_sample
        return x

    with torch.inference_mode():
        denoise(1)  # warm-up: kernel selection, allocator
        sync()
        t0 = time.perf_counter()
        x = denoise(a.steps)
        sync()
        total = time.perf_counter() - t0
    finite = bool(torch.isfinite(x.float()).all())
    out = {
        "tool": "diffusers",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": a.dtype,
        "size": a.size,
        "steps": a.steps,
        "cfg": a.cfg,
        "unet": a.config or "SDXL base shapes, random weights",
        "load_s": round(load_s, 3),
        "total_s": round(total, 4),
        "s_per_step": round(total / a.steps, 4),
        "finite": finite,
    }
    line = json.dumps(out)
    print(line)
    if a.json:
        with open(a.json, "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
