"""Loading from settings: the fp16 variant and its fallback, the fp16-safe VAE, memory
modes (VAE slicing and 512-px tiles), --compile, and the fused style LoRA."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from photomaker.errors import PhotoMakerInputError
from photomaker.loading import (
    OFFLOAD_VAE_TILE,
    build_pipeline,
    compile_unet,
    configure_offload_vae,
    load_base_pipeline,
    load_fp16_vae,
)
from photomaker.settings import Settings
from photomaker.tiny import build_tiny_components


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    """A tiny SDXL saved twice: default weights, and an fp16 variant with a marked UNet."""
    from diffusers import StableDiffusionXLPipeline

    folder = tmp_path_factory.mktemp("base")
    pipe = StableDiffusionXLPipeline(**build_tiny_components(0))
    pipe.save_pretrained(folder / "plain")
    pipe.save_pretrained(folder / "with-variant")
    with torch.no_grad():
        pipe.unet.conv_in.bias.fill_(0.25)  # only the variant files carry this
    pipe.to(torch.float16).save_pretrained(folder / "with-variant", variant="fp16")
    return folder


def test_fp16_variant_is_used_when_the_repo_has_it(base_folder):
    settings = Settings(base_model=str(base_folder / "with-variant"), device="cpu", dtype="float16")
    with warnings.catch_warnings(record=True) as caught:  # the suite ignores FutureWarnings
        warnings.simplefilter("always")
        pipe = load_base_pipeline(settings)
    # diffusers 0.42 deprecates torch_dtype= (a FutureWarning on every real start): dtype=
    assert not [w for w in caught if "torch_dtype" in str(w.message)]
    assert pipe.unet.dtype == torch.float16
    assert torch.all(pipe.unet.conv_in.bias == 0.25)


def test_without_the_variant_the_default_weights_load(base_folder, caplog):
    settings = Settings(base_model=str(base_folder / "plain"), device="cpu", dtype="float16")
    with caplog.at_level(logging.INFO, logger="photomaker.loading"):
        pipe = load_base_pipeline(settings)
    assert pipe.unet.dtype == torch.float16
    assert "no fp16 variant" in caplog.text
    # fp32 loads never ask for the variant
    pipe = load_base_pipeline(Settings(base_model=str(base_folder / "with-variant"), device="cpu"))
    assert pipe.unet.dtype == torch.float32 and not torch.all(pipe.unet.conv_in.bias == 0.25)


@pytest.mark.parametrize(
    "base, reason",
    [
        ("nobody/no-such-sdxl", "not in the local Hugging Face cache and cannot be downloaded"),
        ("~/no/such/folder", "Give --base-model (or PHOTOMAKER_BASE_MODEL) a hub id"),
    ],
)
def test_a_base_model_that_cannot_be_had_is_named_with_its_flag(base, reason):
    """Offline (HF_HUB_OFFLINE, as in every test) and a path that is nothing: the message
    names the model, the flag and the root cause, where diffusers' says to read the trace."""
    with pytest.raises(PhotoMakerInputError) as err:
        load_base_pipeline(Settings(base_model=base, device="cpu"))
    message = str(err.value)
    assert (
        message.startswith(f"Could not load the SDXL base model {base!r} (") and reason in message
    )
    assert "stacktrace" not in message


def test_a_style_lora_that_cannot_be_read_is_named_with_its_flag(tmp_path):
    not_a_lora = tmp_path / "photo.safetensors"
    not_a_lora.write_bytes(b"not safetensors")
    for location in (str(not_a_lora), "nobody/no-such-lora"):
        with pytest.raises(
            PhotoMakerInputError, match=r"Could not load the style LoRA .*--style-lora"
        ):
            build_pipeline(Settings(tiny=True, style_lora=location))


def test_a_device_the_machine_lacks_is_said_before_anything_loads(monkeypatch):
    from photomaker import tiny

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(tiny, "build_tiny_pipeline", lambda **kw: pytest.fail("models loaded"))
    with pytest.raises(PhotoMakerInputError, match=r"--device cuda, but PyTorch sees no CUDA"):
        build_pipeline(Settings(tiny=True, device="cuda"))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(PhotoMakerInputError, match=r"--device mps, but PyTorch sees no Apple"):
        build_pipeline(Settings(tiny=True, device="mps"))


def test_fp16_safe_vae_replaces_the_vae_and_skips_the_upcast(base_folder, tmp_path):
    from diffusers import AutoencoderKL

    vae = build_tiny_components(1)["vae"]
    vae.save_pretrained(tmp_path / "vae")
    settings = Settings(
        base_model=str(base_folder / "plain"), device="cpu", vae_fp16_fix=str(tmp_path / "vae")
    )
    pipe = load_base_pipeline(settings)
    load_fp16_vae(pipe, settings)
    assert isinstance(pipe.vae, AutoencoderKL) and pipe.components["vae"] is pipe.vae
    assert pipe.vae.config.force_upcast is False
    assert torch.equal(pipe.vae.decoder.conv_in.weight, vae.decoder.conv_in.weight)


