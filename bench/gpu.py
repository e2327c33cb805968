"""Seconds per image and peak VRAM of the full-size pipeline on a GPU, with no downloads.

The full-size SDXL UNet, both text encoders, the VAE and the PhotoMaker V2 ID encoder are
built from ``bench/sdxl_configs.py`` with random weights (speed and memory do not depend on
the values), in bf16, with a rank-64 LoRA in the released layout loaded through
``load_photomaker_adapter`` and fused. V2's face embeddings are random ``[N, 512]`` (no
InsightFace). Each run is one pipeline call at 1024², CFG 5, a negative prompt,
``start_merge_step`` 10, one ID photo:

* seconds per image (``torch.cuda.synchronize`` + ``time.perf_counter`` around the call);
* time per denoising step (median of the times between CUDA events at each step's end, via
  ``callback_on_step_end``: the UNet with CFG plus the scheduler), the time before the first
  step (text and ID encoding; marked at the scheduler's first ``scale_model_input``) and after
  the last one (VAE decode, PIL conversion);
* peak VRAM (``torch.cuda.max_memory_allocated``, reset before each run);
* achieved TFLOP/s and its fraction of the device's dense bf16 peak, from ``bench/flops.py``.

Runs are ``MODE/BACKEND/STEPSxIMAGES`` (``full/eager/50x1``), or ``MODE/unet/N`` for N bare UNet
forwards at batch 2. Modes: ``full`` (everything on the GPU), ``model-offload``
(``enable_model_cpu_offload``), ``sequential-offload`` (``enable_sequential_cpu_offload``); each
mode gets a freshly built pipeline and one short warm-up call. ``compile`` runs
``torch.compile`` on the UNet of another fresh pipeline (its first call's time is reported as
the compile time), after the eager runs of full and model-offload mode. Runs with fewer than 50
steps also report the time a 50-step call would take (the measured time outside the loop and
the first step + 49 × the median step): the sequential-offload run uses that, as its steps are
slow.

Each run is in its own ``try``: an out-of-memory or compile error is recorded and the next run
goes on. Results are rewritten after every run, to ``results-gpu.md`` and ``results-gpu.json``
in ``--out-dir``, so a run killed by a timeout still leaves the figures so far. Runs that would
start after ``--budget-s`` seconds are skipped (and recorded as skipped).

    python3 bench/gpu.py                         # the default plan, ≈ 5 min on an H100
    python3 bench/gpu.py --dry-run               # the same code on tiny models on the CPU, ≈ 1 min

See bench/README.md for the command that runs it on a lent GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import common, sdxl_configs
from photomaker.loading import configure_offload_vae

MODES = ("full", "model-offload", "sequential-offload")
DEFAULT_PLAN = (
    "full/unet/20",
    "full/eager/50x1",
    "full/eager/30x1",
    "full/eager/50x4",
    "full/compile/50x1",
    "model-offload/eager/50x1",
    "sequential-offload/eager/5x1",
)
#: Dense (no sparsity) bf16 tensor-core peaks from the vendor's data sheets, TFLOP/s. The
#: first name found in the device name wins, so the specific ones come first.
DENSE_BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("H100", 989.4),  # SXM (HBM3)
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
)
PROMPT = "a photo of a man img in a spacesuit, detailed, 8k"
NEGATIVE_PROMPT = "lowres, blurry, deformed, bad anatomy, watermark"
TARGETS = {  # issue 9, H100, 1024², 50 steps, 1 image, bf16
    "eager_s": 3.0,
    "compiled_s": 2.2,
    "flop_bound_s": 0.70,
    "full_vram_gb": 11.0,
    "model_offload_vram_gb": 6.0,
}
GB = 1e9


@dataclass(frozen=True)
class RunSpec:
    mode: str
    backend: str  # eager, compile, or unet (bare UNet forwards)
    steps: int
    images: int = 1

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        try:
            mode, backend, size = text.strip().split("/")
            if backend == "unet":
                steps, images = int(size), 1
            else:
                steps, images = (int(x) for x in size.lower().split("x"))
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"{text!r}: write MODE/BACKEND/STEPSxIMAGES (full/eager/50x1) or MODE/unet/N"
            ) from error
        if (
            mode not in MODES
            or backend not in ("eager", "compile", "unet")
            or steps < 1
            or images < 1
        ):
            raise argparse.ArgumentTypeError(
                f"{text!r}: mode one of {', '.join(MODES)}; backend eager, compile or unet"
            )
        return cls(mode, backend, steps, images)

    @property
    def name(self) -> str:
        if self.backend == "unet":
            return f"{self.mode}/unet/{self.steps}"
        return f"{self.mode}/{self.backend}/{self.steps}x{self.images}"


#: One freshly built pipeline per group, in this order. The compiled runs get their own
#: pipeline after the eager offload runs: compiling is the slowest and least certain step, so
#: a long compile cannot use up the time budget of the runs before it.
GROUPS = (
    ("full", False),
    ("model-offload", False),
    ("full", True),
    ("sequential-offload", False),
    ("model-offload", True),
    ("sequential-offload", True),
)


def group_plan(specs: list[RunSpec]) -> list[tuple[str, list[RunSpec]]]:
    """``[(group name, runs)]`` in :data:`GROUPS` order; bare-UNet runs first in their group."""
    groups = []
    for mode, compiled in GROUPS:
        runs = [s for s in specs if s.mode == mode and (s.backend == "compile") == compiled]
        runs.sort(key=lambda s: s.backend != "unet")
        if runs:
            groups.append((mode + (" (compiled)" if compiled else ""), runs))
    return groups


# --------------------------------------------------------------------------- the device


class Clock:
    """Marks on the device's timeline: CUDA events on a GPU (no sync per mark), wall time else."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        if self.cuda:
            return start.elapsed_time(end) / 1000
        return end - start


