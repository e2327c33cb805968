"""Where a generation's time goes, stage by stage, on the CPU: ours against the reference.

Real-size text encoders (CLIP ViT-L and OpenCLIP bigG) and ID encoders (V1, V2), the real SDXL
VAE at a small resolution, and a small SDXL-shaped UNet (``bench.sdxl_configs.SMALL_UNET``,
same conditioning widths, about 1/40 of the compute; its LoRA keeps the released LoRA's
rank-to-width ratio), all random weights, fp32. The reference is the published V1
implementation (``photomakerv==0.1.0`` unpacked in ``.oracle/``, imported as in
``tests/reference.py``) with its own ID encoder class, on the same components and weights; it
runs the LoRA as loaded (unfused), ours fused. The official V2 code is not available here: its
text-encoding cost is derived from its call shape (8 passes) and the measured time per pass.

Every stage is timed by forward hooks (wall time) on the modules that do its work: the two
text encoders (text), the ID encoder's vision tower, projections, perceiver and fuse module (ID),
the UNet (per step), the VAE decoder (decode); *other* is the rest of the call (tokenizing, CLIP
preprocessing of the photo, scheduler, PIL). The variants run interleaved, ``--repeats`` times,
and the tables show medians: the machine is shared, so absolute seconds are noisy, ratios less.

    python bench/cpu_stages.py            # writes bench/results-cpu.md and .json (≈ 4 min)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from PIL import Image

from bench import common, sdxl_configs

STAGES = ("text", "id", "unet", "vae")
PROMPT = "a photo of a man img in a spacesuit, detailed"
NEGATIVE_PROMPT = "lowres, blurry, deformed"
VARIANTS = {
    "ours-v1": "ours V1",
    "reference-v1": "reference V1 (.oracle)",
    "ours-v2": "ours V2",
    "ours-v2-cached": "ours V2, repeat request (ID embeds passed back)",
}


class StageTimer:
    """Forward hooks that add each call's wall time to a stage, and count the calls."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.calls = dict.fromkeys(STAGES, 0)
        self._open: dict[int, float] = {}
        self.handles = []

    def reset(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.calls = dict.fromkeys(STAGES, 0)

    def watch(self, stage: str, *modules) -> None:
        for module in modules:
            if module is None:
                continue

            def before(mod, args, stage=stage):
                self._open[id(mod)] = time.perf_counter()

            def after(mod, args, output, stage=stage):
                self.seconds[stage] += time.perf_counter() - self._open.pop(id(mod))
                self.calls[stage] += 1

            self.handles.append(module.register_forward_pre_hook(before))
            self.handles.append(module.register_forward_hook(after))

    def watch_pipeline(self, pipe) -> None:
        self.watch("text", pipe.text_encoder, pipe.text_encoder_2)
        self.watch("unet", pipe.unet)
        self.watch("vae", pipe.vae.post_quant_conv, pipe.vae.decoder)

    def watch_id_encoder(self, encoder) -> None:
        self.watch(
            "id",
            encoder.vision_model,
            encoder.visual_projection,
            encoder.visual_projection_2,
            getattr(encoder, "qformer_perceiver", None),
            encoder.fuse_module,
        )


def load_reference():
    """The reference V1 package from .oracle/, or None (scripts/test.sh unpacks it)."""
    try:
        from tests import reference
    except ImportError:
        return None
    return reference.load_oracle()


def build(args) -> dict:
    """Ours V1 and the reference V1 on shared components; ours V2 on its own UNet (its LoRA)."""
    from accelerate import init_empty_weights

    from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline

    components = common.build_components(
        "full", "cpu", torch.float32, args.seed, unet_config=sdxl_configs.SMALL_UNET
    )
    components_v2 = dict(components)
    torch.manual_seed(args.seed + 10)
    components_v2["unet"] = common.build_unet(sdxl_configs.SMALL_UNET)
    # One V2 checkpoint; V1's encoder entry is its subset (the same tensors: no second copy).
    v2 = common.photomaker_state_dict(
        components_v2["unet"], "v2", "full", seed=args.seed, lora_rank=sdxl_configs.SMALL_LORA_RANK
    )
    v1_encoder = {
        k: v for k, v in v2["id_encoder"].items() if not k.startswith("qformer_perceiver.")
    }
    v1 = {
        "id_encoder": v1_encoder,
        "lora_weights": common.lora_state_dict(
            components["unet"], sdxl_configs.SMALL_LORA_RANK, seed=args.seed + 2
        ),
    }
    pipes = {}
    pipes["ours-v1"] = PhotoMakerStableDiffusionXLPipeline(**components)
    pipes["ours-v1"].load_photomaker_adapter(v1, pm_version="v1", trigger_word="img")
    pipes["ours-v2"] = PhotoMakerStableDiffusionXLPipeline(**components_v2)
    pipes["ours-v2"].load_photomaker_adapter(v2, pm_version="v2", trigger_word="img")
    common.ensure_lora_fused(pipes["ours-v2"])
    oracle = load_reference()
    if oracle is not None:
        ref = oracle.pipeline.PhotoMakerStableDiffusionXLPipeline(**components)
        ref.trigger_word = "img"  # the tokenizers already hold it (ours added it)
        ref.id_image_processor = pipes["ours-v1"].id_image_processor
        with init_empty_weights():
            encoder = oracle.model.PhotoMakerIDEncoder()
        encoder.load_state_dict(v1_encoder, strict=True, assign=True)
        ref.id_encoder = encoder.eval()
        pipes["reference-v1"] = ref
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def call(pipe, variant: str, args, photo, face, cached) -> float:
    kwargs = dict(
        prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, num_inference_steps=args.steps,
        start_merge_step=args.steps // 2, guidance_scale=5.0, height=args.image_size,
        width=args.image_size, generator=torch.Generator().manual_seed(args.seed), output_type="pil",
    )  # fmt: skip
    if variant == "ours-v2-cached":
        kwargs["id_image_embeds"] = cached
    else:
        kwargs["input_id_images"] = [photo]
        if variant == "ours-v2":
            kwargs["id_embeds"] = face
    start = time.perf_counter()
    pipe(**kwargs)
    return time.perf_counter() - start


def measure(args) -> dict:
    load = os.getloadavg()
    started = time.perf_counter()
    pipes = build(args)
    setup_s = time.perf_counter() - started
    common.say(f"built in {setup_s:.0f} s: {', '.join(pipes)}")
    timer = StageTimer()
    timer.watch_pipeline(pipes["ours-v1"])  # its text encoders, VAE, UNet are the reference's too
    timer.watch("unet", pipes["ours-v2"].unet)
    timer.watch_id_encoder(pipes["ours-v1"].id_encoder)
    timer.watch_id_encoder(pipes["ours-v2"].id_encoder)
    if "reference-v1" in pipes:
        timer.watch_id_encoder(pipes["reference-v1"].id_encoder)
    photo = Image.fromarray(
        np.random.default_rng(args.seed).integers(0, 256, (512, 512, 3), np.uint8)
    )
    face = torch.randn(1, 512, generator=torch.Generator().manual_seed(args.seed))
    cached = pipes["ours-v2"].encode_id_images([photo], face)
    variants = [v for v in VARIANTS if v.removesuffix("-cached") in pipes]
    samples: dict[str, list[dict]] = {v: [] for v in variants}
    for repeat in range(args.repeats + 1):  # the first round warms up and is not kept
        for variant in variants:
            pipe = pipes[variant.removesuffix("-cached")]
            if variant in ("ours-v1", "reference-v1"):  # they share the UNet: set its LoRA state
                common.ensure_lora_fused(pipes["ours-v1"], fused=variant == "ours-v1")
            timer.reset()
            total = call(pipe, variant, args, photo, face, cached)
            sample = {"total": total, **timer.seconds, "calls": dict(timer.calls)}
            sample["other"] = total - sum(timer.seconds.values())
            if repeat:
                samples[variant].append(sample)
            common.say(
                f"{'warm-up' if not repeat else f'round {repeat}'} {variant:15s} {total:6.2f} s: "
                + ", ".join(f"{k} {sample[k]:.2f}" for k in (*STAGES, "other"))
                + f"; text passes {timer.calls['text']}, UNet calls {timer.calls['unet']}"
            )
    medians = {}
    for variant, runs in samples.items():
        m = {k: statistics.median(r[k] for r in runs) for k in ("total", *STAGES, "other")}
        m["min"] = {k: min(r[k] for r in runs) for k in ("total", *STAGES, "other")}
        m["calls"] = runs[0]["calls"]
        m["text_per_pass"] = m["text"] / max(m["calls"]["text"], 1)
        m["unet_per_step"] = m["unet"] / max(m["calls"]["unet"], 1)
        medians[variant] = m
    unet_flops = {}
    try:  # what the FLOP counts predict for the small UNet's step, fused against unfused
        from bench import flops

        latent = args.image_size // 8
        for lora in ("fused", "unfused"):
            unet_flops[lora] = flops.unet_call(2, latent, lora, "small").flops
    except Exception as error:
        unet_flops["error"] = f"{type(error).__name__}: {error}"
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "small_unet_step_flops": unet_flops,
        "settings": {"steps": args.steps, "image_size": args.image_size, "repeats": args.repeats,
                     "photos": 1, "images": 1, "threads": torch.get_num_threads(),
                     "small_unet_parameters": sum(p.numel() for p in pipes["ours-v1"].unet.parameters())},
        "versions": common.versions(),
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
        "setup_s": setup_s,
        "seconds": time.perf_counter() - started,
        "samples": samples,
        "medians": medians,
    }  # fmt: skip


