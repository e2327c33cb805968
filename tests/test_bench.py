"""The benchmarks' code (not their timings): configs, FLOP counting and composition, the GPU
script's plan parsing, result writing and dry run, and the plot."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench import common, flops, gpu, plot, sdxl_configs

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "tests" / "data"


def meta_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_configs_build_at_the_published_sizes():
    meta = torch.device("meta")
    built = {
        "unet": common.build_unet(sdxl_configs.SDXL_UNET, meta),
        "text_encoder": common.build_text_encoder(sdxl_configs.SDXL_TEXT_ENCODER, False, meta),
        "text_encoder_2": common.build_text_encoder(sdxl_configs.SDXL_TEXT_ENCODER_2, True, meta),
        "vae": common.build_vae(sdxl_configs.SDXL_VAE, meta),
    }
    assert {k: meta_parameters(m) for k, m in built.items()} == sdxl_configs.SDXL_PARAMETERS
    for version in ("v1", "v2"):
        encoder = common.build_id_encoder(version, "full", meta)
        assert (
            meta_parameters(encoder) == sdxl_configs.PHOTOMAKER_PARAMETERS[f"id_encoder_{version}"]
        )
    lora = common.lora_state_dict(built["unet"], sdxl_configs.PHOTOMAKER_LORA_RANK, device=meta)
    assert len(lora) == 1120
    assert sum(t.numel() for t in lora.values()) == sdxl_configs.PHOTOMAKER_PARAMETERS["lora"]
    manifest = MANIFESTS / "photomaker.lora_weights.keys.json"  # the released layout
    expected = {k: v["shape"] for k, v in json.loads(manifest.read_text())["keys"].items()}
    assert {k: list(t.shape) for k, t in lora.items()} == expected


def test_call_shapes():
    shape = flops.call_shape
    # passes per text encoder: ours 3 (ID prompt, text-only prompt, negative), reference 4
    # (it encodes the negative prompt twice), plain SDXL 2; without a negative prompt SDXL
    # uses zeros, so one pass fewer each (two fewer for the reference).
    assert [shape(v, 50, 1, 1).text_passes for v in ("ours", "reference", "sdxl")] == [6, 8, 4]
    assert [
        shape(v, 50, 1, 1, negative=False).text_passes for v in ("ours", "reference", "sdxl")
    ] == [4, 4, 2]
    ours, cached, ref = (
        shape("ours", 30, 4, 2),
        shape("ours-cached", 30, 4, 2),
        shape("reference", 30, 4, 2),
    )
    assert (ours.unet_calls, ours.unet_batch, ours.unet_lora, ours.vae_images) == (
        30,
        8,
        "fused",
        4,
    )
    assert (ours.id_photos_encoded, cached.id_photos_encoded, ref.id_photos_encoded) == (2, 0, 2)
    assert ref.unet_lora == "unfused" and shape("sdxl", 30, 4, 2).unet_lora is None
    with pytest.raises(ValueError):
        shape("nope", 1, 1, 1)


def test_flops_on_tiny_models():
    plain, fused, unfused = (
        flops.unet_call(2, None, lora, "tiny") for lora in (None, "fused", "unfused")
    )
    assert plain.flops > 0 and plain.flops == fused.flops and plain.compute_ops == fused.compute_ops
    lora_layers = len(common.attention_projections(flops._meta_unet(None, "tiny")))
    assert unfused.compute_ops == plain.compute_ops + 2 * lora_layers  # down and up, per layer
    assert unfused.flops > plain.flops
    assert flops.unet_call(4, None, None, "tiny").flops == 2 * plain.flops  # linear in batch

    ours = flops.generation_flops("ours", 3, 2, 1, size="tiny")
    assert ours["total"] == pytest.approx(sum(v for k, v in ours.items() if k != "total"))
    assert ours["unet"] == 3 * flops.unet_call(4, None, "fused", "tiny").flops
    assert ours["vae"] == 2 * flops.vae_decode_call(None, "tiny").flops
    per_pass = flops.text_encoder_call(1, "tiny").flops + flops.text_encoder_call(2, "tiny").flops
    assert ours["text"] == 3 * per_pass
    cached = flops.generation_flops("ours-cached", 3, 2, 1, size="tiny")
    assert cached["id"] == flops.fuse_call("v2", 1, "tiny").flops  # no ID encoder: the fuse only
    reference = flops.generation_flops("reference", 3, 2, 1, size="tiny")
    assert reference["text"] == 4 * per_pass and reference["unet"] > ours["unet"]
    assert flops.generation_flops("sdxl", 3, 2, 1, size="tiny")["id"] == 0


@pytest.mark.slow
def test_full_size_flops_match_the_reference_figures():
    unet = flops.unet_call(2)  # 1024², CFG
    assert unet.flops / 1e12 == pytest.approx(13.5, abs=0.05)
    assert flops.unet_call(2, lora="fused").flops == unet.flops
    assert flops.vae_decode_call().flops / 1e12 == pytest.approx(10.5, abs=0.05)
    assert flops.generation_flops("ours")["total"] / 1e12 == pytest.approx(688, abs=1.5)


def test_run_specs_and_plan():
    spec = gpu.RunSpec.parse("full/eager/50x4")
    assert (spec.mode, spec.backend, spec.steps, spec.images, spec.name) == (
        "full",
        "eager",
        50,
        4,
        "full/eager/50x4",
    )
    assert gpu.RunSpec.parse("model-offload/unet/20").name == "model-offload/unet/20"
    for bad in ("full/eager/50", "gpu/eager/50x1", "full/turbo/50x1", "full/eager/0x1", "full"):
        with pytest.raises(Exception, match="MODE|mode"):
            gpu.RunSpec.parse(bad)
    specs = [gpu.RunSpec.parse(s) for s in (
        "sequential-offload/eager/5x1", "full/compile/50x1", "model-offload/eager/50x1",
        "full/eager/50x1", "full/unet/20")]  # fmt: skip
    specs += [gpu.RunSpec.parse(s) for s in ("full/fast-fused/8x1", "full/compile-fast-fused/8x1")]
    groups = [(g, [s.name for s in runs]) for g, runs in gpu.group_plan(specs)]
    assert groups == [  # fast runs last in their group (attaching the fast LoRA bakes weights)
        ("full", ["full/unet/20", "full/eager/50x1", "full/fast-fused/8x1"]),
        ("model-offload", ["model-offload/eager/50x1"]),
        ("full (compiled)", ["full/compile/50x1", "full/compile-fast-fused/8x1"]),
        ("sequential-offload", ["sequential-offload/eager/5x1"]),
    ]

    args = gpu.parse_args([])
    assert [s.name for s in args.plan] == list(gpu.DEFAULT_PLAN)
    assert (args.size, args.device, args.dtype, args.compile_backend) == (
        "full",
        "cuda",
        "bfloat16",
        "inductor",
    )
    assert args.out_dir == ROOT / "bench"
    dry = gpu.parse_args(["--dry-run"])
    assert (dry.size, dry.device, dry.dtype, dry.compile_backend) == (
        "tiny",
        "cpu",
        "float32",
        "eager",
    )
    # Fast runs keep the mode's steps; the AOT run (minutes of CPU compile) is left out.
    assert all(s.steps <= 3 or "fast" in s.backend for s in dry.plan)
    assert all(s.images <= 2 for s in dry.plan) and all(s.backend != "aot" for s in dry.plan)
    assert len({s.name for s in dry.plan}) == len(dry.plan)
    twice = gpu.parse_args(["--dry-run", "--plan", "full/eager/50x1,full/eager/30x1"]).plan
    assert [s.name for s in twice] == ["full/eager/3x1"]  # both became 3x1: run once
    custom = gpu.parse_args(
        ["--plan", "full/eager/30x1, model-offload/eager/50x1", "--out-dir", "/x"]
    )
    assert [s.name for s in custom.plan] == ["full/eager/30x1", "model-offload/eager/50x1"]
    assert custom.out_dir == Path("/x")


def fake_results() -> dict:
    ok = {"status": "ok", "seconds": 3.2, "seconds_per_image": 3.2, "seconds_per_image_at_50_steps": 3.2,
          "extrapolated_to_50_steps": False, "step_s": 0.055, "before_loop_s": 0.3, "after_loop_s": 0.15,
          "peak_allocated_gb": 10.2, "allocated_before_gb": 8.21, "tflops_per_s": 214.0, "step_fraction_of_peak": 0.25}  # fmt: skip
    return {
        "started": "2026-01-01T00:00:00+00:00",
        "device": {
            "device": "cuda",
            "name": "NVIDIA H100 80GB HBM3",
            "capability": "9.0",
            "memory_gb": 85.0,
            "peak_bf16_tflops": 989.4,
        },  # fmt: skip
        "versions": {"torch": "2.11.0", "diffusers": "0.42.1"},
        "settings": {
            "dry_run": False,
            "size": "full",
            "dtype": "bfloat16",
            "image_size": 1024,
            "photos": 1,
        },
        "runs": [
            {
                "name": "full/unet/20",
                "mode": "full",
                "backend": "unet",
                "steps": 20,
                "images": 1,
                "status": "ok",
                "unet_call_s": 0.05,
                "step_s": 0.05,
                "peak_allocated_gb": 9.0,
                "tflops_per_s": 270.0,
                "fraction_of_peak": 0.27,
            },  # fmt: skip
            {
                "name": "full/eager/50x1",
                "mode": "full",
                "backend": "eager",
                "steps": 50,
                "images": 1,
                **ok,
            },
            {
                "name": "full/compile/50x1",
                "mode": "full",
                "backend": "compile",
                "steps": 50,
                "images": 1,
                **ok,
                "seconds_per_image": 2.1,
                "compile_and_first_call_s": 70.0,
            },  # fmt: skip
            {
                "name": "model-offload/eager/50x1",
                "mode": "model-offload",
                "backend": "eager",
                "steps": 50,
                "images": 1,
                "status": "error",
                "error": "Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory",
            },
            {
                "name": "sequential-offload/eager/5x1",
                "mode": "sequential-offload",
                "backend": "eager",
                "steps": 5,
                "images": 1,
                **ok,
                "seconds_per_image_at_50_steps": 60.0,
                "extrapolated_to_50_steps": True,
            },
        ],  # fmt: skip
        "builds": {"full": {"build_s": 9.0, "warmup_s": 3.0}},
        "elapsed_s": 300.0,
    }


def test_the_next_lease_plans_in_bench_readme_parse():
    """A typo in the plan would cost a lease: every ``--plan`` in bench/README.md parses."""
    import re

    text = (ROOT / "bench" / "README.md").read_text(encoding="utf-8")
    plans = re.findall(r"--plan\s+([\w/,.-]+)", " ".join(text.split()))
    assert len(plans) >= 3
    for plan in plans:
        for run in plan.strip(",.").split(","):
            if run:
                gpu.RunSpec.parse(run)


def test_results_are_written_and_plotted(tmp_path):
    data = fake_results()
    gpu.write(data, tmp_path)
    assert json.loads((tmp_path / "results-gpu.json").read_text()) == data
    md = (tmp_path / "results-gpu.md").read_text()
    assert "NVIDIA H100 80GB HBM3" in md and "989.4" in md
    assert (
        "| full/eager/50x1 | ok | 3.20 | 3.20 | 55.0 | 0.30 | 0.15 | 10.20 | - | 8.21 | 214 | 25 |"
        in md  # no estimate recorded: "-"
    )
    assert "error: torch.OutOfMemoryError: CUDA out of memory" in md
    assert "60.00 (extrapolated)" in md
    assert "| eager, s / image | 3.20 s | ≤ 3.0 s | not met |" in md
    assert "| compiled, s / image | 2.10 s | ≤ 2.2 s | met |" in md
    assert "Compile + first call (full/compile/50x1): 70.0 s." in md
    png = plot.plot(plot.load([tmp_path / "results-gpu.json"]), tmp_path / "gpu.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_tells_two_leases_of_one_device_and_their_compile_mode_apart(tmp_path):
    first, second = fake_results(), fake_results()
    second["started"] = "2026-01-02T17:40:00+00:00"
    for run in second["runs"]:
        if run["name"] == "full/compile/50x1":
            run["compile_options"] = {"backend": "inductor", "mode": "reduce-overhead"}
            run["cudagraph_skips"] = 0
    for name, data in (("a.json", first), ("b.json", second)):
        (tmp_path / name).write_text(json.dumps(data))
    labels = [r["label"] for r in plot.load([tmp_path / "a.json", tmp_path / "b.json"])]
    assert (
        labels[0] == f"NVIDIA H100 80GB HBM3, {first['started'][:10]} {first['started'][11:16]} UTC"
    )
    assert labels[1] == "NVIDIA H100 80GB HBM3, 2026-01-02 17:40 UTC; compiled: reduce-overhead"
    assert plot.load([tmp_path / "a.json"])[0]["label"] == "NVIDIA H100 80GB HBM3"
    md = gpu.markdown(second)
    assert "mode reduce-overhead; every graph ran as CUDA graphs." in md
    second["runs"][2]["cudagraph_skips"] = 2
    assert "CUDA graphs skipped for 2 graph(s) so far." in gpu.markdown(second)


def test_results_of_two_commands_merge_into_one_file(tmp_path):
    """A lease's second command (the AOT run) joins the first one's results: runs in order,
    times added, each command's plan kept; other devices' results are refused."""
    first, second = fake_results(), fake_results()
    second["started"] = "2026-01-01T00:10:00+00:00"
    second["settings"] = {**second["settings"], "plan": ["full/aot/50x1"]}
    first["settings"] = {**first["settings"], "plan": [r["name"] for r in first["runs"]]}
    second["runs"] = [{**first["runs"][1], "name": "full/aot/50x1", "backend": "aot"}]
    second["builds"], second["elapsed_s"] = {"full (AOT)": {"build_s": 8.0}}, 200.0
    paths = []
    for i, part in enumerate((first, second)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(part))
    assert gpu.main(["--merge", *map(str, paths), "--out-dir", str(tmp_path / "out")]) == 0
    merged = json.loads((tmp_path / "out" / "results-gpu.json").read_text())
    assert [r["name"] for r in merged["runs"]] == [r["name"] for r in first["runs"]] + [
        "full/aot/50x1"
    ]
    assert merged["elapsed_s"] == 500.0 and set(merged["builds"]) == {"full", "full (AOT)"}
    md = (tmp_path / "out" / "results-gpu.md").read_text()
    assert "| full/aot/50x1 | ok | 3.20 |" in md
    assert "Script time: 500 s over 2 commands on one machine" in md
    other = fake_results()
    other["device"] = {**other["device"], "name": "NVIDIA H200"}
    paths.append(tmp_path / "other.json")
    paths[-1].write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="different devices"):
        gpu.main(["--merge", str(paths[0]), str(paths[-1]), "--out-dir", str(tmp_path / "x")])


def test_attention_backends_and_compile_settings_are_reported(tmp_path):
    """The bare-UNet run's per-kernel timings name the kernel the tuned compile used; a tuned
    compile that failed says so beside the settings it fell back to."""
    data = fake_results()
    data["runs"][0]["attention_backends_ms"] = {
        "FLASH_ATTENTION": 61.0, "CUDNN_ATTENTION": 55.5, "EFFICIENT_ATTENTION": "RuntimeError: no"
    }  # fmt: skip
    data["runs"][0]["sdpa_backend_for_compiled_runs"] = "CUDNN_ATTENTION"
    data["runs"][2]["compile_options"] = {"backend": "inductor", "channels_last": False}
    data["runs"][2]["compile_tuned_error"] = "RuntimeError: cudnn"
    gpu.write(data, tmp_path)
    md = (tmp_path / "results-gpu.md").read_text()
    assert (
        "Bare UNet call by SDPA kernel (full/unet/20): FLASH_ATTENTION 61.0 ms; CUDNN_ATTENTION "
        "55.5 ms; EFFICIENT_ATTENTION failed (RuntimeError: no). The tuned compiled runs use "
        "CUDNN_ATTENTION." in md
    )
    assert (
        "full/compile/50x1 compiled with backend inductor, channels_last False; the tuned "
        "settings failed first (RuntimeError: cudnn)." in md
    )
    args = gpu.parse_args(["--dry-run", "--sdpa-backend", "FLASH_ATTENTION"])
    assert args.sdpa_backend_chosen == "FLASH_ATTENTION" and args.compile_tuning
    assert gpu.parse_args(["--dry-run", "--no-compile-tuning"]).sdpa_backend_chosen is None


def test_peak_is_found_from_the_device_name():
    names = {"NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H100 PCIe": 756.0, "NVIDIA H200": 989.4,
             "NVIDIA A100-SXM4-80GB": 312.0}  # fmt: skip
    for name, peak in names.items():
        assert next(p for key, p in gpu.DENSE_BF16_PEAK_TFLOPS if key in name) == peak


# What the GPU machine lacks: bench/gpu.py must run without any of it.
BLOCKER = textwrap.dedent(
    """
    import importlib.util, runpy, sys
    BLOCKED = ("gradio", "gradio_client", "insightface", "open_clip", "onnx", "onnxruntime", "spaces")
    find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, package=None: (
        None if name.split(".")[0] in BLOCKED else find_spec(name, package))
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
    sys.meta_path.insert(0, Block())
    sys.argv = ["bench/gpu.py", *sys.argv[1:]]
    runpy.run_path("bench/gpu.py", run_name="__main__")
    """
)


#: One dry run serves both tests below (a run of the script is a process that imports torch,
#: diffusers and builds the tiny models): the first test's runs and issue 16's, in the order
#: the script runs them (its groups: full — bare UNet first, fast last — model-offload,
#: encoder-offload, fp8, group-offload, then the A/B run).
DRY_RUN_PLAN = (
    "full/unet/1,full/eager/2x1,full/eager/2x2,full/fast/8x1,full/fast-fused/8x1,"
    "model-offload/eager/2x1,encoder-offload/eager/2x1,"
    "fp8/eager/2x1,group-offload/eager/2x1,full/ab/2x1,encoder-offload/app/2x1"
)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, dict]:
    out = tmp_path_factory.mktemp("dry-run")
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER, "--dry-run", "--plan", DRY_RUN_PLAN, "--warmup-steps", "1",
         "--out-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "results-gpu.json").read_text())
    assert all(r["status"] == "ok" for r in data["runs"]), [r.get("error") for r in data["runs"]]
    return proc, out, data


@pytest.mark.slow
def test_gpu_script_dry_run_without_gradio_insightface_open_clip(dry_run):
    proc, out, data = dry_run
    assert [r["name"] for r in data["runs"]] == DRY_RUN_PLAN.split(",")
    assert all(r["status"] == "ok" for r in data["runs"]), [r.get("error") for r in data["runs"]]
    by_name = {r["name"]: r for r in data["runs"]}
    two = by_name["full/eager/2x2"]
    assert two["steps_measured"] == 2 and two["seconds_per_image"] == pytest.approx(
        two["seconds"] / 2
    )
    assert two["tflop"] > 0 and "dry-run mode" in (out / "results-gpu.md").read_text()
    split = data["builds"]["group-offload"]["offload_groups"]  # the split the run used
    assert split["unet"] > 10 and split["text_encoder_2"] > 2
    assert (
        "group-offload: group-offloading groups per model: " in (out / "results-gpu.md").read_text()
    )
    assert "blocked" not in proc.stdout + proc.stderr
    plot.plot(plot.load([out / "results-gpu.json"]), out / "gpu.png")


@pytest.mark.slow
def test_gpu_script_dry_run_of_the_issue_16_runs(dry_run):
    """Fast mode, the fp8 and group-offload modes and the interleaved A/B run on tiny models;
    the results file has the ratio table and the A/B section in words."""
    _, out, data = dry_run
    by_name = {r["name"]: r for r in data["runs"]}
    assert all(r["status"] == "ok" for r in data["runs"]), [r.get("error") for r in data["runs"]]
    fast_run = by_name["full/fast/8x1"]
    assert fast_run["num_inference_steps"] == 8 and fast_run["steps_measured"] == 8
    assert fast_run["guidance_scale"] == 0.0 and fast_run["fast_layers"] > 50
    fused_run = by_name["full/fast-fused/8x1"]  # the same call with the LoRA merged for it
    assert not fast_run["fast_fused"] and fused_run["fast_fused"]
    assert fused_run["steps_measured"] == 8 and fused_run["guidance_scale"] == 0.0
    ab = by_name["full/ab/2x1"]
    assert ab["variants"] == ["ours-v1", "ours-v2", "ours-v2-fast"] and ab["baseline"] == "ours-v1"
    assert set(ab["spread_vs_baseline"]) == {"ours-v2", "ours-v2-fast"}
    text = (out / "results-gpu.md").read_text()
    assert "### Ratios to full/eager/2x1" in text and "| full/fast/8x1 |" in text
    assert "interleaved rounds; per-round ratios" in text and "reference-v1: not run" in text
    # The app's defaults (doodle adapter at full size only, fast LoRA, style image) attached,
    # the style image used once, and memory auto's estimate beside each measured peak.
    app = data["builds"]["encoder-offload (app defaults)"]
    assert app["style_warmup"] == "ok" and app["app_defaults"]["fast_layers"] > 50
    assert app["app_defaults"]["style_image_encoder_gb"] > 0 < app["app_defaults"]["ip_adapter_gb"]
    assert by_name["encoder-offload/app/2x1"]["estimated_peak_gb"] > 0
    assert by_name["full/eager/2x1"]["estimated_peak_gb"] > 0
    assert by_name["full/eager/2x2"]["estimated_peak_gb"] is None  # the estimate is for one image
    assert "| estimated peak GB |" in text