def device_info(device: torch.device, peak_override: float | None) -> dict:
    info = {"device": str(device), "name": "CPU", "peak_bf16_tflops": peak_override}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gb=round(props.total_memory / GB, 1),
            multiprocessors=props.multi_processor_count,
        )
        if peak_override is None:
            for key, peak in DENSE_BF16_PEAK_TFLOPS:
                if key in props.name:
                    info["peak_bf16_tflops"] = peak
                    break
    return info


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)


def memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {
        "allocated_gb": torch.cuda.memory_allocated(device) / GB,
        "peak_allocated_gb": torch.cuda.max_memory_allocated(device) / GB,
        "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / GB,
    }


def free_memory(device: torch.device, compiled: bool = False) -> None:
    """Free cached memory; with ``compiled``, first drop the compiled graphs, which hold the
    UNet of a finished pipeline."""
    if compiled:
        try:
            torch._dynamo.reset()
        except Exception:
            pass
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the pipeline


def build_pipeline(mode: str, args, device: torch.device, dtype: torch.dtype):
    """A fresh PhotoMaker V2 pipeline of ``args.size`` models with random weights, the LoRA
    fused, placed for ``mode``. Weights are drawn on the GPU (fast) and moved as the mode says."""
    from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline

    init_device = device if device.type == "cuda" else torch.device("cpu")
    components = common.build_components(args.size, init_device, dtype, args.seed, args.bpe)
    pipe = PhotoMakerStableDiffusionXLPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    state = common.photomaker_state_dict(
        components["unet"], "v2", args.size, init_device, dtype, args.seed
    )
    extra = (
        {} if args.size == "full" else {"id_encoder_config": common.id_encoder_config(args.size)}
    )
    pipe.load_photomaker_adapter(state, pm_version="v2", trigger_word="img", **extra)
    del state, components
    common.ensure_lora_fused(pipe)
    if mode == "full":
        pipe.to(device)
    else:
        pipe.to("cpu")
        free_memory(device)
        if mode == "model-offload":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.enable_sequential_cpu_offload(device=device)
        configure_offload_vae(pipe.vae)  # as the app's offload modes: 512-px tiles, sliced
    free_memory(device)
    return pipe


def call_kwargs(args, steps: int, images: int) -> dict:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(args.seed)
    photos = [
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
        for _ in range(args.photos)
    ]
    side = sdxl_configs.SIZES[args.size]["image_size"]
    return dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        input_id_images=photos,
        id_embeds=torch.randn(args.photos, 512, generator=torch.Generator().manual_seed(args.seed)),
        num_inference_steps=steps,
        num_images_per_prompt=images,
        start_merge_step=min(10, steps // 2),
        guidance_scale=5.0,
        height=side,
        width=side,
        generator=torch.Generator().manual_seed(args.seed),
        output_type="pil",
    )


