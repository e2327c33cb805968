"""The style image (an IP-Adapter, photomaker/style_image.py) through the table: the tiny
adapter in the released layout, the service (a style image changes the images, none gives
exactly today's), the PNG metadata, the CLI and a server without the adapter."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from photomaker import style_image
from photomaker.cli import EXIT_USER_ERROR, main
from photomaker.errors import PhotoMakerInputError
from photomaker.loading import build_service
from photomaker.metadata import build_metadata, parameters_text, read_metadata
from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline
from photomaker.pipeline_adapter import PhotoMakerStableDiffusionXLAdapterPipeline
from photomaker.service import GenerationRequest
from photomaker.settings import DEFAULT_STYLE_ADAPTER, Settings
from photomaker.tiny import build_tiny_components, write_tiny_style_adapter
from photomaker.tiny_faces import draw_tiny_face

PROMPT = "a photo of a man img in the snow"


def face_photo(variant: int) -> Image.Image:
    return draw_tiny_face(Image.new("RGB", (256, 256), "white"), (80, 60, 176, 190), variant)


def style_picture(seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def service():
    return build_service(Settings(tiny=True))


@pytest.fixture(scope="module")
def plain_service():
    return build_service(Settings(tiny=True, style_adapter="none"))


def request(**changes) -> GenerationRequest:
    values = dict(
        photos=[face_photo(0)], prompt=PROMPT, steps=3, num_outputs=1, seed=11,
        randomize_seed=False, aspect_ratio="1:1 square (1024×1024)",
    )  # fmt: skip
    values.update(changes)
    return GenerationRequest(**values)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0])


def test_the_tiny_adapter_has_the_released_layout(tmp_path):
    path = write_tiny_style_adapter(tmp_path / "sdxl_models")
    assert path.name == "ip-adapter_sdxl.safetensors"
    assert (tmp_path / "sdxl_models" / "image_encoder" / "config.json").is_file()
    state = load_file(str(path))
    unet = build_tiny_components(0)["unet"]
    cross = [n for n in unet.attn_processors if not n.endswith("attn1.processor")]
    assert {k for k in state if k.startswith("image_proj.")} == {
        "image_proj.proj.weight", "image_proj.proj.bias", "image_proj.norm.weight",
        "image_proj.norm.bias",
    }  # fmt: skip
    ids = sorted({int(k.split(".")[1]) for k in state if k.startswith("ip_adapter.")})
    assert ids == list(range(1, 2 * len(cross), 2))  # odd ids, one per cross-attention
    assert state["image_proj.proj.weight"].shape == (4 * unet.config.cross_attention_dim, 32)
    assert style_image.split_location(DEFAULT_STYLE_ADAPTER) == (
        "h94/IP-Adapter", "sdxl_models", "ip-adapter_sdxl.bin",
    )  # fmt: skip


def test_the_image_encoder_takes_its_turn_in_model_offload():
    for cls in (PhotoMakerStableDiffusionXLPipeline, PhotoMakerStableDiffusionXLAdapterPipeline):
        order = cls.model_cpu_offload_seq.split("->")
        assert order.index("image_encoder") < order.index("unet"), cls.__name__


def test_a_style_image_changes_the_images_and_none_gives_exactly_todays(service, plain_service):
    assert service.style_image_available and not plain_service.style_image_available
    before = service.generate(request())
    styled = service.generate(request(style_image=style_picture(), style_image_scale=1.0))
    after = service.generate(request())
    without_adapter = plain_service.generate(request())
    assert not np.array_equal(pixels(before), pixels(styled))
    assert np.array_equal(pixels(before), pixels(after))
    assert np.array_equal(pixels(before), pixels(without_adapter))  # the adapter costs nothing
    other = service.generate(request(style_image=style_picture(2), style_image_scale=1.0))
    assert not np.array_equal(pixels(styled), pixels(other))  # it is the picture that steers
    again = service.generate(request(style_image=style_picture(), style_image_scale=1.0))
    assert np.array_equal(pixels(styled), pixels(again))
    assert (styled.style_image, styled.style_image_scale) == (True, 1.0)
    assert (before.style_image, before.style_image_scale) == (False, None)
    unet = service.pipe.unet
    assert unet.encoder_hid_proj is None  # back in its plain state


def test_the_png_records_the_style_image(service):
    settings = Settings(tiny=True)
    result = service.generate(request(style_image=style_picture(), style_image_scale=0.6))
    meta = build_metadata(result, settings)
    assert (meta["style_image"], meta["style_image_scale"]) == (True, 0.6)
    assert meta["style_adapter"] == "tiny random weights"
    assert "Style image strength: 0.6" in parameters_text(meta)
    plain = build_metadata(service.generate(request()), settings)
    assert (plain["style_image"], plain["style_adapter"], plain["style_image_scale"]) == (
        False, None, None,
    )  # fmt: skip


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"style_image": "missing.png"}, "Style image: missing.png was not found"),
        ({"style_image": style_picture(), "style_image_scale": 1.5}, "style image scale"),
    ],
)
def test_style_image_mistakes_are_clear(service, changes, message):
    with pytest.raises(PhotoMakerInputError, match=message):
        service.generate(request(**changes))


def test_a_server_without_the_adapter_refuses_a_style_image(plain_service):
    with pytest.raises(PhotoMakerInputError, match="The style image is off on this server"):
        plain_service.generate(request(style_image=style_picture()))


def test_the_cli_style_image(tmp_path, capsys):
    photo, picture = tmp_path / "me.png", tmp_path / "look.png"
    face_photo(0).save(photo)
    style_picture().save(picture)
    argv = ["generate", "--tiny", "--photos", str(photo), "--prompt", PROMPT, "--seed", "3",
            "--steps", "2"]  # fmt: skip
    assert main([*argv, "--style-image", str(picture), "--style-image-scale", "0.8",
                 "--out", str(tmp_path / "styled")]) == 0  # fmt: skip
    (png,) = (tmp_path / "styled").glob("*.png")
    meta = read_metadata(png)
    assert (meta["style_image"], meta["style_image_scale"]) == (True, 0.8)
    off = [*argv, "--style-image", str(picture), "--style-adapter", "none",
           "--out", str(tmp_path / "off")]  # fmt: skip
    capsys.readouterr()
    assert main(off) == EXIT_USER_ERROR
    assert "error: --style-image needs the style image's IP-Adapter" in capsys.readouterr().err


def test_after_a_call_the_ip_adapter_rests_where_the_unets_weights_rest():
    """Offload modes keep the UNet's weights on the CPU between calls (sequential offload on
    the meta device, the real ones elsewhere): the IP-Adapter's 0.70 GB go back to the CPU
    then, and stay on the GPU where the UNet stays (here a recording stand-in: no GPU)."""
    import torch

    class Part:
        def __init__(self) -> None:
            self.moves: list[torch.device] = []

        def to(self, device):
            self.moves.append(device)
            return self

    for unet_device, expected in (("meta", "cpu"), ("cpu", "cpu"), ("cuda", "cuda")):
        processors, projection = {"a": Part(), "b": Part()}, Part()
        adapter = style_image.StyleAdapter("x", {}, processors, projection)
        pipe = type("Pipe", (), {"unet": type("UNet", (), {"device": torch.device(unet_device)})})
        style_image._follow_the_unet(pipe, adapter)
        moves = [*processors["a"].moves, *processors["b"].moves, *projection.moves]
        assert moves == [torch.device(expected)] * 3, unet_device
