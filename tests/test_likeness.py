"""ID likeness of generated images (faces.likeness), with the tiny face pack on the example
photos in assets/ and on drawn tiny faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from photomaker.faces import FaceAnalyzer, likeness, likeness_caption
from photomaker.images import load_id_images
from photomaker.tiny_faces import build_face_pack, draw_tiny_face

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory) -> FaceAnalyzer:
    return FaceAnalyzer(pack=build_face_pack(tmp_path_factory.mktemp("pack")), force_cpu=True)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return load_id_images([ASSETS / "astronaut.jpg", ASSETS / "astronaut_crop.jpg"])


@pytest.fixture(scope="module")
def embeddings(analyzer, photos) -> np.ndarray:
    reports = analyzer.analyze(photos)
    assert all(r.found and r.embedding is not None for r in reports)
    return np.stack([r.embedding for r in reports])


def test_an_id_photo_is_most_like_itself(analyzer, photos, embeddings):
    scores = likeness(analyzer, photos[:1], embeddings[:1])
    assert scores == [pytest.approx(1.0, abs=1e-5)]


def test_no_face_gives_none_in_place(analyzer, photos, embeddings):
    blank = Image.new("RGB", (256, 256), "white")
    scores = likeness(analyzer, [blank, photos[0], blank], embeddings)
    assert scores[0] is None and scores[2] is None
    assert isinstance(scores[1], float) and -1.0 <= scores[1] <= 1.0


def test_scores_against_the_mean_of_the_unit_embeddings(analyzer, photos, embeddings):
    """cos(e, mean(e_i / |e_i|)): each ID photo counts the same whatever its norm."""
    scaled = embeddings * np.array([[3.0], [0.5]], dtype=np.float32)  # norms must not matter
    (score,) = likeness(analyzer, photos[:1], scaled)
    units = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    target = units.mean(axis=0)
    own = embeddings[0] / np.linalg.norm(embeddings[0])
    assert score == pytest.approx(float(own @ target / np.linalg.norm(target)), abs=1e-5)


def test_a_different_face_scores_lower(analyzer):
    def face(variant: int) -> Image.Image:
        return draw_tiny_face(Image.new("RGB", (160, 160), "white"), (40, 30, 120, 130), variant)

    reference = analyzer.analyze([face(0)])[0].embedding
    same, other = likeness(analyzer, [face(0), face(3)], [reference])
    assert same == pytest.approx(1.0, abs=1e-5)
    assert other is not None and other < same - 0.01


def test_generated_images_stay_out_of_the_cache(tmp_path, photos, embeddings):
    fresh = FaceAnalyzer(pack=build_face_pack(tmp_path / "pack"), force_cpu=True, cache_size=4)
    fresh.analyze(photos)
    cached = list(fresh._cache)
    likeness(fresh, [photos[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT)], embeddings)
    assert list(fresh._cache) == cached


def test_bad_id_embeddings_are_refused(analyzer, photos):
    with pytest.raises(ValueError, match="at least one"):
        likeness(analyzer, photos, np.zeros((0, 512), np.float32))
    with pytest.raises(ValueError, match="all zeros"):
        likeness(analyzer, photos, np.zeros((1, 512), np.float32))


def test_captions():
    assert likeness_caption(0.6249) == "likeness 0.62"
    assert likeness_caption(None) == "no face found"
    assert likeness_caption(0.9, available=False) == "likeness n/a"


def test_likeness_analyzer_for_v1_only_when_a_pack_is_here(tmp_path):
    from photomaker.loading import build_likeness_analyzer
    from photomaker.settings import Settings

    own = object()
    assert build_likeness_analyzer(Settings(tiny=True), own) is own
    assert isinstance(build_likeness_analyzer(Settings(tiny=True, pm_version="v1")), FaceAnalyzer)
    missing = Settings(pm_version="v1", face_root=str(tmp_path), device="cpu")
    assert build_likeness_analyzer(missing) is None  # no download, no error: "likeness n/a"
    build_face_pack(tmp_path / "models" / "buffalo_l")
    here = build_likeness_analyzer(missing)
    assert isinstance(here, FaceAnalyzer) and here.providers == ["CPUExecutionProvider"]
