"""Which cheap changes make the eager UNet step faster on a GPU? (An experiment, run once.)

On the full-size pipeline of ``bench/gpu.py`` (random weights, bf16, LoRA fused), time 30 bare
UNet forwards at batch 2 (one 1024² image with CFG) after each cumulative change, then one
50-step call with all of them. Writes ``results-gpu-variants.md``/``.json`` to ``--out-dir``.

    PYTHONPATH=/tmp/site:. python3 bench/gpu_unet_variants.py --out-dir "$OUT"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import common, flops, gpu, sdxl_configs


def time_unet(pipe, inputs, calls: int = 30) -> float:
    with torch.no_grad():
        for _ in range(3):
            pipe.unet(**inputs)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            pipe.unet(**inputs)
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--ab", type=int, default=0, help="interleaved A/B rounds instead")
    parser.add_argument("--render-ab", type=Path, metavar="JSON", help="rewrite results-gpu-ab.md")
    cli = parser.parse_args()
    if cli.render_ab:
        data = json.loads(cli.render_ab.read_text())
        (cli.out_dir / "results-gpu-ab.md").write_text(ab_markdown(data))
        return 0
    if cli.ab:
        return ab(cli)
    args = gpu.parse_args(["--out-dir", str(cli.out_dir)])
    device, dtype = torch.device("cuda"), torch.bfloat16
    pipe = gpu.build_pipeline("full", args, device, dtype)
    config = sdxl_configs.SIZES["full"]["unet"]
    inputs = flops.unet_inputs(config, 2, flops.default_latent("full"), device, dtype)
    inputs["encoder_hidden_states"].normal_()
    inputs["sample"].normal_()
    reference = None
    rows = []

    def record(name: str) -> None:
        nonlocal reference
        seconds = time_unet(pipe, inputs)
        with torch.no_grad():
            out = pipe.unet(**inputs).sample.float()
        if reference is None:
            reference = out
        diff = (out - reference).abs().max().item() / reference.abs().max().item()
        rows.append({"variant": name, "step_s": seconds, "rel_max_diff": diff})
        common.say(f"{name:55s} {seconds * 1000:7.2f} ms/step  rel diff {diff:.2e}")

    record("fused LoRA, PEFT layers kept (today)")
    pipe.unload_lora_weights()  # fused weights stay; the PEFT wrappers go
    record("+ PEFT wrappers removed (unload after fuse)")
    torch.backends.cudnn.benchmark = True
    record("+ cudnn.benchmark")
    pipe.unet.to(memory_format=torch.channels_last)
    inputs["sample"] = inputs["sample"].contiguous(memory_format=torch.channels_last)
    record("+ channels_last")
    pipe.unet.fuse_qkv_projections()
    record("+ fused QKV projections")
    kwargs = gpu.call_kwargs(args, 50, 1)
    pipe(**kwargs)
    torch.cuda.synchronize()
    start = time.perf_counter()
    pipe(**kwargs)
    torch.cuda.synchronize()
    whole = time.perf_counter() - start
    common.say(f"50 steps x 1 image with all of the above: {whole:.3f} s")
    data = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "rows": rows, "call_50x1_all_s": whole}
    cli.out_dir.mkdir(parents=True, exist_ok=True)
    (cli.out_dir / "results-gpu-variants.json").write_text(json.dumps(data, indent=2))
    lines = [f"# UNet step variants on {data['device']} (torch {data['torch']}, bf16, 1024², batch 2)",
             "", "| Variant (cumulative) | ms per step | max rel. diff to the first |", "|---|---|---|"]
    lines += [f"| {r['variant']} | {r['step_s'] * 1000:.2f} | {r['rel_max_diff']:.1e} |" for r in rows]
    lines += ["", f"One 50-step call, 1 image, with all of them: **{whole:.2f} s**.", ""]
    (cli.out_dir / "results-gpu-variants.md").write_text("\n".join(lines))
    return 0


def ab(cli) -> int:
    """Interleaved rounds: plain (as loaded) against cudnn.benchmark + channels_last, the two
    changes of the cumulative run that cost nothing; medians over the rounds."""
    import statistics

    args = gpu.parse_args(["--out-dir", str(cli.out_dir)])
    device, dtype = torch.device("cuda"), torch.bfloat16
    pipe = gpu.build_pipeline("full", args, device, dtype)
    config = sdxl_configs.SIZES["full"]["unet"]
    inputs = flops.unet_inputs(config, 2, flops.default_latent("full"), device, dtype)
    inputs["encoder_hidden_states"].normal_()
    inputs["sample"].normal_()
    times: dict[str, list[float]] = {"plain": [], "tuned": []}
    for _ in range(cli.ab):
        for name in ("plain", "tuned"):
            tuned = name == "tuned"
            torch.backends.cudnn.benchmark = tuned
            fmt = torch.channels_last if tuned else torch.contiguous_format
            pipe.unet.to(memory_format=fmt)
            inputs["sample"] = inputs["sample"].contiguous(memory_format=fmt)
            times[name].append(time_unet(pipe, inputs, calls=20))
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratio = medians["tuned"] / medians["plain"]
    common.say(f"median ms/step plain {medians['plain'] * 1000:.2f}, tuned "
               f"{medians['tuned'] * 1000:.2f}, ratio {ratio:.3f}; rounds {times}")
    data = {"device": torch.cuda.get_device_name(), "rounds": times, "median_s": medians,
            "ratio": ratio, "spread": common.paired_spread(times["plain"], times["tuned"])}
    (cli.out_dir / "results-gpu-ab.json").write_text(json.dumps(data, indent=2))
    (cli.out_dir / "results-gpu-ab.md").write_text(ab_markdown(data))
    return 0


def ab_markdown(data: dict) -> str:
    """The A/B result in words, from its rounds (with their spread)."""
    rounds = data["rounds"]
    spread = data.get("spread") or common.paired_spread(rounds["plain"], rounds["tuned"])
    return "\n".join([
        f"# UNet step A/B on {data['device']}: plain against cudnn.benchmark + channels_last",
        "",
        f"Median ms per step: plain {spread['a_median'] * 1000:.1f}, tuned "
        f"{spread['b_median'] * 1000:.1f}. "
        + common.spread_sentence(spread, "plain", "tuned"),
        "",
        "Rounds, ms: plain " + ", ".join(f"{t * 1000:.1f}" for t in rounds["plain"])
        + "; tuned " + ", ".join(f"{t * 1000:.1f}" for t in rounds["tuned"]) + ".",
        "",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