def timed_call(pipe, clock: Clock, kwargs: dict) -> dict:
    """One pipeline call: wall seconds; from marks at the first step's start (the scheduler's
    first ``scale_model_input``) and at each step's end (``callback_on_step_end``), the step time
    and the time before the first step and after the last one."""
    marks, first = [], []

    def on_step_end(pipeline, step, timestep, tensors):
        marks.append(clock.mark())
        return tensors

    scale_model_input = pipe.scheduler.scale_model_input

    def mark_first_step(*args, **kwargs):
        if not first:
            first.append(clock.mark())
        return scale_model_input(*args, **kwargs)

    pipe.scheduler.scale_model_input = mark_first_step  # an instance attribute, removed below
    try:
        clock.sync()
        wall = time.perf_counter()
        start = clock.mark()
        images = pipe(callback_on_step_end=on_step_end, **kwargs).images
        end = clock.mark()
        clock.sync()
        wall = time.perf_counter() - wall
    finally:
        del pipe.scheduler.scale_model_input
    if len(images) != kwargs["num_images_per_prompt"]:
        raise RuntimeError(f"{len(images)} images, expected {kwargs['num_images_per_prompt']}")
    ends = [clock.seconds(start, m) for m in marks]
    begin = clock.seconds(start, first[0]) if first else float("nan")
    steps = [b - a for a, b in zip([begin, *ends], ends, strict=False)]
    step = statistics.median(steps[1:] or steps) if steps else float("nan")
    return {
        "seconds": wall,
        "steps_measured": len(marks),
        "step_s": step,  # median, the first step left out (it may include one-off work)
        "first_step_s": steps[0] if steps else float("nan"),
        "step_s_mean": statistics.fmean(steps) if steps else float("nan"),
        "before_loop_s": begin,
        "after_loop_s": clock.seconds(start, end) - ends[-1] if ends else float("nan"),
    }


def run_unet(pipe, spec: RunSpec, args, device, dtype, clock: Clock) -> dict:
    """``spec.steps`` bare UNet forwards at batch 2 (one image with CFG), after 2 untimed."""
    config = sdxl_configs.SIZES[args.size]["unet"]
    from bench import flops

    inputs = flops.unet_inputs(config, 2, flops.default_latent(args.size), device, dtype)
    inputs["encoder_hidden_states"].normal_()
    inputs["sample"].normal_()
    with torch.no_grad():
        for _ in range(2):
            pipe.unet(**inputs)
        reset_peak(device)
        clock.sync()
        start = clock.mark()
        for _ in range(spec.steps):
            pipe.unet(**inputs)
        end = clock.mark()
        clock.sync()
    per_call = clock.seconds(start, end) / spec.steps
    return {"unet_call_s": per_call, "step_s": per_call, **memory(device)}


def run_pipeline(pipe, spec: RunSpec, args, device, clock: Clock, state: dict) -> dict:
    result = {}
    if spec.backend == "compile" and not state.get("compiled"):
        options = {"backend": args.compile_backend}
        if args.compile_backend == "inductor":
            options["mode"] = args.compile_mode
        pipe.unet.compile(**options)
        state["compiled"] = True
        common.say(f"    compiling the UNet ({options}); the first call includes it")
        first = time.perf_counter()
        timed_call(pipe, clock, call_kwargs(args, args.warmup_steps, spec.images))
        result["compile_and_first_call_s"] = time.perf_counter() - first
    graphs = _compiled_graphs()
    reset_peak(device)
    if device.type == "cuda":  # what is resident before the call: the weights of full mode
        result["allocated_before_gb"] = torch.cuda.memory_allocated(device) / GB
    result.update(timed_call(pipe, clock, call_kwargs(args, spec.steps, spec.images)))
    result.update(memory(device))
    if spec.backend == "compile":  # > 0 means the timed call recompiled (it should not)
        result["graphs_compiled_in_timed_call"] = _compiled_graphs() - graphs
    result["seconds_per_image"] = result["seconds"] / spec.images
    if spec.steps == 50:
        result["seconds_per_image_at_50_steps"] = result["seconds_per_image"]
    else:  # measured outside the loop + the first step + 49 median steps
        outside = result["before_loop_s"] + result["after_loop_s"] + result["first_step_s"]
        result["seconds_per_image_at_50_steps"] = (outside + 49 * result["step_s"]) / spec.images
    result["extrapolated_to_50_steps"] = spec.steps != 50
    return result


def _compiled_graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return -1


