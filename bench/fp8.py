"""What float8 weight storage (``--memory fp8``) does to one UNet call's numbers.

diffusers' layerwise casting stores each layer's weights in ``float8_e4m3fn`` and casts them
to the compute dtype just before the layer runs (norms, embeddings and the in/out convolutions
stay in the compute dtype; see ``photomaker.loading.fp8_storage_settings``). This script runs
one UNet call on the same inputs with the same random weights in fp32 (the reference), bf16,
and fp8 storage with bf16 and fp32 compute, and reports the relative error
``‖y − y_fp32‖ / ‖y_fp32‖`` of each, and of fp8 against bf16.

    python bench/fp8.py                    # the tiny UNet on the CPU (seconds)
    python3 bench/fp8.py --size full       # the full-size SDXL UNet (on a GPU: bench/gpu.py)

Writes ``results-fp8.md`` and ``results-fp8.json`` to ``--out-dir`` (size-suffixed for full).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import common, flops, sdxl_configs
from photomaker.loading import fp8_storage_settings


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.float(), ref.float()
    return float((y - ref).norm() / ref.norm())


def _random_weights(unet: torch.nn.Module, seed: int) -> None:
    """Fan-in-scaled random weights everywhere (diffusers zero-initialises nothing here, but
    a trained UNet has no near-zero layers either; this keeps every layer active)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            value = torch.randn(p.shape, generator=generator)
            if p.ndim >= 2:
                value /= p[0].numel() ** 0.5
            elif name.endswith("weight"):
                value = 1 + 0.1 * value
            else:
                value *= 0.1
            p.copy_(value.to(p.device, p.dtype))


def measure(size: str, device: torch.device, seed: int = 0) -> dict:
    config = sdxl_configs.SIZES[size]["unet"]
    base = common.build_unet(config, device)
    _random_weights(base, seed)
    latent = flops.default_latent(size)
    inputs = flops.unet_inputs(config, 2, latent, device)
    generator = torch.Generator().manual_seed(seed + 1)
    inputs["sample"] = torch.randn(inputs["sample"].shape, generator=generator).to(device)
    inputs["encoder_hidden_states"] = torch.randn(
        inputs["encoder_hidden_states"].shape, generator=generator
    ).to(device)

    def run(unet, dtype):
        cast = {
            k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
            for k, v in inputs.items()
            if k != "added_cond_kwargs"
        }
        cast["added_cond_kwargs"] = {k: v.to(dtype) for k, v in inputs["added_cond_kwargs"].items()}
        cast["timestep"] = inputs["timestep"]
        with torch.no_grad():
            return unet(**cast).sample.float()

    outputs, stored = {}, {}
    outputs["fp32"] = run(base, torch.float32)
    stored["fp32"] = sum(p.numel() * p.element_size() for p in base.parameters())
    bf16 = copy.deepcopy(base).to(torch.bfloat16)
    outputs["bf16"] = run(bf16, torch.bfloat16)
    stored["bf16"] = sum(p.numel() * p.element_size() for p in bf16.parameters())
    del bf16
    for compute in (torch.bfloat16, torch.float32):
        unet = copy.deepcopy(base).to(compute)
        settings = fp8_storage_settings(unet, compute)
        unet.enable_layerwise_casting(**settings)
        name = f"fp8 storage, {str(compute).removeprefix('torch.')} compute"
        outputs[name] = run(unet, compute)
        stored[name] = sum(p.numel() * p.element_size() for p in unet.parameters())
        fp8_params = sum(p.numel() for p in unet.parameters() if p.dtype == torch.float8_e4m3fn)
        total_params = sum(p.numel() for p in unet.parameters())
        del unet
    ref = outputs["fp32"]
    return {
        "size": size,
        "device": str(device),
        "latent": latent,
        "batch": 2,
        "skip_modules_pattern": list(settings["skip_modules_pattern"]),
        "fp8_parameter_share": fp8_params / total_params,
        "stored_bytes": stored,
        "relative_error_vs_fp32": {k: relative_error(v, ref) for k, v in outputs.items()},
        "relative_error_vs_bf16": {
            k: relative_error(v, outputs["bf16"]) for k, v in outputs.items() if k != "bf16"
        },
    }


def markdown(data: dict) -> str:
    vs32, vs16 = data["relative_error_vs_fp32"], data["relative_error_vs_bf16"]
    stored = data["stored_bytes"]
    lines = [
        f"# float8 weight storage: one UNet call ({data['size']} UNet, {data['device']})",
        "",
        f"Written by `python bench/fp8.py{' --size ' + data['size'] if data['size'] != 'tiny' else ''}`"
        f" ({data['seconds']:.0f} s; torch {data['versions']['torch']}, diffusers "
        f"{data['versions']['diffusers']}). Random fan-in-scaled weights, random inputs, batch "
        f"{data['batch']} at latent {data['latent']}². Relative error = ‖y − y_ref‖ / ‖y_ref‖.",
        "",
        "| Weights | stored MB | vs fp32 | vs bf16 |",
        "|---|---:|---:|---:|",
    ]
    for name, err in vs32.items():
        lines.append(
            f"| {name} | {stored[name] / 1e6:.2f} | {err:.2e} | "
            + (f"{vs16[name]:.2e}" if name in vs16 else "-")
            + " |"
        )
    bf16_err = vs32["bf16"]
    fp8_err = vs32["fp8 storage, bfloat16 compute"]
    lines += [
        "",
        f"{data['fp8_parameter_share']:.1%} of the parameters are stored in float8 (the rest "
        f"match `{'`, `'.join(data['skip_modules_pattern'])}` and stay in the compute dtype). "
        f"fp8 storage with bf16 compute is {fp8_err / bf16_err:.1f}× bf16's own error against "
        "fp32. Random weights are not trained ones: this shows the size of the rounding, not "
        "what it does to a picture.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="tiny", choices=tuple(sdxl_configs.SIZES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    data = measure(args.size, torch.device(args.device))
    data["seconds"] = time.perf_counter() - start
    data["versions"] = common.versions()
    suffix = "" if args.size == "tiny" else f"-{args.size}"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"results-fp8{suffix}.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out_dir / f"results-fp8{suffix}.md").write_text(markdown(data))
    common.say(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
