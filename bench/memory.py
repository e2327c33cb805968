"""Memory: parameter bytes per component, the VRAM floor of each memory mode, and the peak
RSS of the tiny app and of one CLI generation.

* Parameter bytes are counted on the meta device from the real-size configs
  (``bench/sdxl_configs.py``): exact, instant, no weights.
* The VRAM floor of a mode is what must be on the GPU at once for the weights alone:
  ``full`` holds every model; ``model-offload`` (``enable_model_cpu_offload``) holds one model
  at a time, so its floor is the largest (the UNet); ``encoder-offload`` keeps the UNet and
  the VAE and brings each encoder in a layer at a time, ``group-offload`` every model
  (:func:`offloaded_parameters`); ``sequential-offload`` (``enable_sequential_cpu_offload``)
  holds one leaf module at a time, so its floor is the largest single layer. Activations come
  on top (the UNet's at 1024², the VAE decoder's): those are measured by ``bench/gpu.py``
  (peak VRAM per mode, results-gpu.md and results-gpu-h100.md).
* Peak RSS: ``python app.py --tiny`` started, one request through ``gradio_client``, then the
  server's ``VmHWM`` (peak resident set, /proc); ``python -m photomaker generate --tiny`` run
  once, its ``ru_maxrss``.

    python bench/memory.py          # writes bench/results-memory.md and .json (≈ 1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from bench import common, sdxl_configs

ROOT = Path(__file__).resolve().parent.parent
META = torch.device("meta")
GB = 1e9
MODES = ("full", "model-offload", "encoder-offload", "group-offload", "sequential-offload")


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def largest_leaf(module: nn.Module) -> tuple[str, int]:
    """The module holding the most parameters of its own (not its children's)."""
    best = ("", 0)
    for name, child in module.named_modules():
        own = sum(p.numel() for p in child.parameters(recurse=False))
        if own > best[1]:
            best = (name, own)
    return best


def offloaded_parameters(module: nn.Module) -> int:
    """Parameters of ``module`` on the GPU at once while it runs group-offloaded as the app
    does it (``loading.group_offload_models``): its leftover groups and its two largest layer
    groups (``photomaker.offload_groups.largest_at_once``, an upper bound), split where the
    app splits it (the VAE: as diffusers declares)."""
    from photomaker.offload_groups import block_modules_for, largest_at_once

    return largest_at_once(module, block_modules_for(module))


def components() -> dict[str, nn.Module]:
    """The real-size models on meta, by pipeline component name."""
    from peft import LoraConfig

    models = {
        "unet": common.build_unet(sdxl_configs.SDXL_UNET, META),
        "text_encoder": common.build_text_encoder(sdxl_configs.SDXL_TEXT_ENCODER, False, META),
        "text_encoder_2": common.build_text_encoder(sdxl_configs.SDXL_TEXT_ENCODER_2, True, META),
        "id_encoder_v1": common.build_id_encoder("v1", "full", META),
        "id_encoder_v2": common.build_id_encoder("v2", "full", META),
        "vae": common.build_vae(sdxl_configs.SDXL_VAE, META),
    }
    lora_unet = common.build_unet(sdxl_configs.SDXL_UNET, META)
    config = LoraConfig(
        r=sdxl_configs.PHOTOMAKER_LORA_RANK, lora_alpha=sdxl_configs.PHOTOMAKER_LORA_RANK,
        target_modules=r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)", init_lora_weights=False,
    )  # fmt: skip
    with torch.device(META):
        lora_unet.add_adapter(config, adapter_name="photomaker")
    models["lora"] = nn.ModuleList(
        [m for n, m in lora_unet.named_modules() if n.endswith(("lora_A", "lora_B"))]
    )
    return models


def ip_adapter_modules(unet: nn.Module) -> nn.ModuleList:
    """``ip-adapter_sdxl``'s weights, which diffusers puts inside the UNet, on meta: a key and
    a value projection (no bias) from the image tokens for every cross-attention, and the
    image projection (a Linear to the tokens and a LayerNorm)."""
    cross = unet.config.cross_attention_dim
    tokens = sdxl_configs.IP_ADAPTER_TOKENS
    projection_dim = sdxl_configs.STYLE_IMAGE_ENCODER["projection_dim"]
    with torch.device(META):
        layers = [
            nn.Linear(cross, m.inner_dim, bias=False)
            for n, m in unet.named_modules()
            if n.endswith("attn2")
            for _ in ("to_k_ip", "to_v_ip")
        ]
        layers += [nn.Linear(projection_dim, tokens * cross), nn.LayerNorm(cross)]
    return nn.ModuleList(layers)


