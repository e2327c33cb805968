"""The service beyond the plain pipeline: the doodle (T2I-Adapter), a control image
(ControlNet) and the ID likeness of every result, on tiny models."""

from __future__ import annotations

import logging
import pickle
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from photomaker.errors import PhotoMakerInputError
from photomaker.faces import likeness
from photomaker.loading import build_service
from photomaker.service import GenerationRequest, JobOutput, PhotoMakerService
from photomaker.settings import Settings
from photomaker.tiny_faces import draw_tiny_face

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

PROMPT = "a photo of a man img in the snow"
LIKENESS_WORDS = r"(likeness -?\d\.\d\d|no face found)"


def face_photo(variant: int, size: int = 256) -> Image.Image:
    image = Image.new("RGB", (size, size), (255, 255, 255))
    return draw_tiny_face(
        image, (size * 0.3, size * 0.25, size * 0.7, size * 0.75), variant=variant
    )


def sketch(size: int = 200) -> Image.Image:
    """What the Sketchpad sends: black strokes on a transparent canvas."""
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((50, 20, 150, 140), outline=(0, 0, 0, 255), width=8)
    draw.line((100, 140, 100, 195), fill=(0, 0, 0, 255), width=8)
    return canvas


def request(**changes) -> GenerationRequest:
    values = dict(
        photos=[face_photo(0), face_photo(1)],
        prompt=PROMPT,
        steps=3,
        num_outputs=1,
        seed=7,
        randomize_seed=False,
        aspect_ratio="1:1 square (1024×1024)",
    )
    values.update(changes)
    return GenerationRequest(**values)


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(image) for image in result.images]


def same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(pixels(a), pixels(b), strict=True))


@pytest.fixture(scope="module")
def service() -> PhotoMakerService:
    """The default tiny service: the doodle is on (a tiny T2I-Adapter)."""
    return build_service(Settings(tiny=True))


@pytest.fixture(scope="module")
def plain_service() -> PhotoMakerService:
    return build_service(Settings(tiny=True, doodle_adapter="none"))


# --------------------------------------------------------------------------- doodle


def test_the_tiny_service_has_the_doodle_and_none_turns_it_off(service, plain_service):
    assert service.doodle_available and not service.controlnet_available
    assert not plain_service.doodle_available


def test_a_doodle_changes_the_images_and_the_same_doodle_repeats_them(service):
    without = service.generate(request())
    first = service.generate(request(doodle=sketch()))
    again = service.generate(request(doodle=sketch()))
    assert not same(first, without)
    assert same(first, again)
    assert first.doodle and not without.doodle
    assert (first.adapter_conditioning_scale, first.adapter_conditioning_factor) == (0.7, 0.8)
    assert without.adapter_conditioning_scale is None
    stronger = service.generate(request(doodle=sketch(), adapter_conditioning_scale=1.0))
    assert not same(stronger, first)


def test_the_doodle_is_scaled_to_the_output_and_crosses_to_the_gpu_part(service):
    job, _ = service.prepare(request(doodle=sketch(300), aspect_ratio="16:9 wide (1344×768)"))
    assert job.doodle.size == (job.width, job.height) and job.doodle.mode == "RGB"
    assert set(np.unique(np.asarray(job.doodle))) == {0, 255}
    assert set(job.structure_kwargs()) == {
        "image",
        "adapter_conditioning_scale",
        "adapter_conditioning_factor",
    }
    plain, _ = service.prepare(request())
    assert plain.doodle is None and plain.structure_kwargs() == {}  # the call of before
    direct = service.run_job(job)
    crossed = service.run_job(pickle.loads(pickle.dumps(job)))
    assert np.array_equal(np.asarray(direct.images[0]), np.asarray(crossed.images[0]))


def test_a_doodle_comes_as_a_path_an_array_or_a_sketchpad_value(service, tmp_path):
    path = tmp_path / "doodle.png"
    sketch().save(path)
    jobs = [
        service.prepare(request(doodle=source))[0]
        for source in (
            sketch(),
            str(path),
            np.asarray(sketch()),
            {"background": None, "layers": [sketch()], "composite": sketch()},
        )
    ]
    want = np.asarray(jobs[0].doodle)
    assert all(np.array_equal(np.asarray(job.doodle), want) for job in jobs[1:])
    # A Sketchpad value with nothing in it is no doodle.
    job, _ = service.prepare(request(doodle={"background": None, "layers": [], "composite": None}))
    assert job.doodle is None


def test_a_blank_doodle_is_no_doodle_and_says_so(service):
    blank = service.generate(request(doodle=Image.new("RGBA", (200, 200), (0, 0, 0, 0))))
    assert not blank.doodle
    assert any("doodle is blank" in message for message in blank.messages)
    assert same(blank, service.generate(request()))


