"""The doodle (T2I-Adapter) path at full size on a GPU: does it run, what does it cost?

The full-size PhotoMaker V2 pipeline of ``bench/gpu.py`` (random weights, bf16, LoRA fused)
plus a random T2I-Adapter with the configuration of TencentARC's SDXL sketch adapter
(``full_adapter_xl``, channels 320/640/1280/1280, 2 res blocks, downscale 16), added with
``from_photomaker_pipe`` as the app does. One 1024² call, 50 steps, with and without a doodle
(scale 0.7, factor 0.8): seconds, peak VRAM, and whether the doodle changed the image.
Writes ``results-gpu-doodle.md``/``.json`` to ``--out-dir``.

    PYTHONPATH=/tmp/site:. python3 bench/gpu_doodle.py --out-dir "$OUT"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image, ImageDraw

from bench import common, gpu


def sketch(size: int = 1024) -> Image.Image:
    """Black strokes on white paper, as the Sketchpad sends them: a head and shoulders."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((352, 160, 672, 560), outline="black", width=12)
    draw.arc((192, 560, 832, 1200), 180, 360, fill="black", width=12)
    return image


def main() -> int:
    from diffusers import T2IAdapter

    from photomaker.pipeline_adapter import PhotoMakerStableDiffusionXLAdapterPipeline, doodle_image

    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--steps", type=int, default=50)
    cli = parser.parse_args()
    args = gpu.parse_args(["--out-dir", str(cli.out_dir)])
    device, dtype = torch.device("cuda"), torch.bfloat16
    base = gpu.build_pipeline("full", args, device, dtype)
    torch.manual_seed(0)
    adapter = T2IAdapter(
        in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=2,
        downscale_factor=16, adapter_type="full_adapter_xl",
    ).to(device, dtype)
    pipe = PhotoMakerStableDiffusionXLAdapterPipeline.from_photomaker_pipe(base, adapter=adapter)
    doodle = doodle_image(sketch(), 1024, 1024)
    rows = {}
    for name, extra in (
        ("warm-up", {"num_inference_steps": 2}),
        ("no doodle", {}),
        ("doodle", {"image": doodle, "adapter_conditioning_scale": 0.7,
                    "adapter_conditioning_factor": 0.8}),
    ):
        kwargs = {**gpu.call_kwargs(args, cli.steps, 1), **extra}
        kwargs["output_type"] = "np"
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        start = time.perf_counter()
        images = pipe(**kwargs).images
        torch.cuda.synchronize()
        rows[name] = {
            "seconds": time.perf_counter() - start,
            "peak_vram_gb": torch.cuda.max_memory_allocated() / 1e9,
            "image": images[0],
        }
        common.say(f"{name}: {rows[name]['seconds']:.2f} s, peak {rows[name]['peak_vram_gb']:.2f} GB")
    change = float(np.abs(rows["doodle"]["image"] - rows["no doodle"]["image"]).mean())
    params = sum(p.numel() for p in adapter.parameters())
    data = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "adapter_parameters": params, "steps": cli.steps,
        "mean_abs_pixel_change": change,
        **{k: {kk: vv for kk, vv in v.items() if kk != "image"} for k, v in rows.items()},
    }
    common.say(json.dumps(data, indent=2))
    cli.out_dir.mkdir(parents=True, exist_ok=True)
    (cli.out_dir / "results-gpu-doodle.json").write_text(json.dumps(data, indent=2))
    lines = [
        f"# The doodle at full size on {data['device']} (torch {data['torch']}, bf16, 1024², "
        f"{cli.steps} steps, 1 image)", "",
        f"Random T2I-Adapter with the SDXL sketch adapter's configuration ({params / 1e6:.1f}M "
        "parameters), added to the loaded PhotoMaker V2 pipeline with `from_photomaker_pipe`.", "",
        "| Call | s / image | peak VRAM GB |", "|---|---:|---:|",
        *(f"| {k} | {rows[k]['seconds']:.2f} | {rows[k]['peak_vram_gb']:.2f} |" for k in ("no doodle", "doodle")),
        "", f"Mean absolute pixel change from the doodle (0–1 scale): {change:.3f}.", "",
    ]
    (cli.out_dir / "results-gpu-doodle.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