def add_flops(result: dict, spec: RunSpec, args, peak: float | None) -> None:
    """Achieved TFLOP/s (and its share of ``peak``) from bench/flops.py's counts."""
    try:
        from bench import flops

        if spec.backend == "unet":
            total = flops.unet_call(2, None, None, args.size).flops
            seconds = result["unet_call_s"]
        else:
            total = flops.generation_flops(
                "ours", spec.steps, spec.images, args.photos, "v2", size=args.size
            )["total"]
            seconds = result["seconds"]
            step_flops = flops.unet_call(2 * spec.images, None, "fused", args.size).flops
            result["step_tflops_per_s"] = step_flops / result["step_s"] / 1e12
        result["tflop"] = total / 1e12
        result["tflops_per_s"] = total / seconds / 1e12
        if peak:
            result["fraction_of_peak"] = result["tflops_per_s"] / peak
            if "step_tflops_per_s" in result:
                result["step_fraction_of_peak"] = result["step_tflops_per_s"] / peak
    except Exception as error:  # the FLOP counts are a bonus: never lose a timing for them
        result["flops_error"] = f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------- results


def _f(value, digits=2, suffix="") -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _error_line(text: str) -> str:
    """The line of a traceback that names the exception (else its last line)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line):
            return line
    return lines[-1] if lines else ""


def markdown(data: dict) -> str:
    dev, ver = data["device"], data["versions"]
    lines = [
        "# GPU: seconds per image and peak VRAM",
        "",
        "Written by `bench/gpu.py`"
        + (
            " in **dry-run mode (tiny models on the CPU: the numbers say nothing about speed)**"
            if data["settings"]["dry_run"]
            else ""
        )
        + f", {data['started']}.",
        "",
        f"- Device: **{dev['name']}**"
        + (
            f" (compute capability {dev['capability']}, {dev['memory_gb']} GB)"
            if "capability" in dev
            else ""
        )
        + (
            f"; dense bf16 peak {dev['peak_bf16_tflops']:,} TFLOP/s"
            if dev.get("peak_bf16_tflops")
            else ""
        ),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if k != "platform"),
        f"- Models: {data['settings']['size']}-size SDXL + PhotoMaker V2, random weights,"
        f" {data['settings']['dtype']}, LoRA fused; {data['settings']['image_size']}²,"
        f" CFG 5, negative prompt, {data['settings']['photos']} ID photo(s), start_merge_step 10.",
        "",
        "| Run | Status | s / image | s / image at 50 steps | step ms | before loop s | after loop s"
        " | peak VRAM GB | resident before GB | TFLOP/s | % of peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in data["runs"]:
        if run["status"] != "ok":
            why = _error_line(run.get("error", run.get("reason", "")))
            lines.append(f"| {run['name']} | {run['status']}: {why[:120]} | | | | | | | | | |")
            continue
        unet = run["backend"] == "unet"
        fraction = run.get("step_fraction_of_peak") if not unet else run.get("fraction_of_peak")
        lines.append(
            f"| {run['name']} | ok | {'-' if unet else _f(run['seconds_per_image'])} "
            f"| {'-' if unet else _f(run['seconds_per_image_at_50_steps']) + (' (extrapolated)' if run.get('extrapolated_to_50_steps') else '')} "
            f"| {_f(run['step_s'] * 1000, 1)} | {'-' if unet else _f(run['before_loop_s'])} "
            f"| {'-' if unet else _f(run['after_loop_s'])} | {_f(run.get('peak_allocated_gb'))} "
            f"| {_f(run.get('allocated_before_gb'))} "
            f"| {_f(run.get('tflops_per_s'), 0)} | {_f(fraction * 100 if fraction else None, 0)} |"
        )
    lines += [
        "",
        "*s / image*: the whole call (text and ID encoding, denoising, VAE decode, PIL) divided by",
        "the images it made. *step ms*: median time between two steps' ends (UNet with CFG +",
        "scheduler; for `unet` runs one bare UNet forward at batch 2). *before loop*: text + ID",
        "encoding and setup; *after loop*: VAE decode + PIL. *TFLOP/s*: the call's FLOPs",
        "(`bench/flops.py`) / its seconds; *% of peak*: the denoising steps' TFLOP/s (UNet FLOPs",
        "per step / step time) as a share of the dense bf16 peak. *peak VRAM*:",
        "`torch.cuda.max_memory_allocated` during the call (weights included); *resident before*:",
        "`torch.cuda.memory_allocated` just before it (the weights kept on the GPU).",
    ]
    if data["settings"]["dry_run"]:
        lines.append(
            "\nDry run: sequential offload cannot run with the CPU as its execution device"
            " (accelerate's hooks fail to move weights there), so its error here is expected; it"
            " runs on a GPU."
        )
    compiled = [r for r in data["runs"] if r["status"] == "ok" and "compile_and_first_call_s" in r]
    for run in compiled:
        lines.append(
            f"\nCompile + first call ({run['name']}): {_f(run['compile_and_first_call_s'], 1)} s."
        )
    builds = data.get("builds", {})
    if builds:
        lines.append(
            "\nPipeline build + warm-up: "
            + ", ".join(
                f"{m} {_f(b.get('build_s'), 1)} s + {_f(b.get('warmup_s'), 1)} s"
                for m, b in builds.items()
            )
            + "."
        )
    lines += ["", "## Against the targets (issue 9: H100, 1024², 50 steps, 1 image, bf16)", ""]
    by_name = {r["name"]: r for r in data["runs"] if r["status"] == "ok"}

    def row(label, run_name, key, target, unit):
        run = by_name.get(run_name)
        value = run.get(key) if run else None
        verdict = "-" if value is None else ("met" if value <= target else "not met")
        lines.append(f"| {label} | {_f(value)} {unit} | ≤ {target} {unit} | {verdict} |")

    lines += ["| Figure | Measured | Target | |", "|---|---:|---:|---|"]
    row("eager, s / image", "full/eager/50x1", "seconds_per_image", TARGETS["eager_s"], "s")
    row("compiled, s / image", "full/compile/50x1", "seconds_per_image", TARGETS["compiled_s"], "s")
    row("peak VRAM, full", "full/eager/50x1", "peak_allocated_gb", TARGETS["full_vram_gb"], "GB")
    row(
        "peak VRAM, model offload",
        "model-offload/eager/50x1",
        "peak_allocated_gb",
        TARGETS["model_offload_vram_gb"],
        "GB",
    )
    one = by_name.get("full/eager/50x1") or by_name.get("full/compile/50x1")
    peak = dev.get("peak_bf16_tflops")
    if one and one.get("tflop") and peak:
        lines += [
            "",
            f"FLOP lower bound for one image at the device's dense bf16 peak: "
            f"{one['tflop'] / peak:.2f} s on this {dev['name']} ({one['tflop']:.0f} TFLOP / "
            f"{peak:g} TFLOP/s; the target table's {TARGETS['flop_bound_s']} s is an H100 SXM's).",
        ]
    lines += [
        "",
        "For scale (quoted, not measured here): the reference README reports 14 s/image on a "
        "V100 (fp16) and an 11 GB minimum.",
        "",
        f"Script time: {_f(data.get('elapsed_s'), 0)} s.",
        "",
    ]
    return "\n".join(lines)


def write(data: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results-gpu.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (out_dir / "results-gpu.md").write_text(markdown(data))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Seconds per image and peak VRAM of the full-size pipeline (random weights).",
        epilog="Runs: MODE/BACKEND/STEPSxIMAGES (full/eager/50x1, model-offload/eager/50x1, "
        "full/compile/50x1) or MODE/unet/N (N bare UNet forwards). Modes: " + ", ".join(MODES),
    )
    parser.add_argument(
        "--plan",
        type=lambda s: [RunSpec.parse(x) for x in s.split(",") if x.strip()],
        default=None,
        help=f"comma-separated runs (default: {','.join(DEFAULT_PLAN)})",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where results-gpu.md/.json go (default bench/; dry run: a temp folder)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny models, CPU, fp32, compile with the eager backend: checks the code path",
    )
    parser.add_argument("--device", default=None, help="default cuda (dry run: cpu)")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["bfloat16", "float16", "float32"],
        help="default bfloat16 (dry run: float32)",
    )
    parser.add_argument("--photos", type=int, default=1, help="ID photos per call")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode (default, max-autotune-no-cudagraphs, ...)",
    )
    parser.add_argument("--compile-backend", default=None, help="default inductor (dry run: eager)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="skip runs that would start after this many seconds",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense bf16 peak of the device (default: from its name)",
    )
    parser.add_argument("--bpe", default=None, help="CLIP's bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.size = "tiny" if args.dry_run else "full"
    args.plan = args.plan or [RunSpec.parse(x) for x in DEFAULT_PLAN]
    if args.dry_run:  # few steps and images; runs that become the same are run once
        small = [RunSpec(s.mode, s.backend, min(s.steps, 3), min(s.images, 2)) for s in args.plan]
        args.plan = list(dict.fromkeys(small))
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    args.dtype = args.dtype or ("float32" if args.dry_run else "bfloat16")
    args.compile_backend = args.compile_backend or ("eager" if args.dry_run else "inductor")
    if args.out_dir is None:
        args.out_dir = (
            Path(__file__).resolve().parent
            if not args.dry_run
            else Path("/tmp/photomaker-bench-dry-run")
        )
    return args


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        common.say("No CUDA device: run with --dry-run to check the code path on the CPU.")
        return 2
    dtype = getattr(torch, args.dtype)
    clock = Clock(device)
    info = device_info(device, args.peak_tflops)
    data = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": info,
        "versions": common.versions(),
        "settings": {
            "dry_run": args.dry_run,
            "size": args.size,
            "dtype": args.dtype,
            "image_size": sdxl_configs.SIZES[args.size]["image_size"],
            "photos": args.photos,
            "plan": [s.name for s in args.plan],
            "compile_mode": args.compile_mode,
            "compile_backend": args.compile_backend,
            "budget_s": args.budget_s,
        },
        "runs": [],
        "builds": {},
    }
    write(data, args.out_dir)

    def elapsed() -> float:
        return time.perf_counter() - started

    def log(message: str) -> None:
        common.say(f"[{elapsed():6.1f}s] {message}")

    log(f"{info['name']}; torch {torch.__version__}; plan: {', '.join(s.name for s in args.plan)}")
    log(f"results: {args.out_dir / 'results-gpu.md'}")
    for group, specs in group_plan(args.plan):
        mode = specs[0].mode
        if elapsed() > args.budget_s:
            for spec in specs:
                data["runs"].append({"name": spec.name, **asdict(spec), "status": "skipped",
                                     "reason": f"over the {args.budget_s:.0f} s budget"})  # fmt: skip
            write(data, args.out_dir)
            continue
        build = data["builds"].setdefault(group, {})
        pipe = None
        try:
            log(f"building the {group} pipeline")
            t = time.perf_counter()
            pipe = build_pipeline(mode, args, device, dtype)
            build["build_s"] = time.perf_counter() - t
            log(f"  built in {build['build_s']:.1f}s; warm-up call ({args.warmup_steps} steps)")
            t = time.perf_counter()
            timed_call(pipe, clock, call_kwargs(args, args.warmup_steps, 1))
            build["warmup_s"] = time.perf_counter() - t
            log(f"  warm-up {build['warmup_s']:.1f}s")
        except Exception:
            build["error"] = traceback.format_exc()
            log(f"  {group} pipeline failed:\n{build['error']}")
        state: dict = {}
        for spec in specs:
            run = {"name": spec.name, **asdict(spec)}
            if "error" in build or pipe is None:
                run.update(
                    status="error",
                    error="the pipeline was not built: " + build.get("error", "")[-2000:],
                )
            elif elapsed() > args.budget_s:
                run.update(status="skipped", reason=f"over the {args.budget_s:.0f} s budget")
            else:
                log(f"run {spec.name}")
                t = time.perf_counter()
                try:
                    if spec.backend == "unet":
                        run.update(run_unet(pipe, spec, args, device, dtype, clock))
                    else:
                        run.update(run_pipeline(pipe, spec, args, device, clock, state))
                    add_flops(run, spec, args, info.get("peak_bf16_tflops"))
                    run["status"] = "ok"
                    log(
                        "  "
                        + ", ".join(
                            f"{k} {v:.3f}"
                            for k, v in run.items()
                            if isinstance(v, float) and k.endswith(("_s", "_gb", "image", "peak"))
                        )
                    )
                except Exception:
                    run.update(status="error", error=traceback.format_exc()[-4000:])
                    log(f"  failed:\n{run['error']}")
                    free_memory(device)
                run["wall_s"] = time.perf_counter() - t
            data["runs"].append(run)
            data["elapsed_s"] = elapsed()
            write(data, args.out_dir)
        del pipe
        free_memory(device, compiled=True)
    data["elapsed_s"] = elapsed()
    write(data, args.out_dir)
    failed = [r["name"] for r in data["runs"] if r["status"] == "error"]
    log(
        f"done; {len(data['runs']) - len(failed)} of {len(data['runs'])} runs without error"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    log(f"wrote {args.out_dir / 'results-gpu.md'} and results-gpu.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
