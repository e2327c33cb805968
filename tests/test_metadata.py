"""PNG metadata: the A1111 'parameters' chunk and our JSON chunk, written and read back."""

from __future__ import annotations

import json
import zipfile

import pytest
from PIL import Image

from photomaker import __version__
from photomaker.errors import PhotoMakerInputError
from photomaker.metadata import (
    JSON_KEY,
    PARAMETERS_KEY,
    aspect_ratio_name,
    build_metadata,
    file_name,
    parameters_text,
    read_metadata,
    save_results,
    zip_files,
)
from photomaker.service import GenerationResult
from photomaker.settings import Settings


def result(**changes) -> GenerationResult:
    values = dict(
        images=[Image.new("RGB", (48, 64), (200, 10, 10)), Image.new("RGB", (48, 64), "blue")],
        seed=42,
        prompt="cinematic photo of a woman img, 35mm, bokeh",
        negative_prompt="drawing, painting, blurry",
        style="Photographic (Default)",
        width=896,
        height=1152,
        start_merge_step=10,
        face_reports=None,
        messages=[],
        timings={},
        steps=50,
        style_strength=20.0,
        guidance_scale=5.0,
        user_prompt="a woman img, café «au lait», 100% smiling",
        user_negative_prompt="blurry",
    )
    values.update(changes)
    return GenerationResult(**values)


def test_metadata_names_everything_needed_to_make_the_image_again():
    meta = build_metadata(
        result(), Settings(), index=1, aspect_ratio="3:4 portrait (896×1152)",
        scheduler="EulerDiscreteScheduler",
    )  # fmt: skip
    assert meta["prompt"] == "a woman img, café «au lait», 100% smiling"
    assert meta["negative_prompt"] == "blurry"
    assert meta["styled_prompt"].startswith("cinematic photo")
    assert (meta["seed"], meta["steps"], meta["start_merge_step"]) == (42, 50, 10)
    assert (meta["style_strength"], meta["guidance_scale"]) == (20, 5.0)
    assert (meta["width"], meta["height"]) == (896, 1152)
    assert meta["aspect_ratio"] == "3:4 portrait (896×1152)"
    assert (meta["image"], meta["num_images"]) == (2, 2)
    assert meta["photomaker_version"] == "v2"
    assert meta["base_model"] == "SG161222/RealVisXL_V4.0"
    assert (meta["checkpoint"], meta["checkpoint_file"]) == (
        "TencentARC/PhotoMaker-V2",
        "photomaker-v2.bin",
    )
    assert meta["sampler"] == "Euler"
    assert meta["app_version"] == __version__
    json.dumps(meta)  # JSON-ready


def test_parameters_text_follows_the_a1111_layout():
    meta = build_metadata(result(), Settings(), scheduler="EulerDiscreteScheduler")
    lines = parameters_text(meta).splitlines()
    assert lines[0] == "cinematic photo of a woman img, 35mm, bokeh"
    assert lines[1] == "Negative prompt: drawing, painting, blurry"
    fields = lines[2]
    for part in (
        "Steps: 50",
        "Sampler: Euler",
        "CFG scale: 5.0",
        "Seed: 42",
        "Size: 896x1152",
        "Model: SG161222/RealVisXL_V4.0",
        "Style strength: 20%",
        "PhotoMaker merge step: 10",
        "PhotoMaker: v2 TencentARC/PhotoMaker-V2 photomaker-v2.bin",
        f"Version: photomaker-open {__version__}",
    ):
        assert part in fields
    assert 'Style: "Photographic (Default)"' not in fields  # quoted only with , : or "
    meta["style"] = "Odd, style"
    assert 'Style: "Odd, style"' in parameters_text(meta)


