"""``python -m photomaker``: writes PNGs in tiny mode; user mistakes exit with status 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from photomaker.cli import EXIT_USER_ERROR, main
from photomaker.metadata import read_metadata
from photomaker.tiny_faces import draw_tiny_face

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("cli-photos")
    paths = []
    for variant in range(2):
        image = draw_tiny_face(Image.new("RGB", (256, 256), "white"), (80, 60, 176, 190), variant)
        path = folder / f"me{variant}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def test_generate_writes_pngs_in_tiny_mode(photos, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "photomaker", "generate", "--tiny", "--photos", *photos,
         "--prompt", "a photo of a man img in the snow", "--style", "Comic book",
         "--steps", "2", "--num-outputs", "2", "--seed", "42", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "seed: 42"
    written = [Path(line.split("\t")[0]) for line in lines[1:]]
    likeness = [line.split("\t")[1] for line in lines[1:]]  # path <tab> likeness, per image
    assert all(re.fullmatch(r"likeness -?\d\.\d\d|no face found", text) for text in likeness)
    assert len(written) == 2 and all(p.is_file() and p.parent == out for p in written)
    assert Image.open(written[0]).size == (48, 64)  # the default 3:4 preset, tiny
    assert "noise" in proc.stderr
    meta = read_metadata(written[1])  # each PNG carries its settings
    assert (meta["seed"], meta["steps"], meta["image"], meta["num_images"]) == (42, 2, 2, 2)
    assert meta["prompt"] == "a photo of a man img in the snow"
    assert meta["style"] == "Comic book" and meta["aspect_ratio"] == "3:4 portrait (896×1152)"
    assert meta["tiny"] is True and meta["sampler"] == "Euler"
    assert meta["likeness_text"] == likeness[1]


def _run(capsys, argv) -> list[tuple[Path, str]]:
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    return [(Path(path), likeness) for path, likeness in (line.split("\t") for line in lines)]


def test_a_control_image_with_a_controlnet_changes_the_pictures(photos, tmp_path, capsys):
    from PIL import ImageDraw

    control = Image.new("RGB", (128, 128), "black")
    ImageDraw.Draw(control).ellipse((30, 10, 98, 90), outline="white", width=6)  # canny-like
    control.save(tmp_path / "edges.png")
    common = [
        "generate", "--tiny", "--controlnet", "tiny", "--photos", *photos,
        "--prompt", "a photo of a man img", "--steps", "3", "--seed", "5",
    ]  # fmt: skip
    ((plain, _),) = _run(capsys, [*common, "--out", str(tmp_path / "plain")])
    ((steered, likeness),) = _run(
        capsys,
        [*common, "--out", str(tmp_path / "c"), "--control-image", str(tmp_path / "edges.png")],
    )
    (half, _), = _run(
        capsys,
        [*common, "--out", str(tmp_path / "h"), "--control-image", str(tmp_path / "edges.png"),
         "--controlnet-scale", "0.5"],
    )  # fmt: skip
    pixels = [np.asarray(Image.open(p)) for p in (plain, steered, half)]
    assert not np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[1], pixels[2])
    meta = read_metadata(steered)
    assert meta["control_image"] is True and meta["controlnet"] == "tiny random weights"
    assert meta["controlnet_conditioning_scale"] == 1 and meta["likeness_text"] == likeness
    assert read_metadata(half)["controlnet_conditioning_scale"] == 0.5
    assert read_metadata(plain)["control_image"] is False


def test_a_control_image_needs_a_controlnet(photos, tmp_path, capsys):
    argv = ["generate", "--tiny", "--photos", photos[0], "--prompt", "a man img",
            "--control-image", photos[1], "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "error: --control-image needs a ControlNet to read it: add --controlnet" in err
    missing = [*argv, "--controlnet", "tiny", "--control-image", str(tmp_path / "nope.png")]
    assert main(missing) == EXIT_USER_ERROR
    assert "error: Control image: nope.png was not found" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"--prompt": "a photo of a man"}, "no trigger word"),
        ({"--style": "Nope"}, "Unknown style"),
        ({"--steps": "0"}, "steps must be between"),
        ({"--photos": "missing.jpg"}, "Photo 1"),
    ],
)
def test_user_errors_exit_2(photos, tmp_path, capsys, changes, message):
    args = {"--photos": photos[0], "--prompt": "a man img", "--steps": "1", "--out": str(tmp_path)}
    args.update(changes)
    argv = ["generate", "--tiny"] + [x for kv in args.items() for x in kv]
    assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert any(line.startswith("error: ") and message in line for line in err.splitlines())
    assert not list(tmp_path.glob("*.png"))


def test_an_output_folder_that_cannot_be_written_is_said_before_the_models_load(
    photos, tmp_path, capsys, monkeypatch
):
    from photomaker import loading

    monkeypatch.setattr(loading, "build_service", lambda settings: pytest.fail("models loaded"))
    a_file = tmp_path / "taken.png"
    a_file.write_bytes(b"x")
    for out, message in ((a_file, "is a file, not a folder"), (a_file / "sub", "cannot be made")):
        argv = ["generate", "--tiny", "--photos", photos[0], "--prompt", "a man img",
                "--out", str(out)]  # fmt: skip
        assert main(argv) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {out} {message}") and "Traceback" not in err


def test_bad_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--photos", "a.jpg"])  # no --prompt
    assert exit_info.value.code == 2


def test_lists(capsys):
    assert main(["styles"]) == 0
    names = capsys.readouterr().out.splitlines()
    assert names[0] == "Photographic (Default)" and "(No style)" in names
    assert main(["aspect-ratios"]) == 0
    assert "1:1 square (1024×1024)" in capsys.readouterr().out