def fast_lora_modules(unet: nn.Module, rank: int = sdxl_configs.FAST_LORA_RANK) -> nn.ModuleList:
    """The fast LoRA's factors in SDXL-Lightning's layout (``photomaker.fast``: every Linear
    and Conv2d in the down, mid and up blocks) at ``rank``, on meta (a convolution's k×k
    down factor as a Linear of the same size)."""
    from photomaker.fast import FAST_LORA_BLOCKS

    factors = []
    with torch.device(META):
        for name, module in unet.named_modules():
            if not name.startswith(FAST_LORA_BLOCKS):
                continue
            if isinstance(module, nn.Linear):
                sizes = (module.in_features, module.out_features)
            elif isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                sizes = (module.in_channels * k, module.out_channels)
            else:
                continue
            factors += [
                nn.Linear(sizes[0], rank, bias=False),
                nn.Linear(rank, sizes[1], bias=False),
            ]
    return nn.ModuleList(factors)


def estimate_pipelines() -> dict[str, SimpleNamespace]:
    """Two full-size V2 pipelines on meta, in bf16, as ``photomaker.memory_estimate`` reads
    them: SDXL and PhotoMaker (its LoRA's factors in the UNet, as loaded), and the same with
    the models the app loads by default besides (the style image's encoder and IP-Adapter,
    the doodle's adapter, the fast LoRA; the IP-Adapter's weights apart from the UNet's
    modules, as photomaker.style_image keeps them between style-image calls)."""
    from diffusers import T2IAdapter
    from peft import LoraConfig
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    def base(lora_factors: bool) -> dict[str, nn.Module]:
        unet = common.build_unet(sdxl_configs.SDXL_UNET, META)
        config = LoraConfig(
            r=sdxl_configs.PHOTOMAKER_LORA_RANK, lora_alpha=sdxl_configs.PHOTOMAKER_LORA_RANK,
            target_modules=r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)", init_lora_weights=False,
        )  # fmt: skip
        if lora_factors:
            with torch.device(META):
                unet.add_adapter(config, adapter_name="photomaker")
        return {
            "unet": unet,
            "text_encoder": common.build_text_encoder(sdxl_configs.SDXL_TEXT_ENCODER, False, META),
            "text_encoder_2": common.build_text_encoder(
                sdxl_configs.SDXL_TEXT_ENCODER_2, True, META
            ),
            "id_encoder": common.build_id_encoder("v2", "full", META),
            "vae": common.build_vae(sdxl_configs.SDXL_VAE, META),
        }

    # With the fast LoRA attached, PhotoMaker's LoRA is baked into the weights (its factors
    # dropped: photomaker.fast.bake_fused_adapters).
    plain, extended = base(lora_factors=True), base(lora_factors=False)
    unet = extended["unet"]
    unet.fast_lora_stand_in = fast_lora_modules(unet)
    ip_adapter = ip_adapter_modules(unet)  # outside the UNet's modules, as the app keeps it
    with torch.device(META):
        extended["image_encoder"] = CLIPVisionModelWithProjection(
            CLIPVisionConfig(**sdxl_configs.STYLE_IMAGE_ENCODER)
        )
        extended["adapter"] = T2IAdapter(**sdxl_configs.T2I_SKETCH_ADAPTER)
    for model in (*plain.values(), *extended.values(), ip_adapter):
        model.to(torch.bfloat16)
    return {"plain": SimpleNamespace(components=plain),
            "defaults": SimpleNamespace(components=extended, ip_adapter=ip_adapter)}  # fmt: skip


