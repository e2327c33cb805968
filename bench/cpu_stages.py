"""Where a generation's time goes, stage by stage, on the CPU: ours against the reference.

Real-size text encoders (CLIP ViT-L and OpenCLIP bigG) and ID encoders (V1, V2), the real SDXL
VAE at a small resolution, and a small SDXL-shaped UNet (``bench.sdxl_configs.SMALL_UNET``,
same conditioning widths, about 1/40 of the compute; its LoRA keeps the released LoRA's
rank-to-width ratio), all random weights, fp32. The reference is the published V1
implementation (``photomakerv==0.1.0`` unpacked in ``.oracle/``, imported as in
``tests/reference.py``) with its own ID encoder class, on the same components and weights; it
runs the LoRA as loaded (unfused), ours fused. The official V2 code is not available here: its
text-encoding cost is derived from its call shape (``bench/flops.py``) and the measured
time per pass.

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


def build(args) -> dict:
    """Ours V1 and the reference V1 on shared components; ours V2 on its own UNet (its LoRA)."""

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
    oracle = common.load_reference()
    if oracle is not None:
        pipes["reference-v1"] = common.reference_pipeline(
            oracle, components, pipes["ours-v1"], v1_encoder, "cpu", torch.float32
        )
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


def paired(a, b, pairs: int) -> dict:
    """Time ``a()`` and ``b()`` back to back ``pairs`` times, alternating which goes first, after
    one untimed call of each; the median of the per-pair ratios a/b (and its quartiles) is
    robust to the load drifting on a shared machine."""
    a(), b()
    times = {"a": [], "b": []}
    for i in range(pairs):
        for name in ("a", "b") if i % 2 == 0 else ("b", "a"):
            start = time.perf_counter()
            (a if name == "a" else b)()
            times[name].append(time.perf_counter() - start)
    ratios = sorted(x / y for x, y in zip(times["a"], times["b"], strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"pairs": pairs, "a_median_s": statistics.median(times["a"]),
            "b_median_s": statistics.median(times["b"]), "ratio_median": statistics.median(ratios),
            "ratio_q1": q1, "ratio_q3": q3}  # fmt: skip


@torch.no_grad()
def measure_pairs(pipes: dict, args, photo) -> dict:
    """Stage against stage, paired: the UNet step with the LoRA fused (ours) and unfused (the
    reference), the ID encoding of ours and of the reference's encoder, and the VAE decode
    against itself (the same call twice: the noise floor of this method)."""
    import copy

    from bench import flops

    results = {}
    ours = pipes["ours-v1"]
    common.ensure_lora_fused(ours, fused=False)
    unfused = copy.deepcopy(ours.unet)
    common.ensure_lora_fused(ours, fused=True)
    inputs = flops.unet_inputs(sdxl_configs.SMALL_UNET, 2, args.image_size // 8, "cpu")
    generator = torch.Generator().manual_seed(args.seed)
    for key in ("sample", "encoder_hidden_states"):
        inputs[key].copy_(torch.randn(inputs[key].shape, generator=generator))
    results["unet_step_fused_vs_unfused"] = paired(
        lambda: ours.unet(**inputs), lambda: unfused(**inputs), args.pairs
    )
    step = lambda: ours.unet(**inputs)  # noqa: E731
    results["unet_step_vs_itself"] = paired(step, step, args.pairs)

    if "reference-v1" in pipes:
        pixels = ours.id_image_processor([photo], return_tensors="pt").pixel_values[None]
        prompt = torch.randn(1, 77, 2048, generator=generator)
        mask = torch.zeros(1, 77, dtype=torch.bool)
        mask[0, 5] = True
        encoder, reference = ours.id_encoder, pipes["reference-v1"].id_encoder

        def ours_id():
            return encoder.fuse_module(prompt, encoder.encode_id_images(pixels), mask)

        results["id_encoding_ours_vs_reference"] = paired(
            ours_id, lambda: reference(pixels, prompt.clone(), mask), max(args.pairs // 3, 3)
        )
    latents = torch.randn(1, 4, args.image_size // 8, args.image_size // 8, generator=generator)
    decode = lambda: ours.vae.decode(latents)  # noqa: E731
    results["vae_decode_vs_itself"] = paired(decode, decode, max(args.pairs // 3, 3))
    return results


def reference_v2_text_passes() -> int:
    """Text-encoder passes of the official V2 call with a negative prompt, counting each of
    the two encoders' passes as the stage timer does (its call shape, bench/flops.py: the V2
    code cannot run here)."""
    from bench import flops

    return 2 * flops.call_shape("reference", 1, 1, 1).text_encoder_passes


def full_size_lora_cost(path: Path | None = None) -> dict | None:
    """What the unfused LoRA adds to one full-size UNet step, from ``results-flops.json``
    (``bench/flops.py``): FLOPs share and extra compute ops; ``None`` when it is absent."""
    path = path or Path(__file__).resolve().parent / "results-flops.json"
    try:
        calls = json.loads(path.read_text())["unet_call"]
        fused, unfused = calls["ours (LoRA fused)"], calls["reference (LoRA unfused)"]
    except (OSError, KeyError, ValueError):
        return None
    return {
        "source": path.name,
        "flops_share": unfused["flops"] / fused["flops"] - 1,
        "extra_compute_ops": unfused["compute_ops"] - fused["compute_ops"],
    }


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
    common.say("paired stage timings")
    pairs = measure_pairs(pipes, args, photo)
    for name, result in pairs.items():
        common.say(f"  {name}: ratio {result['ratio_median']:.3f} "
                   f"[{result['ratio_q1']:.3f}, {result['ratio_q3']:.3f}]")  # fmt: skip
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
        "reference_v2_text_passes": reference_v2_text_passes(),
        "full_size_lora_cost": full_size_lora_cost(),
        "pairs": pairs,
        "settings": {"steps": args.steps, "image_size": args.image_size, "repeats": args.repeats,
                     "pairs": args.pairs,
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
        f" ({s['small_unet_parameters'] / 1e6:.0f}M parameters, its LoRA's rank kept in proportion),",
        f"random weights, fp32, {s['threads']} CPU thread(s). Load average"
        f" {data['load_average_before'][0]:.1f} before, {data['load_average_after'][0]:.1f} after: a",
        "shared machine, so seconds are noisy; the paired ratios below are the steadier figures.",
        "",
        "## Where one call's time goes",
        "",
        f"Whole pipeline calls, {s['steps']} steps at {s['image_size']}², CFG, a negative prompt, 1 ID",
        f"photo, 1 image; medians of {s['repeats']} interleaved rounds after a warm-up round. Stages are",
        "timed by forward hooks: text = both text encoders; ID = the ID encoder's vision tower,",
        "projections, perceiver and fuse module; UNet per step; VAE = decoder; other = the rest",
        "(tokenizing, CLIP preprocessing, scheduler, PIL).",
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
    samples = data.get("samples", {})
    lines.append(
        "| total, min – max over rounds | "
        + " | ".join(
            f"{min(r['total'] for r in samples[c]):.2f} – {max(r['total'] for r in samples[c]):.2f}"
            if samples.get(c)
            else "-"
            for c in cols
        )
        + " |"
    )

    pairs = data.get("pairs", {})
    f = data.get("small_unet_step_flops", {})
    predicted = {
        "unet_step_fused_vs_unfused": f"{f['fused'] / f['unfused']:.3f} by FLOPs"
        if "fused" in f
        else "-",
        "id_encoding_ours_vs_reference": "1 (the same operations)",
        "vae_decode_vs_itself": "1 (the same call)",
        "unet_step_vs_itself": "1 (the same call)",
    }
    labels = {
        "unet_step_fused_vs_unfused": ("UNet step", "ours, LoRA fused", "reference, LoRA unfused"),
        "id_encoding_ours_vs_reference": ("ID encoding + fuse", "ours", "reference V1 encoder"),
        "vae_decode_vs_itself": ("VAE decode (noise floor)", "the call", "the same call again"),
        "unet_step_vs_itself": ("UNet step (noise floor)", "the call", "the same call again"),
    }
    if pairs:
        lines += [
            "",
            "## Stage against stage, paired",
            "",
            "Each pair runs A and B back to back (alternating which goes first, after one untimed",
            "call of each); the ratio is the median of the per-pair ratios A / B, with its quartiles.",
            "A stage against itself (the noise floors) shows what this method resolves on this",
            "machine: the UNet step for the short pairs, the VAE decode for the long ones.",
            "",
            "| Stage | A | B | pairs | A, s | B, s | A / B | quartiles | expected |",
            "|---|---|---|---:|---:|---:|---:|---|---|",
        ]
        for key, r in pairs.items():
            stage, a, b = labels[key]
            lines.append(
                f"| {stage} | {a} | {b} | {r['pairs']} | {r['a_median_s']:.3f} | {r['b_median_s']:.3f} "
                f"| **{r['ratio_median']:.3f}** | {r['ratio_q1']:.3f}–{r['ratio_q3']:.3f} | {predicted[key]} |"
            )
    lines += ["", "## Ours against the reference", ""]
    if ref:
        per_pass = ours["text_per_pass"]
        ours_passes = ours["calls"]["text"]
        v2_passes = data.get("reference_v2_text_passes")
        lines.append(
            f"- Text encoding: ours {ours_passes} passes per call, the reference V1"
            f" {ref['calls']['text']}"
            + (": the same call shape" if ours_passes == ref["calls"]["text"] else "")
            + " (a pass takes the same time in both: it is the same encoder)."
        )
        if v2_passes:
            saved = 1 - ours_passes / v2_passes
            lines[-1] += (
                f" The official V2 call shape has {v2_passes} passes (bench/flops.py): about"
                f" {v2_passes * per_pass:.2f} s at the measured {per_pass:.3f} s per pass, against"
                f" ours {ours_passes} ({ours_passes * per_pass:.2f} s), i.e. "
                + (f"{saved:.0%} less" if saved > 0 else f"{-saved:.0%} more")
                + " text encoding."
            )
        if "unet_step_fused_vs_unfused" in pairs:
            r = pairs["unet_step_fused_vs_unfused"]
            cost = data.get("full_size_lora_cost")
            lines.append(
                f"- UNet step: ours (LoRA fused) / the reference (LoRA unfused) ="
                f" {r['ratio_median']:.3f} on this UNet (paired, quartiles"
                f" {r['ratio_q1']:.3f}–{r['ratio_q3']:.3f}),"
                f" {predicted['unet_step_fused_vs_unfused']}: the unfused LoRA also costs its extra"
                " small operations (two matmuls, a scaling and an add per adapted projection),"
                " which weigh more than their FLOPs on a CPU and a small UNet."
                + (
                    f" At full size the unfused LoRA adds {cost['flops_share']:.1%} of the UNet's"
                    f" FLOPs and {cost['extra_compute_ops']:,} compute ops to every step"
                    f" ({cost['source']})."
                    if cost
                    else ""
                )
            )
        if "id_encoding_ours_vs_reference" in pairs:
            r = pairs["id_encoding_ours_vs_reference"]
            lines.append(
                f"- ID encoding: ours / the reference = {r['ratio_median']:.3f} (paired): the same"
                " operations; what ours saves is the repeat request below."
            )
    else:
        lines.append(
            "- The reference (`.oracle/`) is not unpacked here: `scripts/test.sh` does it."
        )
    if "ours-v2" in med and "ours-v2-cached" in med:
        v2, c = med["ours-v2"], med["ours-v2-cached"]
        lines.append(
            "- V2, a repeat request with the same photo (ID embeds passed back): the ID stage takes"
            f" {c['id']:.3f} s (the fuse module only) instead of {v2['id']:.2f} s; the reference"
            " encodes the photos on every call."
        )
    lines += ["", f"Setup {data['setup_s']:.0f} s; whole script {data['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=128, help="image side (VAE decode)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of whole calls")
    parser.add_argument(
        "--pairs", type=int, default=30, help="paired UNet steps (ID, VAE: a third)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: a preempted thread cannot stall a parallel op on a busy machine)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only rewrite the markdown from a results JSON (adds the derived figures it lacks)",
    )
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        data.setdefault("reference_v2_text_passes", reference_v2_text_passes())
        data.setdefault("full_size_lora_cost", full_size_lora_cost())
        (args.out_dir / "results-cpu.md").write_text(markdown(data))
        return 0
    torch.set_num_threads(args.threads)
    data = measure(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results-cpu.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out_dir / "results-cpu.md").write_text(markdown(data))
    common.say(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
