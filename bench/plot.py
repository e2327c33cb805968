"""A PNG of seconds per image and peak VRAM per run, mode and device, from gpu.py's JSON.

    python bench/plot.py                                   # bench/results-gpu.json → bench/gpu.png
    python bench/plot.py a/results-gpu.json b/results-gpu.json --out compare.png

Each JSON file is one device; its runs (``full/eager/50x1``, ...) are the bars, one colour per
device. Seconds per image are the 50-step figures (hatched where extrapolated from fewer
steps), and fast mode's own call (its few steps, dotted); bare-UNet and A/B runs are left out
(the A/B has its own section in the results file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(paths: list[Path]) -> list[dict]:
    """One entry per file, labelled by device; two files of one device (two leases) are told
    apart by their start time, and a run compiled in another mode than inductor's default
    (e.g. reduce-overhead: CUDA graphs) says so."""
    datas = [json.loads(Path(path).read_text()) for path in paths]
    names = [data["device"]["name"] for data in datas]
    results = []
    for data, name in zip(datas, names, strict=True):
        label = name + (" (dry run)" if data["settings"].get("dry_run") else "")
        if names.count(name) > 1:
            label += f", {data['started'][:10]} {data['started'][11:16]} UTC"
        runs = [r for r in data["runs"] if r.get("status") == "ok" and r.get("backend") not in ("unet", "ab")]
        modes = {r["compile_options"].get("mode") for r in runs if r.get("compile_options")}
        if modes - {None, "default"}:
            label += f"; compiled: {', '.join(sorted(m for m in modes if m))}"
        results.append({"label": label, "runs": runs})
    return results


def plot(results: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for result in results:
        for run in result["runs"]:
            if run["name"] not in names:
                names.append(run["name"])
    if not names:
        raise ValueError("no successful pipeline runs to plot")
    fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(12, 0.55 * len(names) * len(results) + 2.2))
    height = 0.8 / len(results)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labelled: set[int] = set()
    for d, result in enumerate(results):
        by_name = {r["name"]: r for r in result["runs"]}
        for i, name in enumerate(names):
            run = by_name.get(name)
            if run is None:
                continue
            y = i + d * height
            fast = "fast" in run.get("backend", "")
            seconds = run.get("seconds_per_image" if fast else "seconds_per_image_at_50_steps")
            if seconds is not None:
                label = None if d in labelled else result["label"]
                labelled.add(d)
                hatch = ".." if fast else ("//" if run.get("extrapolated_to_50_steps") else None)
                left.barh(y, seconds, height, color=colours[d % len(colours)], hatch=hatch,
                          label=label)  # fmt: skip
                left.text(seconds, y, f" {seconds:.2f}", va="center", fontsize=8)
            vram = run.get("peak_allocated_gb")
            if vram is not None:
                right.barh(y, vram, height, color=colours[d % len(colours)])
                right.text(vram, y, f" {vram:.1f}", va="center", fontsize=8)
    ticks = [i + height * (len(results) - 1) / 2 for i in range(len(names))]
    left.set_xscale("log")  # offload modes take tens of seconds, fast mode under one
    left.set_xlim(left=0.1)
    left.set_yticks(ticks, names)
    left.invert_yaxis()  # shared with the right panel
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    right.tick_params(labelleft=False)
    if not any(r.get("peak_allocated_gb") is not None for res in results for r in res["runs"]):
        right.text(0.5, 0.5, "no VRAM figures (CPU run)", ha="center", va="center",
                   transform=right.transAxes)  # fmt: skip
    left.set_xlabel("seconds per image at 50 steps, log scale (// extrapolated from fewer "
                    "steps;\n.. fast mode: its own steps)")
    right.set_xlabel("peak VRAM, GB (torch.cuda.max_memory_allocated)")
    left.legend(loc="lower right", fontsize=8)
    fig.suptitle("PhotoMaker V2 on SDXL, random weights: speed and memory per mode")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="*", type=Path, default=[HERE / "results-gpu.json"])
    parser.add_argument("--out", type=Path, default=HERE / "gpu.png")
    args = parser.parse_args(argv)
    out = plot(load(args.results), args.out)
    print(out)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