def peak_estimates() -> dict:
    """``photomaker.memory_estimate``'s peaks of :func:`estimate_pipelines`, and the sizes
    of the optional models."""
    from photomaker.memory_estimate import STYLE_IMAGE_MODELS, estimate_peaks_gb, model_bytes

    pipes = estimate_pipelines()
    extended = pipes["defaults"].components
    ip_adapter = pipes["defaults"].ip_adapter
    return {
        "plain": estimate_peaks_gb(pipes["plain"], style_bytes=0),
        "defaults": estimate_peaks_gb(pipes["defaults"], style_bytes=model_bytes(ip_adapter)),
        # --style-adapter none: the defaults less the style image's encoder and IP-Adapter
        "without_style_image": estimate_peaks_gb(
            pipes["defaults"], style_bytes=0, leave_out=STYLE_IMAGE_MODELS
        ),
        "optional_gb": {
            "style image encoder": model_bytes(extended["image_encoder"]) / GB,
            "IP-Adapter weights (its attention and image projection)": model_bytes(ip_adapter)
            / GB,
            "doodle adapter": model_bytes(extended["adapter"]) / GB,
            f"fast LoRA (rank {sdxl_configs.FAST_LORA_RANK}, an assumption)": model_bytes(
                extended["unet"].fast_lora_stand_in
            )
            / GB,
        },
    }


def weights(bytes_per_parameter: int = 2) -> dict:
    """Parameters, bytes (at ``bytes_per_parameter``) and largest layer per component, and the
    weights-only VRAM floor of each memory mode for PhotoMaker V2 (V1: the V1 encoder)."""
    models = components()
    table = {}
    for name, module in models.items():
        leaf, leaf_params = largest_leaf(module)
        table[name] = {
            "parameters": parameters(module),
            "gb": parameters(module) * bytes_per_parameter / GB,
            "largest_layer": leaf,
            "largest_layer_gb": leaf_params * bytes_per_parameter / GB,
            "offloaded_gb": offloaded_parameters(module) * bytes_per_parameter / GB,
        }
    vae = models["vae"]
    table["vae"]["decoder_gb"] = (
        (parameters(vae.decoder) + parameters(vae.post_quant_conv)) * bytes_per_parameter / GB
    )
    floors = {}
    for version in ("v1", "v2"):
        on_gpu = ["unet", "text_encoder", "text_encoder_2", f"id_encoder_{version}", "vae"]
        full = sum(table[n]["gb"] for n in on_gpu)
        floors[version] = {
            "full": full,
            "full_with_lora_matrices": full + table["lora"]["gb"],
            "model-offload": max(table[n]["gb"] for n in on_gpu),
            # the UNet and VAE stay; an encoder comes in a layer at a time while it runs
            "encoder-offload": table["unet"]["gb"]
            + table["vae"]["gb"]
            + max(table[n]["offloaded_gb"] for n in on_gpu if n not in ("unet", "vae")),
            # every model a group at a time, one model running at a time
            "group-offload": max(table[n]["offloaded_gb"] for n in on_gpu),
            "sequential-offload": max(table[n]["largest_layer_gb"] for n in on_gpu),
        }
    return {"bytes_per_parameter": bytes_per_parameter, "components": table, "floors": floors}


# --------------------------------------------------------------------------- peak RSS


