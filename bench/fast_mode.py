"""Fast mode's cost, without a GPU: FLOPs per image at 1024² and what switching modes costs.

* FLOPs, counted on the **meta** device like ``flops.py``: one UNet call of plain SDXL, of
  the UNet with a distillation LoRA loaded the way ``photomaker.fast`` loads it (an unfused
  PEFT adapter on every Linear and Conv2d of the blocks, in SDXL-Lightning's key layout) with
  the adapter disabled (quality) and enabled (fast); per image, quality = 50 steps × batch 2
  (CFG), fast = the mode's steps × its batch. The LoRA's rank is an assumption (``--rank``,
  default 64, the rank of the common SDXL distillation LoRAs; the real file was not read).
  A fast call with the LoRA **fused** (``photomaker.fast.fused_fast_weights``) is counted too.
* Switching, on the tiny UNet on the CPU, three designs, interleaved, with their spread:
  **adapter** (the unfused adapter's PEFT flag on and off), **fuse+restore** (fuse the
  LoRA into the weights for fast mode, and for bit-identical quality images put back a saved
  copy of every weight it touched, PEFT's merged list edited by hand) and **fused per
  request** (what ``fast_fuse`` does around each fused fast call: flag on, clone, PEFT
  ``merge``, then PEFT ``unmerge``, copy the clone back, flag off; checked bit for bit after
  the rounds). The copy's bytes at full size are counted on meta.

    python bench/fast_mode.py            # writes bench/results-fast.md and .json (≈ 1 minute)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from bench import common, flops, sdxl_configs
from photomaker import fast

QUALITY_STEPS, QUALITY_BATCH = 50, 2


def _meta_unet_with_fast_lora(rank: int, size: str = "full"):
    """The full-size UNet on meta with the fast LoRA as photomaker.fast loads it (PEFT,
    unfused), built from a LoraConfig on the same modules the released layout covers."""
    from peft import LoraConfig

    unet = common.build_unet(sdxl_configs.SIZES[size]["unet"], flops.META)
    targets = [
        name
        for name, m in unet.named_modules()
        if name.startswith(fast.FAST_LORA_BLOCKS) and isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
    with torch.device(flops.META):
        unet.add_adapter(config, adapter_name=fast.FAST_ADAPTER)
    weight_bytes = sum(
        unet.get_submodule(name).get_base_layer().weight.numel() * 2 for name in targets
    )  # bf16
    lora_params = sum(p.numel() for n, p in unet.named_parameters() if ".lora_" in n)
    return unet, len(targets), weight_bytes, lora_params


def full_size_flops(rank: int, mode: fast.FastMode) -> dict:
    latent = flops.default_latent()
    config = sdxl_configs.SIZES["full"]["unet"]
    plain = {b: flops.unet_call(b, latent).flops for b in (1, 2)}
    unet, layers, weight_bytes, lora_params = _meta_unet_with_fast_lora(rank)
    calls = {}
    for enabled in (False, True):
        (unet.enable_lora if enabled else unet.disable_lora)()
        for batch in (1, 2):
            inputs = flops.unet_inputs(config, batch, latent)
            calls[f"{'fast' if enabled else 'quality'}_b{batch}"] = flops.count(
                lambda inputs=inputs: unet(**inputs)
            ).flops
    holder = _Holder(unet)  # adapter still enabled: a fused fast call, merged on meta
    with fast.fused_fast_weights(holder):
        for batch in (1, 2):
            inputs = flops.unet_inputs(config, batch, latent)
            calls[f"fused_b{batch}"] = flops.count(lambda inputs=inputs: unet(**inputs)).flops
    unet.disable_lora()
    fast_batch = 2 if mode.uses_negative_prompt else 1
    quality_image = QUALITY_STEPS * calls["quality_b2"]
    fast_image = mode.steps * calls[f"fast_b{fast_batch}"]
    return {
        "rank": rank,
        "lora_layers": layers,
        "lora_params": lora_params,
        "fuse_restore_copy_bytes_bf16": weight_bytes,
        "plain_b1": plain[1],
        "plain_b2": plain[2],
        **calls,
        "quality_equals_plain": calls["quality_b1"] == plain[1] and calls["quality_b2"] == plain[2],
        "fused_equals_plain": calls["fused_b1"] == plain[1] and calls["fused_b2"] == plain[2],
        "fused_per_image": mode.steps * calls[f"fused_b{fast_batch}"],
        "fused_ratio": mode.steps * calls[f"fused_b{fast_batch}"] / quality_image,
        "fast_step_overhead": calls[f"fast_b{fast_batch}"] / plain[fast_batch] - 1,
        "quality_per_image": quality_image,
        "fast_per_image": fast_image,
        "ratio": fast_image / quality_image,
        "mode": {"name": mode.name, "steps": mode.steps, "guidance_scale": mode.guidance_scale,
                 "unet_batch": fast_batch},
    }


# --------------------------------------------------------------------------- switching


class _Holder:  # what photomaker.fast needs of a pipeline, on a bare UNet
    def __init__(self, unet):
        self.unet = unet

    def unload_lora_weights(self):
        self.unet.unload_lora()

    def load_lora_weights(self, state, adapter_name):
        from diffusers import StableDiffusionXLPipeline

        sd, alphas = StableDiffusionXLPipeline.lora_state_dict(state)
        StableDiffusionXLPipeline.load_lora_into_unet(
            sd, alphas, unet=self.unet, adapter_name=adapter_name
        )


def _tiny_unet_with_fast_lora():
    from photomaker.tiny import build_tiny_components

    unet = build_tiny_components(0)["unet"]
    holder = _Holder(unet)
    fast.attach_fast_lora(holder, "tiny", state_dict=fast.random_fast_lora_state_dict(unet))
    return holder


def _targets(unet) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer) and "fast" in m.lora_A]


def switching(rounds: int) -> dict:
    holder = _tiny_unet_with_fast_lora()
    unet = holder.unet
    layers = _targets(unet)
    times = {"adapter": [], "fuse+restore": [], "fused per request": []}
    saved_bytes = sum(m.get_base_layer().weight.numel() * 4 for m in layers)  # fp32 copy
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    for _ in range(rounds):
        t = time.perf_counter()
        fast.set_fast(holder, True)
        fast.set_fast(holder, False)
        times["adapter"].append(time.perf_counter() - t)

        t = time.perf_counter()
        saved = [m.get_base_layer().weight.detach().clone() for m in layers]
        for m in layers:
            m.merge(adapter_names=[fast.FAST_ADAPTER])
        for m, w in zip(layers, saved, strict=True):
            m.merged_adapters.remove(fast.FAST_ADAPTER)
            m.get_base_layer().weight.data.copy_(w)
        del saved
        times["fuse+restore"].append(time.perf_counter() - t)

        t = time.perf_counter()  # generation_mode's fused path, less the scheduler swap
        fast.set_fast(holder, True)
        with fast.fused_fast_weights(holder):
            pass
        fast.set_fast(holder, False)
        times["fused per request"].append(time.perf_counter() - t)
    after = unet.state_dict()
    return {
        "rounds": rounds,
        "layers": len(layers),
        "bit_identical_after": all(torch.equal(after[k], v) for k, v in before.items()),
        "tiny_copy_bytes_fp32": saved_bytes,
        "seconds": {
            k: {
                "median": statistics.median(v),
                "min": min(v),
                "max": max(v),
            }
            for k, v in times.items()
        },
    }


# --------------------------------------------------------------------------- report


def markdown(data: dict) -> str:
    f, s = data["flops"], data["switching"]
    mode = f["mode"]
    sec = s["seconds"]
    lines = [
        "# Fast mode: FLOPs per image and the cost of switching",
        "",
        f"Written by `python bench/fast_mode.py` ({data['seconds']:.0f} s on "
        f"{data['versions'].get('platform', 'this machine')}, torch {data['versions']['torch']}). The fast LoRA: "
        f"{mode['name']}'s settings ({mode['steps']} steps, guidance {mode['guidance_scale']:g},"
        f" so {mode['unet_batch']} latent(s) per UNet call); random weights of rank "
        f"{f['rank']} (an assumption) on {f['lora_layers']} layers, "
        f"{f['lora_params'] / 1e6:.0f}M parameters. No real weights: image quality is not "
        "judged here.",
        "",
        "## FLOPs at 1024² (counted on the meta device)",
        "",
        "| UNet call | batch 1 | batch 2 |",
        "|---|---|---|",
        f"| plain SDXL | {f['plain_b1'] / 1e12:.3f} T | {f['plain_b2'] / 1e12:.3f} T |",
        f"| quality (fast adapter loaded, disabled) | {f['quality_b1'] / 1e12:.3f} T "
        f"| {f['quality_b2'] / 1e12:.3f} T |",
        f"| fast (adapter enabled) | {f['fast_b1'] / 1e12:.3f} T | {f['fast_b2'] / 1e12:.3f} T |",
        f"| fast (fused for the call) | {f['fused_b1'] / 1e12:.3f} T "
        f"| {f['fused_b2'] / 1e12:.3f} T |",
        "",
        "Quality mode's UNet FLOPs per step are "
        + ("exactly" if f["quality_equals_plain"] else "**not** exactly")
        + " plain SDXL's. The unfused adapter adds "
        f"{f['fast_step_overhead']:.1%} per fast step. Per image: quality "
        f"{QUALITY_STEPS} × batch {QUALITY_BATCH} = {f['quality_per_image'] / 1e12:.1f} TFLOP, "
        f"fast {mode['steps']} × batch {mode['unet_batch']} = "
        f"{f['fast_per_image'] / 1e12:.1f} TFLOP: **{f['ratio']:.3f}** of quality "
        f"(1/{1 / f['ratio']:.1f}). Fused for the call (`fast_fuse`), a fast step's FLOPs are "
        + ("exactly" if f["fused_equals_plain"] else "**not** exactly")
        + f" plain SDXL's: {f['fused_per_image'] / 1e12:.1f} TFLOP per image, "
        f"**{f['fused_ratio']:.3f}** of quality (1/{1 / f['fused_ratio']:.1f}).",
        "",
        "## Switching modes (tiny UNet, CPU)",
        "",
        f"{s['rounds']} interleaved rounds, one switch to fast and back each, "
        f"{s['layers']} LoRA layers:",
        "",
        "| Design | median | min – max | extra memory |",
        "|---|---|---|---|",
        f"| adapter flag (`fast_fuse` off; auto on a CPU) | {sec['adapter']['median'] * 1e3:.2f} ms "
        f"| {sec['adapter']['min'] * 1e3:.2f} – {sec['adapter']['max'] * 1e3:.2f} ms | none |",
        f"| fuse + restore saved weights | {sec['fuse+restore']['median'] * 1e3:.2f} ms "
        f"| {sec['fuse+restore']['min'] * 1e3:.2f} – {sec['fuse+restore']['max'] * 1e3:.2f} ms "
        f"| a copy of the touched weights: {s['tiny_copy_bytes_fp32'] / 1e6:.2f} MB here, "
        f"{f['fuse_restore_copy_bytes_bf16'] / 1e9:.2f} GB at full size in bf16 |",
        f"| fused per request (`fast_fuse`: PEFT merge, unmerge, copy back) "
        f"| {sec['fused per request']['median'] * 1e3:.2f} ms "
        f"| {sec['fused per request']['min'] * 1e3:.2f} – "
        f"{sec['fused per request']['max'] * 1e3:.2f} ms | the same copy, during fast calls "
        "only |",
        "",
        f"The adapter flag is {sec['fuse+restore']['median'] / sec['adapter']['median']:.1f}× "
        "cheaper to switch (median) and needs no copy; it costs the fast steps their "
        f"{f['fast_step_overhead']:.1%} side path, which on a GPU costs far more than its "
        "FLOPs (thousands of small kernels per step: bench/results-gpu.md). Fusing without the "
        "saved copy would not give bit-identical quality images back (bf16 W + ΔW − ΔW ≠ W). "
        "The fused-per-request path costs "
        f"{sec['fused per request']['median'] / sec['adapter']['median']:.1f}× the flag here "
        "(PEFT's unmerge recomputes every ΔW before the copy overwrites the result); after "
        f"{s['rounds']} rounds the UNet's weights were "
        + ("bit for bit" if s["bit_identical_after"] else "**not** bit for bit")
        + " the original ones. These are CPU timings of a tiny UNet: on a GPU the clone and "
        "copy of 5 GB are device-to-device copies; not measured yet.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    data = {
        "flops": full_size_flops(args.rank, fast.DEFAULT_MODE),
        "switching": switching(args.rounds),
        "versions": common.versions(),
    }
    data["seconds"] = time.perf_counter() - start
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results-fast.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out_dir / "results-fast.md").write_text(markdown(data))
    common.say((args.out_dir / "results-fast.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