def test_saved_pngs_carry_both_chunks_and_read_back(tmp_path):
    paths = save_results(result(), Settings(), tmp_path / "out", aspect_ratio=None)
    assert [p.name for p in paths] == [file_name(42, 1), file_name(42, 2)]
    assert paths[0].name == "photomaker-42-1.png"
    with Image.open(paths[1]) as image:
        assert image.format == "PNG" and image.size == (48, 64)
        assert image.info[PARAMETERS_KEY].startswith("cinematic photo")
        assert json.loads(image.info[JSON_KEY])["image"] == 2
    meta = read_metadata(paths[0])
    assert meta["prompt"] == "a woman img, café «au lait», 100% smiling"  # not Latin-1: iTXt
    assert meta["aspect_ratio"] == "3:4 portrait (896×1152)"  # found from the size
    assert read_metadata(Image.open(paths[0]))["seed"] == 42


def test_tiny_results_say_so_and_find_their_preset():
    meta = build_metadata(result(width=64, height=64), Settings(tiny=True))
    assert meta["tiny"] is True and meta["base_model"] == "tiny random weights"
    assert meta["aspect_ratio"] == "1:1 square (1024×1024)"
    assert aspect_ratio_name(123, 45) is None


def test_zip_holds_the_pngs_under_their_names(tmp_path):
    paths = save_results(result(), Settings(), tmp_path)
    archive = zip_files(paths, tmp_path / "all.zip")
    with zipfile.ZipFile(archive) as z:
        assert z.namelist() == ["photomaker-42-1.png", "photomaker-42-2.png"]
        assert z.read("photomaker-42-1.png") == paths[0].read_bytes()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: Image.new("RGB", (8, 8)).save(p, format="PNG"), "no PhotoMaker settings"),
        (lambda p: Image.new("RGB", (8, 8)).save(p, format="JPEG"), "JPEG image"),
        (lambda p: p.write_text("hello"), "not an image"),
    ],
    ids=["plain png", "jpeg", "text"],
)
def test_files_without_our_metadata_are_refused_with_a_message(tmp_path, make, message):
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(PhotoMakerInputError, match=message):
        read_metadata(path)


def test_another_tools_parameters_are_not_taken_for_ours(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Seed: 1")
    path = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    with pytest.raises(PhotoMakerInputError, match="another tool"):
        read_metadata(path)


def test_likeness_and_structure_control_are_recorded(tmp_path):
    made = result(
        likeness=[0.61834, None], doodle=True, adapter_conditioning_scale=0.7,
        adapter_conditioning_factor=0.8,
    )  # fmt: skip
    first, second = (build_metadata(made, Settings(), index=i) for i in (0, 1))
    assert (first["likeness"], first["likeness_text"]) == (0.6183, "likeness 0.62")
    assert (second["likeness"], second["likeness_text"]) == (None, "no face found")
    assert first["doodle"] is True and first["doodle_adapter"] == Settings().doodle_adapter_location
    assert (first["adapter_conditioning_scale"], first["adapter_conditioning_factor"]) == (0.7, 0.8)
    assert first["control_image"] is False and first["controlnet"] is None
    fields = parameters_text(first).splitlines()[-1]
    assert "Likeness: 0.62" in fields and "Doodle strength: 0.7" in fields
    assert "Doodle steps share: 0.8" in fields and "ControlNet" not in fields
    assert "Likeness: no face found" in parameters_text(second)
    unscored = build_metadata(result(), Settings(tiny=True))
    assert unscored["likeness"] is None and unscored["likeness_text"] == "likeness n/a"
    assert unscored["doodle"] is False and unscored["doodle_adapter"] is None
    assert "Likeness: n/a" in parameters_text(unscored) and "Doodle" not in parameters_text(
        unscored
    )
    controlled = build_metadata(
        result(control_image=True, controlnet_conditioning_scale=0.5),
        Settings(controlnet="diffusers/controlnet-canny-sdxl-1.0"),
    )
    assert controlled["controlnet"] == "diffusers/controlnet-canny-sdxl-1.0"
    fields = parameters_text(controlled).splitlines()[-1]
    assert "ControlNet: diffusers/controlnet-canny-sdxl-1.0, ControlNet scale: 0.5" in fields
    path = save_results(made, Settings(), tmp_path)[0]
    assert read_metadata(path)["likeness"] == 0.6183