def _photos(folder: Path) -> list[str]:
    from PIL import Image

    from photomaker.tiny_faces import draw_tiny_face

    paths = []
    for variant in range(2):
        image = draw_tiny_face(Image.new("RGB", (256, 256), "white"), (80, 60, 176, 190), variant)
        path = folder / f"face{variant}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def _env(**extra) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", **extra}  # fmt: skip
    for name in ("PHOTOMAKER_VERSION", "PHOTOMAKER_PM_VERSION"):
        env.pop(name, None)
    return env


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def app_peak_rss(folder: Path, timeout: float = 180) -> dict:
    """Start ``app.py --tiny``, send one request through gradio_client, read its peak RSS."""
    from gradio_client import Client, handle_file

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = folder / "app.log"
    env = _env(PHOTOMAKER_TINY="1", PHOTOMAKER_HOST="127.0.0.1", PHOTOMAKER_PORT=str(port))
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--tiny"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    started = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"app.py exited with {proc.returncode}: {log.read_text()[-2000:]}"
                )
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"app.py was not up within {timeout:.0f} s")
            try:
                with urllib.request.urlopen(url + "gradio_api/info", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        startup_s = time.monotonic() - started
        rss_idle = _status_kb(proc.pid, "VmRSS")
        client = Client(url, verbose=False, download_files=False)
        request = time.monotonic()
        client.predict(
            photos=[handle_file(p) for p in _photos(folder)],
            prompt="a photo of a man img in the snow", negative_prompt="blurry",
            style="Photographic (Default)", aspect_ratio="1:1 square (1024×1024)", steps=4,
            style_strength=20, num_outputs=1, guidance_scale=5.0, seed=1, randomize_seed=False,
            api_name="/generate",
        )  # fmt: skip
        request_s = time.monotonic() - request
        children = _children(proc.pid)
        return {
            "startup_s": startup_s,
            "request_s": request_s,
            "rss_after_start_mb": rss_idle / 1024,
            "peak_rss_mb": _status_kb(proc.pid, "VmHWM") / 1024,
            "child_processes": len(children),
            "children_peak_rss_mb": sum(_status_kb(c, "VmHWM") for c in children) / 1024,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cli_peak_rss(folder: Path) -> dict:
    """One ``python -m photomaker generate --tiny`` run: its ru_maxrss and wall time."""
    argv = [sys.executable, "-m", "photomaker", "generate", "--tiny", "--photos", *_photos(folder),
            "--prompt", "a photo of a man img in the snow", "--steps", "4", "--num-outputs", "1",
            "--seed", "1", "--out", str(folder / "out")]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    stderr = proc.stderr.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"photomaker generate exited with {proc.returncode}: {stderr[-2000:]}")
    return {"seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024}


# --------------------------------------------------------------------------- report


def markdown(data: dict) -> str:
    w = data["weights"]
    t = w["components"]
    names = {
        "unet": "UNet (SDXL)",
        "text_encoder": "text encoder 1 (CLIP ViT-L)",
        "text_encoder_2": "text encoder 2 (OpenCLIP bigG + projection)",
        "id_encoder_v1": "ID encoder V1",
        "id_encoder_v2": "ID encoder V2",
        "vae": "VAE (decoder alone: {:.2f} GB)".format(t["vae"]["decoder_gb"]),
        "lora": "PhotoMaker LoRA A/B matrices (rank 64)",
    }
    lines = [
        "# Memory",
        "",
        f"Written by `python bench/memory.py`, {data['started']}.",
        "",
        "## Parameters per component (fp16 / bf16: 2 bytes each)",
        "",
        "| Component | Parameters | GB | Largest layer | its GB | on the GPU at once, "
        "group-offloaded, GB |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for key, label in names.items():
        c = t[key]
        layer = f"`{c['largest_layer']}`" if key != "lora" else "-"
        # encoder-offload moves only the encoders; the UNet, the VAE and the LoRA stay
        offloaded = "-" if key == "lora" else f"{c['offloaded_gb']:.2f}"
        lines.append(
            f"| {label} | {c['parameters'] / 1e6:,.1f} M | {c['gb']:.2f} | {layer} "
            f"| {c['largest_layer_gb']:.3f} | {offloaded} |"
        )
    text = t["text_encoder"]["gb"] + t["text_encoder_2"]["gb"]
    lines += [
        "",
        f"Text encoders together: {text:.2f} GB. After `fuse_lora` the LoRA's A/B matrices stay in",
        f"memory ({t['lora']['gb']:.2f} GB) unless `unload_lora_weights()` drops them; fused, they",
        "are not used per step.",
        "",
        "The last column is what group offloading holds of a model while it runs, as the app splits",
        "it (`photomaker/offload_groups.py`: down to the layers): every leftover group (the parts",
        "outside the layer lists, in while their module runs) and its two largest layer groups (the",
        "one computing, the next being copied); an upper bound. encoder-offload offloads the",
        "encoders so; group-offload every model.",
        "",
        "## VRAM floor per memory mode (weights only, fp16 / bf16)",
        "",
        "| Mode | What is on the GPU | V2 floor, GB | V1 floor, GB |",
        "|---|---|---:|---:|",
    ]
    what = {
        "full": "every model, all the time",
        "model-offload": "one model at a time (the largest: the UNet)",
        "encoder-offload": "the UNet and the VAE, and what an encoder holds at once while it runs",
        "group-offload": "what the model running holds at once (one model runs at a time)",
        "sequential-offload": "one layer at a time (the largest: a text encoder's token embedding)",
    }
    f = w["floors"]
    for mode in MODES:
        lines.append(f"| {mode} | {what[mode]} | {f['v2'][mode]:.2f} | {f['v1'][mode]:.2f} |")
    lines += [
        "",
        "Full mode as the pipeline runs it (LoRA fused, its A/B matrices kept so that it can be",
        f"unfused): {f['v2']['full_with_lora_matrices']:.2f} GB for V2.",
        "Activations come on top: the UNet's at 1024² with CFG and the VAE decoder's (largest at",
        "full resolution, per image decoded at once); `bench/gpu.py` measures the peak of each",
        "mode (results-gpu.md).",
        "",
    ]
    if "peaks" in data:
        p = data["peaks"]
        lines += [
            "## Estimated peak per memory mode (what `memory auto` reads)",
            "",
            "`photomaker/memory_estimate.py` estimates each mode's peak from the pipeline as",
            "loaded: its weights where the mode keeps them, plus the activations measured on top",
            "of the weights (full mode's untiled decode; the offload modes' tiled one). Those two",
            "allowances are calibrated so that SDXL and PhotoMaker alone give the measured peaks",
            "(full 10.96 GB, model-offload 5.81 GB, H100); the rest are estimates. The app loads",
            "more by default, where it can be had:",
            "",
        ]
        lines += [f"- {name}: {gb:.2f} GB" for name, gb in p["optional_gb"].items()]
        lines += [
            "",
            "| Mode | SDXL + PhotoMaker V2, GB | with the default optional models, GB |"
            " the same without the style image, GB |",
            "|---|---:|---:|---:|",
        ]
        lean = p["without_style_image"]
        for mode, plain in p["plain"].items():
            lines.append(
                f"| {mode} | {plain:.2f} | {p['defaults'][mode]:.2f} | {lean[mode]:.2f} |"
            )
        margin = data["auto_margin_gb"]
        lines += [
            "",
            f"`memory auto` takes the first of these modes whose estimated peak plus {margin:g} GB",
            "fits in the GPU's free memory at start-up, reading the pipeline it actually loaded",
            "(so `--style-adapter none` or `--doodle-adapter none` bring the faster modes within",
            "reach of smaller cards; where the style image alone keeps a faster mode out, the",
            "log says so).",
            "",
        ]
    lines += [
        "## Peak RSS of the tiny app and CLI (CPU, tiny random models)",
        "",
    ]
    app, cli = data.get("app"), data.get("cli")
    if isinstance(app, dict) and "peak_rss_mb" in app:
        lines.append(
            f"- `python app.py --tiny`, one request (2 photos, 4 steps) through `gradio_client`:"
            f" peak RSS **{app['peak_rss_mb']:.0f} MB** ({app['rss_after_start_mb']:.0f} MB after"
            f" start-up; started in {app['startup_s']:.1f} s, request {app['request_s']:.1f} s;"
            f" {app['child_processes']} child processes"
            + (f", {app['children_peak_rss_mb']:.0f} MB" if app["child_processes"] else "")
            + ")."
        )
    else:
        lines.append(f"- app: not measured ({app})")
    if isinstance(cli, dict) and "peak_rss_mb" in cli:
        lines.append(
            f"- `python -m photomaker generate --tiny` (2 photos, 4 steps, 1 image): peak RSS"
            f" **{cli['peak_rss_mb']:.0f} MB**, {cli['seconds']:.1f} s."
        )
    else:
        lines.append(f"- CLI: not measured ({cli})")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--no-processes", action="store_true", help="skip the app and CLI RSS")
    args = parser.parse_args(argv)
    from photomaker.settings import AUTO_MEMORY_MARGIN_GB

    data = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "weights": weights(),
        "peaks": peak_estimates(),
        "auto_margin_gb": AUTO_MEMORY_MARGIN_GB,  # the room memory auto leaves beside a peak
    }
    if not args.no_processes:
        with tempfile.TemporaryDirectory(prefix="photomaker-bench-memory-") as tmp:
            for key, fn in (("cli", cli_peak_rss), ("app", app_peak_rss)):
                try:
                    data[key] = fn(Path(tmp))
                except Exception as error:
                    data[key] = f"{type(error).__name__}: {error}"
                common.say(f"{key}: {data[key]}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results-memory.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out_dir / "results-memory.md").write_text(markdown(data))
    common.say(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