def markdown(data: dict) -> str:
    med, s = data["medians"], data["settings"]
    cols = [v for v in VARIANTS if v in med]
    ref = med.get("reference-v1")
    ours = med["ours-v1"]
    lines = [
        "# Stage timings on the CPU: ours against the reference",
        "",
        f"Written by `python bench/cpu_stages.py`, {data['started']}: real-size text encoders and ID",
        "encoders, the SDXL VAE and a small SDXL-shaped UNet"
        f" ({s['small_unet_parameters'] / 1e6:.0f}M parameters, LoRA rank kept in proportion), random",
        f"weights, fp32, {s['threads']} CPU thread(s); {s['steps']} steps at {s['image_size']}², CFG,",
        "a negative prompt, 1 ID photo, 1 image. Medians of"
        f" {s['repeats']} interleaved rounds after a warm-up round; load average"
        f" {data['load_average_before'][0]:.1f} before, {data['load_average_after'][0]:.1f} after (a"
        " shared machine: read ratios, not seconds).",
        "",
        "| Stage | " + " | ".join(VARIANTS[c] for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(med[c]) for c in cols) + " |")

    row("text encoding, s (passes)", lambda m: f"{m['text']:.2f} ({m['calls']['text']})")
    row("text, s per pass", lambda m: f"{m['text_per_pass']:.3f}")
    row("ID encoding, s", lambda m: f"{m['id']:.2f}")
    row("UNet, s per step (calls)", lambda m: f"{m['unet_per_step']:.3f} ({m['calls']['unet']})")
    row("VAE decode, s", lambda m: f"{m['vae']:.2f}")
    row("other, s", lambda m: f"{m['other']:.2f}")
    row("**total, s**", lambda m: f"**{m['total']:.2f}**")
    lines.append("")
    if ref:
        per_pass = ours["text_per_pass"]
        lo, rlo = ours["min"], ref["min"]
        f = data.get("small_unet_step_flops", {})
        predicted = (
            f" The FLOP counts predict {f['fused'] / f['unfused']:.3f} for this UNet"
            f" ({f['fused'] / 1e9:.1f} against {f['unfused'] / 1e9:.1f} GFLOP per step); at full size"
            " the unfused LoRA adds 2.4% to each step (results-flops.md)."
            if "fused" in f
            else ""
        )
        lines += [
            "## Ours against the reference",
            "",
            "Ratios ours / reference, of the medians and of the fastest round (contention only adds",
            "time, so the minimum is the steadier estimate on a shared machine). The text encoders",
            "and the VAE run the same code with the same weights in both, so their ratios show the",
            "noise.",
            "",
            "| Stage | median ratio | fastest-round ratio |",
            "|---|---:|---:|",
            f"| text encoding (same code) | {ours['text'] / ref['text']:.2f} | {lo['text'] / rlo['text']:.2f} |",
            f"| ID encoding | {ours['id'] / ref['id']:.2f} | {lo['id'] / rlo['id']:.2f} |",
            f"| UNet, all steps (ours fused, the reference unfused) | {ours['unet'] / ref['unet']:.2f} "
            f"| {lo['unet'] / rlo['unet']:.2f} |",
            f"| VAE decode (same code) | {ours['vae'] / ref['vae']:.2f} | {lo['vae'] / rlo['vae']:.2f} |",
            f"| whole call | {ours['total'] / ref['total']:.2f} | {lo['total'] / rlo['total']:.2f} |",
            "",
            f"- Text encoding: ours {ours['calls']['text']} passes, the reference V1"
            f" {ref['calls']['text']}: the same call shape. The official V2 code encodes the negative"
            f" prompt twice: 8 passes, i.e. about {8 * per_pass:.2f} s at the measured"
            f" {per_pass:.3f} s per pass, against ours {ours['calls']['text']} ({ours['text']:.2f} s).",
            f"- UNet step: ours (LoRA fused) {ours['unet_per_step']:.3f} s, the reference (LoRA"
            f" unfused) {ref['unet_per_step']:.3f} s (medians).{predicted}",
        ]
    else:
        lines.append("The reference (`.oracle/`) is not unpacked here: `scripts/test.sh` does it.")
    if "ours-v2" in med and "ours-v2-cached" in med:
        v2, c = med["ours-v2"], med["ours-v2-cached"]
        lines += [
            f"- V2, a repeat request with the same photo (ID embeds passed back): the ID stage takes"
            f" {c['id']:.3f} s (the fuse module only) instead of {v2['id']:.2f} s.",
        ]
    lines += ["", f"Setup {data['setup_s']:.0f} s; whole script {data['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=128, help="image side (VAE decode)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: a preempted thread cannot stall a parallel op on a busy machine)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = measure(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results-cpu.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out_dir / "results-cpu.md").write_text(markdown(data))
    common.say(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