def test_offload_vae_decodes_one_image_at_a_time_in_512_pixel_tiles():
    from diffusers import AutoencoderKL

    vae = build_tiny_components(0)["vae"]
    configure_offload_vae(vae)
    assert vae.use_slicing and vae.use_tiling
    assert vae.tile_sample_min_size == OFFLOAD_VAE_TILE == 512
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    assert vae.tile_latent_min_size == 512 // scale
    # On SDXL's real VAE (built empty) the default tile is 1024 px: tiling alone would do nothing.
    from accelerate import init_empty_weights

    with init_empty_weights():
        sdxl = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            latent_channels=4,
            sample_size=1024,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
        )
    sdxl.enable_tiling()
    assert sdxl.tile_sample_min_size == 1024
    configure_offload_vae(sdxl)
    assert (sdxl.tile_sample_min_size, sdxl.tile_latent_min_size) == (512, 64)


def test_tiled_sliced_decode_gives_images_of_the_right_size():
    vae = build_tiny_components(0)["vae"]
    configure_offload_vae(vae, tile=32)
    latents = torch.randn(3, 4, 32, 32)
    with torch.no_grad():
        images = vae.decode(latents).sample
    assert images.shape == (3, 3, 64, 64) and torch.isfinite(images).all()


def test_compile_is_refused_on_zerogpu(monkeypatch):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    with pytest.raises(PhotoMakerInputError, match="ZeroGPU"):
        build_pipeline(Settings(tiny=True, compile=True))


@pytest.fixture
def inductor_config():
    """torch's inductor config, with what compile_unet sets in it put back afterwards."""
    import torch._inductor.config as config

    with config.patch(conv_1x1_as_mm=False):
        yield config


def test_compile_wraps_the_unet_in_place(monkeypatch, inductor_config):
    from photomaker.service import runtime

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: modes.append(kw["mode"]))

    class Pipe:
        unet = build_tiny_components(0)["unet"]

    for mode in ("default", "max-autotune-no-cudagraphs"):
        pipe = Pipe()
        assert compile_unet(pipe, Settings(tiny=True, compile=True, compile_mode=mode)) is pipe
        assert runtime._GPU_THREADS.get(pipe) is None  # no CUDA graphs: jobs run where called
    assert modes == [None, "max-autotune-no-cudagraphs"]  # None: inductor's default
    assert inductor_config.conv_1x1_as_mm  # diffusers' SDXL settings
    assert Pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    graphs = Pipe()
    compile_unet(graphs, Settings(tiny=True, compile=True, compile_mode="reduce-overhead"))
    assert modes[-1] == "reduce-overhead" and runtime._GPU_THREADS.get(graphs) is not None
    assert compile_unet(Pipe(), Settings(tiny=True)).unet is Pipe.unet
    assert len(modes) == 3  # compile off: not compiled


def test_compile_really_wraps_the_unet(monkeypatch, inductor_config):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)

    class Pipe:
        unet = build_tiny_components(0)["unet"]

    pipe = compile_unet(Pipe(), Settings(tiny=True, compile=True))
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"  # diffusers still sees a UNet
    assert pipe.unet._compiled_call_impl is not None


def test_tiny_mode_fuses_the_photomaker_lora():
    pipe = build_pipeline(Settings(tiny=True))
    assert pipe.num_fused_loras == 1


# --------------------------------------------------------------------------- the doodle adapter

OFFLINE_START = r"""
import logging, sys
from diffusers import StableDiffusionXLPipeline
from photomaker.errors import PhotoMakerInputError
from photomaker.loading import build_pipeline
from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline
from photomaker.settings import DEFAULT_DOODLE_ADAPTER, Settings
from photomaker.tiny import TINY_ENCODER_CONFIG, build_tiny_components, write_tiny_checkpoint

logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
folder = sys.argv[1]
components = build_tiny_components(0)
StableDiffusionXLPipeline(**components).save_pretrained(folder + "/base")
checkpoint = write_tiny_checkpoint(folder + "/pm/tiny-v2.bin", "v2", unet=components["unet"])
original = PhotoMakerStableDiffusionXLPipeline.load_photomaker_adapter
PhotoMakerStableDiffusionXLPipeline.load_photomaker_adapter = (
    lambda self, location, **kw: original(self, location, id_encoder_config=TINY_ENCODER_CONFIG, **kw)
)
settings = Settings(base_model=folder + "/base", checkpoint=str(checkpoint), device="cpu")
assert settings.doodle_adapter is None and not settings.doodle_adapter_required
pipe = build_pipeline(settings)  # the default adapter is neither cached nor downloadable
print("STARTED", type(pipe).__name__, getattr(pipe, "adapter", None))
try:
    build_pipeline(settings.replace(doodle_adapter=DEFAULT_DOODLE_ADAPTER))
except PhotoMakerInputError as error:
    print("REFUSED", error)
"""


def test_an_unreachable_default_doodle_adapter_turns_the_doodle_off(tmp_path):
    """Offline with an empty Hugging Face cache: the default sketch adapter cannot be had, so
    the pipeline is built without it (the app starts, the doodle is off, a warning says why);
    the same adapter named explicitly must load, and its failure stops the start."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_START, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "STARTED PhotoMakerStableDiffusionXLPipeline None" in out, out
    assert "WARNING the doodle is off: the default doodle adapter" in out
    assert "TencentARC/t2i-adapter-sketch-sdxl-1.0" in out
    assert "REFUSED Could not load the doodle adapter" in out, out