def test_a_doodle_on_a_server_without_it_is_refused_clearly(plain_service):
    with pytest.raises(PhotoMakerInputError, match="The doodle is off on this server"):
        plain_service.generate(request(doodle=sketch()))
    assert len(plain_service.generate(request()).images) == 1  # and it serves the next one


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"adapter_conditioning_scale": 1.5}, "adapter conditioning scale must be between 0.0"),
        ({"adapter_conditioning_factor": -0.1}, "adapter conditioning factor must be between"),
        ({"adapter_conditioning_factor": "abc"}, "adapter conditioning factor must be a number"),
        ({"controlnet_conditioning_scale": 3}, "controlnet conditioning scale must be between"),
        ({"doodle": "missing.png"}, "Doodle: missing.png was not found"),
        ({"doodle": {"x": 1}}, "doodle must be an image"),
        ({"doodle": b"not an image"}, "Doodle: .* is not an image"),
    ],
)
def test_doodle_mistakes_are_clear(service, changes, message):
    with pytest.raises(PhotoMakerInputError, match=message):
        service.generate(request(**changes))


def test_a_doodle_pixel_bomb_is_refused_from_its_header(service, tmp_path):
    from tests.test_images import _blank_png

    bomb = _blank_png(tmp_path / "doodle.png", 12000, 12000)  # 144 MP, 420 KB on disk
    with pytest.raises(PhotoMakerInputError, match=r"Doodle: doodle\.png is 12000×12000 .*limit"):
        service.prepare(request(doodle=str(bomb)))


def test_the_full_range_is_accepted(service):
    result = service.generate(
        request(doodle=sketch(), adapter_conditioning_scale=0.0, adapter_conditioning_factor=1.0)
    )
    assert same(result, service.generate(request()))  # scale 0: the doodle adds nothing


# --------------------------------------------------------------------------- ControlNet


def test_a_control_image_changes_the_images_and_needs_a_controlnet(service):
    controlled = build_service(Settings(tiny=True, controlnet="tiny"))
    assert controlled.controlnet_available and not controlled.doodle_available
    control = sketch().convert("RGB")
    without = controlled.generate(request())
    with_control = controlled.generate(request(control_image=control))
    assert with_control.control_image and with_control.controlnet_conditioning_scale == 1.0
    assert not same(with_control, without)
    half = controlled.generate(request(control_image=control, controlnet_conditioning_scale=0.5))
    assert not same(half, with_control)
    job, _ = controlled.prepare(request(control_image=control, aspect_ratio="16:9 wide (1344×768)"))
    assert job.control_image.size == (job.width, job.height)
    with pytest.raises(PhotoMakerInputError, match="needs a ControlNet"):
        service.generate(request(control_image=control))
    with pytest.raises(PhotoMakerInputError, match="The doodle is off on this server"):
        controlled.generate(request(doodle=sketch()))


# --------------------------------------------------------------------------- likeness


def test_every_result_has_its_likeness_in_the_captions(service):
    result = service.generate(request(num_outputs=2, style="Watercolor"))
    assert result.likeness is not None and len(result.likeness) == 2
    assert "likeness" in result.timings
    for i, caption in enumerate(result.captions):
        assert caption.startswith(f"seed 7 · Watercolor · {i + 1}/2 · ")
        assert caption.endswith(result.likeness_text(i))
        assert re.search(LIKENESS_WORDS + "$", caption)


def faces_out(*variants: int):
    """A GPU part that 'generates' face photos, so the likeness has faces to score."""

    def run_job(job):
        return JobOutput([face_photo(v) for v in variants], None, {"denoise": 0.0})

    return run_job


def test_the_likeness_is_the_papers_id_similarity(service):
    result = service.generate(request(num_outputs=2), run_job=faces_out(0, 3))
    reports = service.analyzer.analyze([face_photo(0), face_photo(1)])
    want = likeness(service.analyzer, result.images, np.stack([r.embedding for r in reports]))
    assert result.likeness == pytest.approx(want, abs=1e-6)
    assert result.likeness[0] > result.likeness[1]  # an ID photo is more like the person
    assert result.captions[0].endswith(f" · likeness {want[0]:.2f}")
    blank = service.generate(
        request(),
        run_job=lambda job: JobOutput([Image.new("RGB", (64, 64), "white")], None, {}),
    )
    assert blank.likeness == [None] and blank.captions[0].endswith(" · no face found")


def test_v1_scores_the_likeness_with_its_own_analyzer_or_says_n_a():
    v1 = build_service(Settings(tiny=True, pm_version="v1", doodle_adapter="none"))
    assert v1.analyzer is None and v1.likeness_analyzer is not None  # the tiny face pack
    result = v1.generate(request(), run_job=faces_out(0))
    assert result.face_reports is None and result.likeness[0] > 0.5
    assert result.captions[0].endswith(f" · likeness {result.likeness[0]:.2f}")
    blind = PhotoMakerService(v1.pipe, None, tiny=True)  # no face pack on this machine
    result = blind.generate(request(steps=1))
    assert result.likeness is None and result.captions[0].endswith(" · likeness n/a")
    faceless = v1.generate(request(photos=[Image.new("RGB", (256, 256), "gray")]), faces_out(0))
    assert faceless.likeness is None  # nothing to compare with: n/a, not a wrong number


def test_a_failing_likeness_costs_no_images(service, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("detector exploded")

    monkeypatch.setattr("photomaker.faces.likeness", broken)
    with caplog.at_level(logging.WARNING, logger="photomaker.service"):
        result = service.generate(request())
    assert len(result.images) == 1 and result.likeness is None
    assert result.captions[0].endswith(" · likeness n/a")
    assert "could not score the likeness" in caplog.text and "detector exploded" in caplog.text
