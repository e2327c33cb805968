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
forwards at batch 2. Modes: ``settings.MEMORY_MODES``, placed as ``photomaker.loading.place``
places them (``full``: everything on the GPU; ``model-offload``: ``enable_model_cpu_offload``;
``encoder-offload``: the UNet and VAE resident, the encoders group-offloaded; ...); each
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
import contextlib
import gc
import inspect
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
from photomaker.loading import RESIDENT_MODES, apply_memory_mode
from photomaker.settings import COMPILE_MODES, MEMORY_MODES

#: The app's --memory modes, each a pipeline placement this script can build.
MODES = tuple(mode for mode in MEMORY_MODES if mode != "auto")  # a run names a concrete mode
#: eager / compile (torch.compile) / aot (photomaker.aot, AOTInductor) run quality mode;
#: fast / compile-fast run fast mode (photomaker.fast: the distillation LoRA, its scheduler,
#: steps and guidance); unet: bare UNet forwards; ab: interleaved whole calls of the
#: reference V1, ours V1, ours V2 and ours V2 fast on the same weights (their own pipelines).
#: fast-fused / compile-fast-fused: the same with the LoRA merged into the weights for each
#: call (photomaker.fast's fast_fuse forced on); fast / compile-fast keep the unfused adapter.
#: app: quality mode, eager, on a pipeline that carries what the app loads by default besides
#: SDXL and PhotoMaker (the doodle's adapter, the fast LoRA, the style image's IP-Adapter and
#: image encoder, used once in the warm-up), to measure the peak the app as shipped reaches.
BACKENDS = ("eager", "compile", "unet", "fast", "compile-fast", "aot", "ab", "fast-fused",
            "compile-fast-fused", "app")  # fmt: skip
#: Which pipeline a backend's runs share: its group kind.
KIND = {"eager": "eager", "unet": "eager", "fast": "eager", "compile": "compile",
        "compile-fast": "compile", "aot": "aot", "ab": "ab", "fast-fused": "eager",
        "compile-fast-fused": "compile", "app": "app"}  # fmt: skip
#: The backends that run fast mode, the torch.compile ones, the fused ones.
FAST_BACKENDS = ("fast", "compile-fast", "fast-fused", "compile-fast-fused")
COMPILE_BACKENDS = ("compile", "compile-fast", "compile-fast-fused")
FUSED_BACKENDS = ("fast-fused", "compile-fast-fused")
DEFAULT_PLAN = (
    "full/unet/20",
    "full/eager/50x1",
    "full/fast/8x1",
    "encoder-offload/eager/50x1",
    "fp8/eager/50x1",
    "group-offload/eager/50x1",
    "group-offload-fp8/eager/50x1",
    "model-offload/eager/50x1",
    "full/ab/50x1",
    "full/compile/50x1",
    "full/compile-fast/8x1",
    "full/aot/50x1",
    "full/app/50x1",
    "encoder-offload/app/50x1",
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
TARGETS_16 = {  # issue 16, 1024², 50 steps, 1 image
    "compiled_s": 1.5,
    "fast_compiled_s": 0.4,
    "ours_vs_reference_eager": 0.9,
    "vram_8gb": (8.0, 1.25),  # peak GB, time ratio to full eager
    "vram_6gb": (6.0, 1.5),
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
        if mode not in MODES or backend not in BACKENDS or steps < 1 or images < 1:
            raise argparse.ArgumentTypeError(
                f"{text!r}: mode one of {', '.join(MODES)}; backend one of {', '.join(BACKENDS)}"
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
    *((mode, "eager") for mode in MODES if mode != "sequential-offload"),
    ("full", "ab"),
    ("full", "compile"),
    ("full", "aot"),
    *((mode, "app") for mode in MODES),
    ("sequential-offload", "eager"),
    *((mode, kind) for kind in ("compile", "aot", "ab") for mode in MODES if mode != "full"),
)
GROUP_SUFFIX = {"eager": "", "compile": " (compiled)", "aot": " (AOT)", "ab": " (A/B)",
                "app": " (app defaults)"}  # fmt: skip


def group_plan(specs: list[RunSpec]) -> list[tuple[str, list[RunSpec]]]:
    """``[(group name, runs)]`` in :data:`GROUPS` order; bare-UNet runs first in their group,
    fast-mode runs last (attaching the fast LoRA bakes the PhotoMaker LoRA into the weights)."""
    groups = []
    for mode, kind in GROUPS:
        runs = [s for s in specs if s.mode == mode and KIND[s.backend] == kind]
        runs.sort(key=lambda s: (s.backend != "unet", s.backend in FAST_BACKENDS))
        if runs:
            groups.append((mode + GROUP_SUFFIX[kind], runs))
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


def build_pipeline(
    mode: str, args, device: torch.device, dtype: torch.dtype, app_defaults: dict | None = None
):
    """A fresh PhotoMaker V2 pipeline of ``args.size`` models with random weights, the LoRA
    fused, placed for ``mode``. Weights are drawn on the GPU (fast) and moved as the mode says.
    With ``app_defaults`` (a dict, filled with what was attached) the app's default optional
    models are attached before placing (:func:`attach_app_defaults`)."""
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
    if app_defaults is not None:
        pipe = attach_app_defaults(pipe, args, device, dtype, init_device, app_defaults)
    if mode not in RESIDENT_MODES:  # drawn on the GPU: back to the CPU before the hooks
        pipe.to("cpu")
        free_memory(device)
    apply_memory_mode(pipe, mode, device, dtype)  # as the app places it (its VAE settings too)
    free_memory(device)
    return pipe


def attach_app_defaults(pipe, args, device, dtype, init_device, info: dict):
    """What the app loads by default besides SDXL and PhotoMaker, attached in the app's order
    (photomaker.loading.build_pipeline) with random weights: the doodle's T2I-Adapter (the
    sketch adapter's config; full size only, where its feature maps fit the UNet), the fast
    LoRA (:func:`attach_fast`), and the style image's IP-Adapter with its image encoder
    (ViT-bigG's vision tower at full size), written in the released layout to a temporary
    folder and loaded through photomaker.style_image. Returns the pipeline (the doodle's is
    another class on the same models); ``info`` gets each one's size in GB."""
    import shutil
    import tempfile

    from safetensors.torch import save_file

    from photomaker import style_image
    from photomaker.memory_estimate import detached_style_bytes, model_bytes

    if args.size == "full":
        from diffusers import T2IAdapter

        from photomaker.pipeline_adapter import PhotoMakerStableDiffusionXLAdapterPipeline

        with torch.device(init_device):
            adapter = T2IAdapter(**sdxl_configs.T2I_SKETCH_ADAPTER).eval()
        adapter = common.cast(adapter, dtype)
        pipe = PhotoMakerStableDiffusionXLAdapterPipeline.from_photomaker_pipe(
            pipe, adapter=adapter
        )
        pipe.set_progress_bar_config(disable=True)
        info["doodle_adapter_gb"] = model_bytes(adapter) / GB
    info.update(attach_fast(pipe, args, device))
    folder = Path(tempfile.mkdtemp(prefix="photomaker-bench-ip-adapter-"))
    try:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        full = args.size == "full"
        config = sdxl_configs.STYLE_IMAGE_ENCODER if full else sdxl_configs.TINY_STYLE_IMAGE_ENCODER
        with torch.device(init_device):
            encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**config)).eval()
        common.cast(encoder, dtype).save_pretrained(folder / "image_encoder")
        del encoder
        state = style_image.random_ip_adapter_state_dict(
            pipe.unet, config["projection_dim"], args.seed
        )
        save_file({k: v.to(dtype).contiguous() for k, v in state.items()},
                  str(folder / "ip-adapter_sdxl.safetensors"))  # fmt: skip
        style_image.attach_style_adapter(pipe, str(folder / "ip-adapter_sdxl.safetensors"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    info["style_image_encoder_gb"] = model_bytes(pipe.image_encoder) / GB
    info["ip_adapter_gb"] = detached_style_bytes(pipe) / GB
    return pipe


def style_warmup(pipe, args, clock: Clock) -> None:
    """One short call with a style image, as a first style request does: the IP-Adapter's
    weights move to the GPU and stay (photomaker.style_image)."""
    from PIL import Image

    from photomaker import style_image

    image = Image.new("RGB", (224, 224), (120, 90, 60))
    with style_image.style_image_mode(pipe, image, 0.5) as extra:
        timed_call(pipe, clock, {**call_kwargs(args, args.warmup_steps, 1), **extra})


def offload_group_counts(pipe) -> dict[str, int]:
    """How many group-offloading groups each model of ``pipe`` has (none: not offloaded so),
    so a results file shows the split the run used (photomaker/offload_groups.py)."""
    from photomaker.offload_groups import applied_groups

    counts = {}
    for name, model in pipe.components.items():
        if isinstance(model, torch.nn.Module) and (groups := applied_groups(model)):
            counts[name] = len(groups)
    return counts


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
        if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
            images = pipe(callback_on_step_end=on_step_end, **kwargs).images
        else:  # the reference (photomakerv 0.1.0) has diffusers' older per-step callback
            images = pipe(callback=lambda *a: marks.append(clock.mark()), callback_steps=1,
                          **kwargs).images  # fmt: skip
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
    result = {"unet_call_s": per_call, "step_s": per_call, **memory(device)}
    result["attention_backends_ms"] = time_attention_backends(pipe, inputs, clock, spec.steps)
    timed = {k: v for k, v in result["attention_backends_ms"].items() if isinstance(v, float)}
    if timed and args.sdpa_backend == "auto":
        args.sdpa_backend_chosen = min(timed, key=timed.get)
    result["sdpa_backend_for_compiled_runs"] = args.sdpa_backend_chosen
    return result


#: The SDPA kernels worth timing on a GPU (math is the slow reference, never the fastest).
SDPA_BACKENDS = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION")


def time_attention_backends(pipe, inputs: dict, clock: Clock, calls: int) -> dict:
    """Milliseconds per bare UNet call with each SDPA kernel forced (``sdpa_kernel``), or the
    error that kernel gave; on the CPU only the default (the GPU kernels do not exist)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    found: dict = {}
    if not clock.cuda:
        return found
    for name in SDPA_BACKENDS:
        try:
            with torch.no_grad(), sdpa_kernel(getattr(SDPBackend, name)):
                for _ in range(2):
                    pipe.unet(**inputs)
                clock.sync()
                start = clock.mark()
                for _ in range(calls):
                    pipe.unet(**inputs)
                end = clock.mark()
                clock.sync()
            found[name] = clock.seconds(start, end) / calls * 1000
        except Exception as error:  # a kernel that cannot run these shapes: say which
            found[name] = f"{type(error).__name__}: {str(error)[:160]}"
    return found


def attention_context(args):
    """The SDPA kernel order the compiled runs use: the chosen one first, the rest after it as
    fall-backs for shapes it cannot take; the default order when none was chosen."""
    import contextlib

    if args.sdpa_backend_chosen in (None, "default"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [args.sdpa_backend_chosen] + [b for b in SDPA_BACKENDS if b != args.sdpa_backend_chosen]
    return sdpa_kernel([getattr(SDPBackend, b) for b in order] + [SDPBackend.MATH],
                       set_priority=True)  # fmt: skip


def compile_unet_for_bench(pipe, args, tuned: bool) -> dict:
    """``torch.compile`` the UNet; ``tuned`` (inductor): the app's own ``--compile``
    (``photomaker.loading.compile_unet``: channels-last, inductor's ``conv_1x1_as_mm``, the
    mode of ``--compile-mode``), so the figure is the app's; the runs also use the chosen
    SDPA kernel (:func:`attention_context`). Untuned, or another backend: a plain compile."""
    import torch._inductor.config as inductor_config

    from photomaker.loading import compile_unet
    from photomaker.settings import Settings

    options = {"backend": args.compile_backend}
    if args.compile_backend == "inductor":
        options["mode"] = args.compile_mode
    if tuned and args.compile_backend == "inductor":
        compile_unet(pipe, Settings(compile=True, compile_mode=args.compile_mode))
    else:
        if args.compile_backend == "inductor":
            inductor_config.conv_1x1_as_mm = False
        pipe.unet.to(memory_format=torch.channels_last if tuned else torch.contiguous_format)
        pipe.unet.compile(**options)
    return {"compile_options": {**options, "channels_last": tuned, "conv_1x1_as_mm": tuned,
                                "sdpa_backend": args.sdpa_backend_chosen if tuned else "default",
                                "app_compile": tuned and args.compile_backend == "inductor"}}


def attach_fast(pipe, args, device) -> dict:
    """The fast mode on ``pipe``: a random distillation LoRA in SDXL-Lightning's layout
    (rank 64 at full size, an assumption) through photomaker.fast, as the app loads it."""
    from photomaker import fast

    rank = 64 if args.size == "full" else 4
    state = fast.random_fast_lora_state_dict(pipe.unet, rank=rank, seed=args.seed + 7)
    dtype = pipe.unet.dtype
    state = {k: v.to(device if device.type == "cuda" else "cpu", dtype) for k, v in state.items()}
    fast.attach_fast_lora(pipe, "random (SDXL-Lightning layout)", fast.DEFAULT_MODE, state)
    if device.type == "cuda":
        pipe.unet.to(device)
    return {"fast_lora_rank": rank, "fast_layers": fast.fast_layers(pipe)}


def fast_call(pipe, clock: Clock, kwargs: dict, fuse: bool = False) -> dict:
    """One fast-mode call: the mode's scheduler, steps and guidance (photomaker.fast); with
    ``fuse`` the LoRA merged into the weights for the call (``fast_fused`` records whether it
    was: the offload and fp8 modes refuse it and run the adapter)."""
    from photomaker import fast

    with fast.generation_mode(pipe, True, fuse=fuse) as overrides:
        fused = fast.fast_fused(pipe.unet)
        return {**timed_call(pipe, clock, {**kwargs, **overrides}), **overrides,
                "fast_fused": fused}  # fmt: skip


def run_pipeline(pipe, spec: RunSpec, args, device, clock: Clock, state: dict) -> dict:
    result = {}
    fast_mode = spec.backend in FAST_BACKENDS
    if fast_mode and not state.get("fast"):
        state["fast"] = attach_fast(pipe, args, device)
    if fast_mode:
        result.update(state["fast"])
    if spec.backend == "aot" and not state.get("aot"):
        from photomaker import aot

        shapes = aot.ShapeRange() if args.size == "full" else aot.ShapeRange.for_tiny()
        first = time.perf_counter()
        example = call_kwargs(args, args.warmup_steps, spec.images)
        forward = aot.compile_unet_ahead_of_time(pipe, example, shapes)
        if forward is None:
            raise RuntimeError("AOT compilation failed (the warning above says why)")
        state["aot"] = forward
        timed_call(pipe, clock, call_kwargs(args, args.warmup_steps, spec.images))
        result["compile_and_first_call_s"] = time.perf_counter() - first
    if spec.backend in COMPILE_BACKENDS and not state.get("compiled"):
        first = time.perf_counter()
        tuned = args.compile_tuning
        state["compile"] = compile_unet_for_bench(pipe, args, tuned)
        common.say(f"    compiling the UNet ({state['compile']}); the first call includes it")
        try:
            with attention_context(args) if tuned else contextlib.nullcontext():
                timed_call(pipe, clock, call_kwargs(args, args.warmup_steps, spec.images))
        except Exception:
            if not tuned:
                raise
            # the tuned settings failed: record why and compile once more without them
            state["compile_tuned_error"] = _error_line(traceback.format_exc())
            common.say(f"    tuned compile failed ({state['compile_tuned_error']}); plain one")
            args.compile_tuning = tuned = False
            free_memory(device, compiled=True)  # Module.compile again replaces the compiled call
            state["compile"] = compile_unet_for_bench(pipe, args, False)
            timed_call(pipe, clock, call_kwargs(args, args.warmup_steps, spec.images))
        state["compiled"] = True
        result["compile_and_first_call_s"] = time.perf_counter() - first
    if spec.backend in COMPILE_BACKENDS:
        result.update(state["compile"])
        if "compile_tuned_error" in state:
            result["compile_tuned_error"] = state["compile_tuned_error"]
    tuned_attention = spec.backend in COMPILE_BACKENDS and args.compile_tuning
    with attention_context(args) if tuned_attention else contextlib.nullcontext():
        return _measure(pipe, spec, args, device, clock, state, result, fast_mode)


def _measure(pipe, spec: RunSpec, args, device, clock: Clock, state: dict, result: dict,
             fast_mode: bool) -> dict:  # fmt: skip
    """The timed part of :func:`run_pipeline`: a fast-mode warm call if needed, then one call."""
    if fast_mode and not state.get(f"warm-{spec.backend}"):  # the adapter flags recompile once
        first = time.perf_counter()
        fast_call(pipe, clock, call_kwargs(args, spec.steps, spec.images),
                  fuse=spec.backend in FUSED_BACKENDS)  # fmt: skip
        result["fast_first_call_s"] = time.perf_counter() - first
        state[f"warm-{spec.backend}"] = True
    graphs = _dynamo_counter("stats", "unique_graphs")
    reset_peak(device)
    if device.type == "cuda":  # what is resident before the call: the weights of full mode
        result["allocated_before_gb"] = torch.cuda.memory_allocated(device) / GB
    kwargs = call_kwargs(args, spec.steps, spec.images)
    result.update(fast_call(pipe, clock, kwargs, fuse=spec.backend in FUSED_BACKENDS)
                  if fast_mode else timed_call(pipe, clock, kwargs))  # fmt: skip
    result.update(memory(device))
    result["estimated_peak_gb"] = estimated_peak(pipe, spec, fast_mode)
    if spec.backend in COMPILE_BACKENDS:  # > 0: the timed call recompiled
        compiled_now = _dynamo_counter("stats", "unique_graphs")
        result["graphs_compiled_in_timed_call"] = compiled_now - graphs
        if args.compile_backend == "inductor" and args.compile_mode == "reduce-overhead":
            # > 0: some graphs ran without CUDA graphs
            # (a CPU tensor, a mutated input or a dynamic shape make inductor skip them)
            result["cudagraph_skips"] = _dynamo_counter("inductor", "cudagraph_skips")
    if spec.backend == "aot":
        result["aot_compiled_calls"] = state["aot"].compiled_calls
        result["aot_eager_calls"] = state["aot"].eager_calls
    result["seconds_per_image"] = result["seconds"] / spec.images
    if fast_mode:  # the mode's own step count: nothing to extrapolate
        result["seconds_per_image_at_50_steps"] = None
        result["extrapolated_to_50_steps"] = False
        return result
    if spec.steps == 50:
        result["seconds_per_image_at_50_steps"] = result["seconds_per_image"]
    else:  # measured outside the loop + the first step + 49 median steps
        outside = result["before_loop_s"] + result["after_loop_s"] + result["first_step_s"]
        result["seconds_per_image_at_50_steps"] = (outside + 49 * result["step_s"]) / spec.images
    result["extrapolated_to_50_steps"] = spec.steps != 50
    return result


def estimated_peak(pipe, spec: RunSpec, fast_mode: bool) -> float | None:
    """What photomaker.memory_estimate (``memory auto``) predicts for this run's peak, so the
    results show estimate and measurement side by side: quality calls of one image in the
    exact modes (the estimate is for one 1024² image: on the tiny models it is only checked)."""
    from photomaker.memory_estimate import MODES, estimate_peaks_gb

    if fast_mode or spec.images != 1 or spec.mode not in MODES:
        return None
    return estimate_peaks_gb(pipe)[spec.mode]


def build_ab(args, device, dtype) -> tuple[dict, dict]:
    """Ours V1 and the reference V1 on one set of components (the LoRA fused for ours,
    unfused as the reference runs it: switched before each call), ours V2 on its own UNet,
    and ours V2 in fast mode; the same random weights in the released V1/V2 layouts."""
    from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline

    init = device if device.type == "cuda" else torch.device("cpu")
    extra = {} if args.size == "full" else {"id_encoder_config": common.id_encoder_config(args.size)}
    components = common.build_components(args.size, init, dtype, args.seed, args.bpe)
    v1 = common.photomaker_state_dict(components["unet"], "v1", args.size, init, dtype, args.seed)
    pipes = {"ours-v1": PhotoMakerStableDiffusionXLPipeline(**components)}
    pipes["ours-v1"].load_photomaker_adapter(
        dict(v1), pm_version="v1", trigger_word="img", **extra
    )
    notes = {}
    oracle = common.load_reference() if args.size == "full" else None
    if oracle is not None:
        pipes["reference-v1"] = common.reference_pipeline(
            oracle, components, pipes["ours-v1"], v1["id_encoder"], init, dtype
        )
    else:
        notes["reference-v1"] = (
            "not run: the dry run's tiny ID encoder is not the reference's (full-size) one"
            if args.size != "full"
            else "not run: the reference package is in neither .oracle/ nor .whl/oracle/"
        )
    components_v2 = dict(components)
    torch.manual_seed(args.seed + 10)
    components_v2["unet"] = common.cast(
        common.build_unet(sdxl_configs.SIZES[args.size]["unet"], init), dtype
    )
    v2 = common.photomaker_state_dict(components_v2["unet"], "v2", args.size, init, dtype, args.seed)
    pipes["ours-v2"] = PhotoMakerStableDiffusionXLPipeline(**components_v2)
    pipes["ours-v2"].load_photomaker_adapter(v2, pm_version="v2", trigger_word="img", **extra)
    common.ensure_lora_fused(pipes["ours-v2"])
    attach_fast(pipes["ours-v2"], args, device)
    pipes["ours-v2-fast"] = pipes["ours-v2"]
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
    return pipes, notes


def run_ab(spec: RunSpec, args, device, dtype, clock: Clock) -> dict:
    """Interleaved whole calls (the order rotates every round, one untimed round first):
    seconds per variant and each variant's per-round ratio to the baseline, with its spread."""
    pipes, notes = build_ab(args, device, dtype)
    names = list(pipes)
    baseline = "reference-v1" if "reference-v1" in pipes else "ours-v1"
    seconds: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, float] = {}
    for round_ in range(args.ab_rounds + 1):
        order = names[round_ % len(names):] + names[: round_ % len(names)]
        for name in order:
            pipe = pipes[name]
            if name in ("ours-v1", "reference-v1"):  # one UNet: fused for ours, unfused for it
                common.ensure_lora_fused(pipe, fused=name == "ours-v1")
            kwargs = call_kwargs(args, spec.steps, spec.images)
            if name in ("ours-v1", "reference-v1"):
                kwargs.pop("id_embeds")
            reset_peak(device)
            if name.endswith("-fast"):
                result = fast_call(pipe, clock, kwargs)
            else:
                result = timed_call(pipe, clock, kwargs)
            if round_:
                seconds[name].append(result["seconds"] / spec.images)
                if device.type == "cuda":
                    peak = memory(device)["peak_allocated_gb"]
                    peaks[name] = max(peaks.get(name, 0.0), peak)
    del pipes
    free_memory(device)
    return {
        "variants": names,
        "baseline": baseline,
        "rounds": args.ab_rounds,
        "seconds_per_image_by_variant": seconds,
        "median_s": {n: statistics.median(v) for n, v in seconds.items()},
        "peak_allocated_gb_by_variant": peaks or None,
        "spread_vs_baseline": {
            n: common.paired_spread(seconds[baseline], seconds[n]) for n in names if n != baseline
        },
        "spread_ours_v1_vs_v2": common.paired_spread(seconds["ours-v1"], seconds["ours-v2"]),
        "notes": notes,
    }


def _dynamo_counter(group: str, name: str) -> int:
    """One of torch._dynamo's counters (``stats/unique_graphs``: graphs compiled so far;
    ``inductor/cudagraph_skips``: graphs run without CUDA graphs so far), or -1."""
    try:
        from torch._dynamo.utils import counters

        return int(counters[group][name])
    except Exception:
        return -1


def add_flops(result: dict, spec: RunSpec, args, peak: float | None) -> None:
    """Achieved TFLOP/s (and its share of ``peak``) from bench/flops.py's counts."""
    try:
        from bench import flops

        if spec.backend in (*FAST_BACKENDS, "ab"):
            return  # bench/fast_mode.py counts fast mode's FLOPs; ab has its own ratios
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


def _base(by_name: dict) -> dict | None:
    """The run the ratios are taken against: full mode, eager, one image (any step count)."""
    for name, run in by_name.items():
        if name.startswith("full/eager/") and name.endswith("x1"):
            return run
    return None


def _ratio_lines(by_name: dict) -> list[str]:
    base = _base(by_name)
    if not base or not base.get("seconds_per_image_at_50_steps"):
        return []
    ref_s, ref_gb = base["seconds_per_image_at_50_steps"], base.get("peak_allocated_gb")
    lines = ["", f"### Ratios to {base['name']} (its 50-step time per image, its peak VRAM)", "",
             "| Run | time ratio | peak VRAM ratio |", "|---|---:|---:|"]  # fmt: skip
    for name, run in by_name.items():
        seconds = run.get("seconds_per_image_at_50_steps") or run.get("seconds_per_image")
        if run["backend"] in ("unet", "ab") or seconds is None or run is base:
            continue
        gb = run.get("peak_allocated_gb")
        lines.append(
            f"| {name} | {seconds / ref_s:.2f}× | "
            + (f"{gb / ref_gb:.2f}× |" if gb and ref_gb else "- |")
        )
    lines.append(
        "\nFast-mode rows compare the mode's own call (its steps, no CFG) with the 50-step "
        "quality call: the time a person waits for a picture."
    )
    return lines


def _ab_lines(by_name: dict) -> list[str]:
    lines = []
    for name, run in by_name.items():
        if run["backend"] != "ab":
            continue
        base = run["baseline"]
        lines += ["", f"### {name}: interleaved whole calls ({run['rounds']} rounds)", "",
                  "| Variant | median s / image | peak VRAM GB |", "|---|---:|---:|"]  # fmt: skip
        peaks = run.get("peak_allocated_gb_by_variant") or {}
        for variant in run["variants"]:
            lines.append(
                f"| {variant} | {_f(run['median_s'][variant])} | {_f(peaks.get(variant))} |"
            )
        lines.append("")
        for variant, spread in run["spread_vs_baseline"].items():
            lines.append("- " + common.spread_sentence(spread, base, variant))
        lines.append(
            "- " + common.spread_sentence(run["spread_ours_v1_vs_v2"], "ours-v1", "ours-v2")
        )
        for variant, note in run.get("notes", {}).items():
            lines.append(f"- {variant}: {note}")
    return lines


def _targets_16_lines(by_name: dict) -> list[str]:
    """Issue 16's targets, each with the measured figure or '-' when its run is missing."""
    lines = ["", "## Against the targets of issue 16 (1024², 50 steps, 1 image)", "",
             "| Figure | Measured | Target | |", "|---|---:|---:|---|"]  # fmt: skip

    def verdict(value, ok) -> str:
        return "-" if value is None else ("met" if ok else "not met")

    def row(label, value, target_text, ok, unit=""):
        lines.append(f"| {label} | {_f(value)}{unit} | {target_text} | {verdict(value, ok)} |")

    compiled = (by_name.get("full/compile/50x1") or {}).get("seconds_per_image")
    row("compiled, s / image", compiled, f"≤ {TARGETS_16['compiled_s']} s",
        compiled is not None and compiled <= TARGETS_16["compiled_s"], " s")  # fmt: skip
    fast_c = min((r["seconds_per_image"] for n, r in by_name.items()  # adapter or fused
                  if r["backend"] in ("compile-fast", "compile-fast-fused") and n.endswith("x1")
                  and r.get("seconds_per_image") is not None), default=None)  # fmt: skip
    row("fast, compiled, s / image", fast_c, f"≤ {TARGETS_16['fast_compiled_s']} s",
        fast_c is not None and fast_c <= TARGETS_16["fast_compiled_s"], " s")  # fmt: skip
    ab = next((r for r in by_name.values() if r["backend"] == "ab"), None)
    ratio = None
    if ab and ab["baseline"] == "reference-v1":
        ratio = ab["spread_vs_baseline"]["ours-v1"]["ratio_median"]
    row("ours V1 / reference V1, eager", ratio, f"≤ {TARGETS_16['ours_vs_reference_eager']}",
        ratio is not None and ratio <= TARGETS_16["ours_vs_reference_eager"], "×")  # fmt: skip
    base = _base(by_name)
    for key in ("vram_8gb", "vram_6gb"):
        gb_target, time_target = TARGETS_16[key]
        best = None
        for name, run in by_name.items():
            gb, sec = run.get("peak_allocated_gb"), run.get("seconds_per_image_at_50_steps")
            if not (base and gb and sec and base.get("seconds_per_image_at_50_steps")):
                continue
            if run["backend"] != "eager" or run.get("images", 1) != 1:
                continue
            r = sec / base["seconds_per_image_at_50_steps"]
            if gb <= gb_target and r <= time_target and (best is None or r < best[2]):
                best = (name, gb, r)
        text = f"≤ {gb_target} GB at ≤ {time_target}× full"
        if best:
            lines.append(f"| peak ≤ {gb_target} GB | {best[0]}: {best[1]:.2f} GB at {best[2]:.2f}× "
                         f"| {text} | met |")  # fmt: skip
        else:
            lines.append(f"| peak ≤ {gb_target} GB | no run meets it (see the ratios) | {text} | "
                         + ("not met |" if base else "- |"))
    return lines


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
        " | peak VRAM GB | estimated peak GB | resident before GB | TFLOP/s | % of peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in data["runs"]:
        if run["status"] == "ok" and run["backend"] == "ab":
            lines.append(f"| {run['name']} | ok: see its section below | | | | | | | | | | |")
            continue
        if run["status"] != "ok":
            why = _error_line(run.get("error", run.get("reason", "")))
            lines.append(f"| {run['name']} | {run['status']}: {why[:120]} | | | | | | | | | | |")
            continue
        unet = run["backend"] == "unet"
        fraction = run.get("step_fraction_of_peak") if not unet else run.get("fraction_of_peak")
        lines.append(
            f"| {run['name']} | ok | {'-' if unet else _f(run['seconds_per_image'])} "
            f"| {'-' if unet else _f(run['seconds_per_image_at_50_steps']) + (' (extrapolated)' if run.get('extrapolated_to_50_steps') else '')} "
            f"| {_f(run['step_s'] * 1000, 1)} | {'-' if unet else _f(run['before_loop_s'])} "
            f"| {'-' if unet else _f(run['after_loop_s'])} | {_f(run.get('peak_allocated_gb'))} "
            f"| {_f(run.get('estimated_peak_gb'))} | {_f(run.get('allocated_before_gb'))} "
            f"| {_f(run.get('tflops_per_s'), 0)} | {_f(fraction * 100 if fraction else None, 0)} |"
        )
    for run in data["runs"]:
        why = _error_line(run.get("error", run.get("reason", "")))
        if run["status"] != "ok" and (len(why) > 120 or run.get("recorded_by_hand")):
            by_hand = " (recorded by hand from the command's log)" if run.get("recorded_by_hand") else ""
            lines.append(f"\n{run['name']}{by_hand}: {why}")
    lines += [
        "",
        "*s / image*: the whole call (text and ID encoding, denoising, VAE decode, PIL) divided by",
        "the images it made. *step ms*: median time between two steps' ends (UNet with CFG +",
        "scheduler; for `unet` runs one bare UNet forward at batch 2). *before loop*: text + ID",
        "encoding and setup; *after loop*: VAE decode + PIL. *TFLOP/s*: the call's FLOPs",
        "(`bench/flops.py`) / its seconds; *% of peak*: the denoising steps' TFLOP/s (UNet FLOPs",
        "per step / step time) as a share of the dense bf16 peak. *peak VRAM*:",
        "`torch.cuda.max_memory_allocated` during the call (weights included); *resident before*:",
        "`torch.cuda.memory_allocated` just before it (the weights kept on the GPU);",
        "*estimated peak*: what `memory auto` predicts for the run's pipeline",
        "(`photomaker/memory_estimate.py`; one-image quality calls in the exact modes). The `app`",
        "runs carry what the app loads by default besides SDXL and PhotoMaker: the doodle's",
        "adapter, the fast LoRA, the style image's IP-Adapter and image encoder (used once in",
        "the warm-up, so its weights are on the GPU as after a first style request).",
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
    for run in data["runs"]:
        kernels = run.get("attention_backends_ms") if run["status"] == "ok" else None
        if kernels:
            lines.append(
                f"\nBare UNet call by SDPA kernel ({run['name']}): "
                + "; ".join(
                    f"{name} {_f(v, 1)} ms" if isinstance(v, float) else f"{name} failed ({v})"
                    for name, v in kernels.items()
                )
                + f". The tuned compiled runs use {run.get('sdpa_backend_for_compiled_runs')}."
            )
        if run["status"] == "ok" and run.get("compile_options"):
            options = run["compile_options"]
            lines.append(
                f"\n{run['name']} compiled with "
                + ", ".join(f"{k} {v}" for k, v in options.items())
                + (
                    f"; the tuned settings failed first ({run['compile_tuned_error']})"
                    if run.get("compile_tuned_error")
                    else ""
                )
                + (
                    f"; CUDA graphs skipped for {run['cudagraph_skips']} graph(s) so far"
                    if run.get("cudagraph_skips")
                    else "; every graph ran as CUDA graphs"
                    if run.get("cudagraph_skips") == 0
                    else ""
                )
                + "."
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
        for m, b in builds.items():
            if b.get("offload_groups"):
                split = ", ".join(f"{name} {count}" for name, count in b["offload_groups"].items())
                lines.append(f"\n{m}: group-offloading groups per model: {split}.")
    by_name = {r["name"]: r for r in data["runs"] if r["status"] == "ok"}
    lines += _ratio_lines(by_name) + _ab_lines(by_name)
    lines += ["", "## Against the targets (issue 9: H100, 1024², 50 steps, 1 image, bf16)", ""]

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
    if not data["settings"]["dry_run"]:
        lines += _targets_16_lines(by_name)
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
        f"Script time: {_f(data.get('elapsed_s'), 0)} s"
        + (
            " over "
            + str(len(data["parts"]))
            + " commands on one machine ("
            + "; ".join(f"{p['started']}: {', '.join(p['plan'])}" for p in data["parts"])
            + ")."
            if data.get("parts")
            else "."
        ),
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
    parser.add_argument(
        "--ab-rounds", type=int, default=None, help="timed rounds of ab runs (default 3; dry 1)"
    )
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=COMPILE_MODES,
        help="torch.compile mode, as the app's --compile-mode",
    )
    parser.add_argument("--compile-backend", default=None, help="default inductor (dry run: eager)")
    parser.add_argument(
        "--compile-tuning",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile runs: channels-last, inductor conv_1x1_as_mm and the SDPA kernel of "
        "--sdpa-backend (a failure falls back to a plain compile, recorded)",
    )
    parser.add_argument(
        "--sdpa-backend",
        default="auto",
        choices=["auto", "default", *SDPA_BACKENDS],
        help="SDPA kernel of the tuned compile runs; auto: the fastest in the unet run's "
        "per-kernel timings (default order when there is no unet run)",
    )
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
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="run nothing: join the runs of several results-gpu.json files of one device "
        "(e.g. two commands of one lease) into --out-dir's results-gpu.md/.json",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.size = "tiny" if args.dry_run else "full"
    explicit = args.plan is not None
    args.plan = args.plan or [RunSpec.parse(x) for x in DEFAULT_PLAN]
    if args.dry_run and not explicit:  # an AOTInductor compile takes minutes on a CPU
        args.plan = [s for s in args.plan if s.backend != "aot"]  # (tests/test_aot.py has it)
    if args.dry_run:  # few steps and images; runs that become the same are run once
        small = [
            RunSpec(s.mode, s.backend, s.steps if "fast" in s.backend else min(s.steps, 3),
                    min(s.images, 2))
            for s in args.plan
        ]  # fmt: skip
        args.plan = list(dict.fromkeys(small))
    args.ab_rounds = args.ab_rounds or (1 if args.dry_run else 3)
    args.sdpa_backend_chosen = None if args.sdpa_backend == "auto" else args.sdpa_backend
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


def merge(paths: list[Path]) -> dict:
    """One results dict from several: the first file's header, every file's runs and builds
    in order, the elapsed times added up, each part's start time and plan kept."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    names = {part["device"].get("name") for part in parts}
    if len(names) != 1:
        raise SystemExit(f"results of different devices cannot be merged: {sorted(names)}")
    data = dict(parts[0])
    data["runs"] = [run for part in parts for run in part["runs"]]
    data["builds"] = {k: v for part in parts for k, v in part.get("builds", {}).items()}
    data["elapsed_s"] = sum(part.get("elapsed_s") or 0 for part in parts)
    data["parts"] = [{"started": part["started"], "plan": part["settings"]["plan"],
                      "elapsed_s": part.get("elapsed_s")} for part in parts]  # fmt: skip
    data["settings"] = {**parts[0]["settings"],
                        "plan": [n for part in parts for n in part["settings"]["plan"]]}  # fmt: skip
    return data


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    if args.merge:
        data = merge(args.merge)
        write(data, args.out_dir)
        common.say(f"merged {len(args.merge)} files into {args.out_dir / 'results-gpu.md'}")
        return 0
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
            "compile_tuning": args.compile_tuning,
            "sdpa_backend": args.sdpa_backend,
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
        if specs[0].backend == "ab":  # builds its own pipelines
            build["note"] = "pipelines built inside the run"
        else:
            try:
                log(f"building the {group} pipeline")
                t = time.perf_counter()
                app_defaults = {} if KIND[specs[0].backend] == "app" else None
                pipe = build_pipeline(mode, args, device, dtype, app_defaults)
                build["build_s"] = time.perf_counter() - t
                if app_defaults is not None:
                    build["app_defaults"] = app_defaults
                    log(f"  with the app's defaults: {app_defaults}")
                groups = offload_group_counts(pipe)
                if groups:
                    build["offload_groups"] = groups
                    log(f"  offload groups per model: {groups}")
                log(f"  built in {build['build_s']:.1f}s; warm-up ({args.warmup_steps} steps)")
                t = time.perf_counter()
                timed_call(pipe, clock, call_kwargs(args, args.warmup_steps, 1))
                build["warmup_s"] = time.perf_counter() - t
                log(f"  warm-up {build['warmup_s']:.1f}s")
                if app_defaults is not None:  # its failure is recorded, the runs go on
                    try:
                        style_warmup(pipe, args, clock)
                        build["style_warmup"] = "ok"
                    except Exception:
                        build["style_warmup"] = _error_line(traceback.format_exc())
                        log(f"  style-image warm-up failed: {build['style_warmup']}")
            except Exception:
                build["error"] = traceback.format_exc()
                log(f"  {group} pipeline failed:\n{build['error']}")
        state: dict = {}
        for spec in specs:
            run = {"name": spec.name, **asdict(spec)}
            if "error" in build or (pipe is None and spec.backend != "ab"):
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
                    elif spec.backend == "ab":
                        run.update(run_ab(spec, args, device, dtype, clock))
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
