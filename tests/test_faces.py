"""photomaker.faces on the tiny offline face pack (photomaker.tiny_faces), through InsightFace 2.x."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from photomaker import faces
from photomaker.errors import PhotoMakerInputError
from photomaker.faces import (
    FaceAnalyzer,
    crop_around_face,
    default_providers,
    keep_photos_with_faces,
)
from photomaker.images import load_id_images
from photomaker.tiny_faces import (
    DETECTOR_FILE,
    RECOGNIZER_FILE,
    SKIN_RGB,
    build_face_pack,
    draw_tiny_face,
    is_tiny_skin,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EXAMPLES = sorted(ASSETS.glob("astronaut*.jpg"))
BACKGROUND = (70, 110, 190)  # blue: not skin


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    return build_face_pack(tmp_path_factory.mktemp("tiny_face_pack"))


@pytest.fixture(scope="module")
def analyzer(pack) -> FaceAnalyzer:
    return FaceAnalyzer(pack=pack, force_cpu=True)


@pytest.fixture
def fresh(pack) -> FaceAnalyzer:
    """An analyzer with an empty cache (the module one caches across tests)."""
    return FaceAnalyzer(pack=pack, force_cpu=True, cache_size=8)


@pytest.fixture
def sizes_run(analyzer):
    """The detection sizes the detector's network actually ran at, in order."""
    yield _record_sizes(analyzer)
    del analyzer.det_model.forward  # back to the class's method


def _record_sizes(analyzer: FaceAnalyzer) -> list[int]:
    det = analyzer.det_model
    original = det.forward
    seen: list[int] = []

    def forward(img, threshold):
        assert img.shape[0] == img.shape[1]
        seen.append(img.shape[0])
        return original(img, threshold)

    det.forward = forward
    return seen


def photo(*boxes, size=(512, 384), variants=None) -> Image.Image:
    image = Image.new("RGB", size, BACKGROUND)
    for i, box in enumerate(boxes):
        draw_tiny_face(image, box, variant=(variants or [0] * len(boxes))[i])
    return image


# ----------------------------------------------------------------------------- the pack


def test_tiny_pack_loads_through_faceanalysis_like_a_real_pack(pack, analyzer):
    from insightface.app import FaceAnalysis
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.scrfd import SCRFD

    assert isinstance(analyzer.app, FaceAnalysis)
    assert Path(analyzer.app.model_dir) == pack.resolve()
    assert isinstance(analyzer.det_model, SCRFD) and isinstance(analyzer.rec_model, ArcFaceONNX)
    assert analyzer.det_model.fmc == 3 and analyzer.det_model.use_kps
    assert analyzer.det_model._num_anchors == 2
    assert analyzer.rec_model.input_size == (112, 112)
    (report,) = analyzer.analyze([photo((200, 120, 290, 230))])
    assert report.found
    assert report.embedding.shape == (512,) and report.embedding.dtype == np.float32
    assert np.isfinite(report.embedding).all()


def test_pack_by_name_under_root_models(tmp_path):
    build_face_pack(tmp_path / "models" / "tiny")
    named = FaceAnalyzer(pack="tiny", root=tmp_path, force_cpu=True)
    assert Path(named.app.model_dir) == (tmp_path / "models" / "tiny").resolve()
    assert named.analyze([photo((200, 120, 290, 230))])[0].found


def test_pack_is_small_and_deterministic(pack, tmp_path):
    again = build_face_pack(tmp_path / "again")
    for name in (DETECTOR_FILE, RECOGNIZER_FILE):
        assert (pack / name).stat().st_size < 200_000
        assert (pack / name).read_bytes() == (again / name).read_bytes()


def test_skin_rule_matches_the_drawing_colour():
    assert is_tiny_skin(np.array(SKIN_RGB))
    for not_skin in [(255, 255, 255), (128, 128, 128), BACKGROUND, (230, 100, 60), (180, 160, 120)]:
        assert not is_tiny_skin(np.array(not_skin)), not_skin


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_exactly_one_face_in_each_example_photo(analyzer, path):
    (report,) = analyzer.analyze(load_id_images([path]))
    assert report.found and report.num_faces == 1, report.message
    x1, y1, x2, y2 = report.bbox
    width, height = Image.open(path).size
    assert 0.1 * width < x2 - x1 < 0.5 * width and 0.1 * height < y2 - y1 < 0.6 * height
    assert y1 < 0.5 * height  # the face is in the upper half of the portrait


def test_example_face_box_is_the_astronauts_face(analyzer):
    (report,) = analyzer.analyze(load_id_images([ASSETS / "astronaut.jpg"]))
    x1, y1, x2, y2 = report.bbox
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    assert 200 < cx < 240 and 105 < cy < 150  # her face, not the flag, suit or strap


@pytest.mark.parametrize(
    "blank",
    [
        Image.new("RGB", (400, 300), "white"),
        Image.new("RGB", (300, 300), "black"),
        Image.new("RGB", (320, 240), (128, 128, 128)),
        Image.new("RGB", (300, 400), SKIN_RGB),  # uniform skin colour: no surrounded blob
    ],
    ids=["white", "black", "grey", "skin"],
)
def test_no_face_in_blank_or_uniform_images(analyzer, sizes_run, blank):
    (report,) = analyzer.analyze([blank])
    assert not report.found and report.num_faces == 0
    assert sizes_run == [640, 512, 384, 320, 256]  # every size was really tried


# ----------------------------------------------------------------------------- reports


def test_zero_one_two_faces_reports_and_messages(analyzer):
    small, large = (60, 100, 140, 200), (290, 80, 400, 210)
    none, one, two = analyzer.analyze([photo(), photo(small), photo(small, large, variants=[1, 2])])

    assert (none.index, none.found, none.num_faces) == (0, False, 0)
    assert none.bbox is none.score is none.embedding is none.crop is None
    assert none.message.startswith("photo 1: no face found — use a photo where the face is large")

    assert (one.index, one.found, one.num_faces) == (1, True, 1)
    assert one.message == "photo 2: 1 face"
    assert np.allclose(one.bbox, small, atol=6)
    assert 0.5 < one.score <= 1.0
    assert one.crop.mode == "RGB" and max(one.crop.size) <= faces.THUMBNAIL_SIDE

    assert (two.index, two.found, two.num_faces) == (2, True, 2)
    assert two.message == "photo 3: 2 faces, using the largest"
    assert np.allclose(two.bbox, large, atol=6)  # the main face is the larger one


def test_largest_face_wins_whatever_its_position(analyzer):
    big_left = photo((40, 60, 150, 190), (330, 150, 400, 230))
    big_right = photo((40, 150, 110, 230), (300, 80, 410, 210))
    left, right = analyzer.analyze([big_left, big_right])
    assert left.num_faces == right.num_faces == 2
    assert left.bbox[0] < 100 and right.bbox[0] > 250


def test_main_face_weights_area_by_score():
    boxes = np.array([[0, 0, 100, 100, 0.3], [0, 0, 80, 80, 0.9], [0, 0, 10, 10, 1.0]])
    assert faces._main_face(boxes) == 1
    assert faces._main_face(boxes[[0, 2]]) == 0


def test_embeddings_follow_the_face_content(analyzer):
    drawn = [photo((200, 120, 290, 230), variants=[v]) for v in (0, 1, 2)]
    photos = drawn + load_id_images(EXAMPLES)
    embeddings = np.stack([r.embedding for r in analyzer.analyze(photos)])
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T
    off_diagonal = similarity[~np.eye(len(photos), dtype=bool)]
    assert off_diagonal.max() < 0.999  # no two faces give the same embedding
    assert similarity[0, 3] < 0.9  # a drawn face is far from the astronaut


# ----------------------------------------------------------------------------- fallback


def test_size_fallback_runs_each_size_until_a_face_is_found(analyzer, sizes_run):
    # A close-up: the face is ~200 px wide in a 384 px photo, too big for the detector at
    # 640, 512 and 384 (it sees faces up to ~190 px at detection size).
    closeup = photo((92, 80, 292, 300), size=(384, 384))
    (report,) = analyzer.analyze([closeup])
    assert report.found and report.num_faces == 1
    assert report.det_size is not None and report.det_size < 640
    expected = list(analyzer.det_sizes[: analyzer.det_sizes.index(report.det_size) + 1])
    assert sizes_run == expected and len(sizes_run) >= 3
    assert np.allclose(report.bbox, (92, 80, 292, 300), atol=10)


def test_size_fallback_stops_at_the_first_size_that_finds(analyzer, sizes_run):
    (report,) = analyzer.analyze([photo((200, 120, 260, 190), size=(500, 400))])
    assert report.det_size == 640 and sizes_run == [640]


def test_custom_sizes_are_the_ones_run(pack):
    two_sizes = FaceAnalyzer(pack=pack, force_cpu=True, det_sizes=(640, 256))
    seen = _record_sizes(two_sizes)
    (report,) = two_sizes.analyze([photo((92, 80, 292, 300), size=(384, 384))])
    assert report.found and report.det_size == 256 and seen == [640, 256]


def test_setting_input_size_does_nothing_in_insightface_2(analyzer, sizes_run):
    """Why the reference demo's retry trick fails: SCRFD reads ``input_sizes``."""
    closeup = np.ascontiguousarray(
        np.asarray(photo((92, 80, 292, 300), size=(384, 384)))[..., ::-1]
    )
    det = analyzer.det_model
    saved = det.input_size
    try:
        det.input_size = (256, 256)
        det.detect(closeup)
    finally:
        det.input_size = saved
    assert 256 not in sizes_run


def test_det_sizes_are_validated(pack):
    with pytest.raises(ValueError, match="multiples of 32"):
        FaceAnalyzer(pack=pack, det_sizes=(640, 300))


# ----------------------------------------------------------------------------- cache


def test_second_analysis_of_the_same_photo_hits_the_cache(fresh):
    seen = _record_sizes(fresh)
    face = photo((200, 120, 290, 230))
    (first,) = fresh.analyze([face])
    runs = len(seen)
    (second,) = fresh.analyze([face.copy()])  # same pixels, another object
    assert (fresh.cache_hits, fresh.cache_misses) == (1, 1)
    assert len(seen) == runs  # the detector did not run again
    assert second.bbox == first.bbox and np.array_equal(second.embedding, first.embedding)
    # a cached result still gets the right position in a new batch
    reports = fresh.analyze([photo(), face])
    assert fresh.cache_hits == 2 and reports[1].message.startswith("photo 2:")


def test_cache_is_a_bounded_lru(pack):
    small = FaceAnalyzer(pack=pack, force_cpu=True, cache_size=2)
    a, b, c = (photo((200, 120, 290, 230), variants=[v]) for v in (0, 1, 2))
    small.analyze([a, b])
    small.analyze([a])  # a is now the most recent
    small.analyze([c])  # evicts b
    assert len(small._cache) == 2
    hits = small.cache_hits
    small.analyze([a])
    assert small.cache_hits == hits + 1
    small.analyze([b])
    assert small.cache_hits == hits + 1 and small.cache_misses == 4


def test_returned_embeddings_cannot_corrupt_the_cache(fresh):
    face = photo((200, 120, 290, 230))
    (first,) = fresh.analyze([face])
    first.embedding[:] = 0
    (second,) = fresh.analyze([face])
    assert np.abs(second.embedding).sum() > 0


# ----------------------------------------------------------------------------- keeping photos


def test_keep_photos_with_faces_keeps_photos_and_embeddings_in_step(analyzer):
    photos = [
        photo((60, 100, 140, 200), variants=[1]),
        photo(),
        photo((290, 80, 400, 210), variants=[2]),
    ]
    reports = analyzer.analyze(photos)
    kept = keep_photos_with_faces(photos, reports)
    assert kept.images == [photos[0], photos[2]]
    assert kept.indices == [0, 2]
    assert kept.embeddings.shape == (2, 512) and kept.embeddings.dtype == np.float32
    assert np.array_equal(kept.embeddings[0], reports[0].embedding)
    assert np.array_equal(kept.embeddings[1], reports[2].embedding)
    assert len(kept.messages) == 1 and kept.messages[0].startswith("photo 2: no face found")


def test_keep_photos_without_any_face_is_a_user_error(analyzer):
    photos = [photo(), Image.new("RGB", (200, 200), "white")]
    with pytest.raises(PhotoMakerInputError, match="No face found in any of the 2 photos") as info:
        keep_photos_with_faces(photos, analyzer.analyze(photos))
    assert "photo 1: no face found" in str(info.value) and "photo 2" in str(info.value)


def test_keep_photos_checks_lengths(analyzer):
    with pytest.raises(ValueError, match="2 photos but 1"):
        keep_photos_with_faces([photo(), photo()], analyzer.analyze([photo()]))


def test_keep_photos_can_crop_around_the_face(analyzer):
    photos = [photo((60, 100, 140, 200)), photo((290, 80, 400, 210))]
    reports = analyzer.analyze(photos)
    kept = keep_photos_with_faces(photos, reports, crop_to_face=True, margin=0.25)
    for image, report in zip(kept.images, reports, strict=True):
        width, height = image.size
        assert width == height
        face_side = max(report.bbox[2] - report.bbox[0], report.bbox[3] - report.bbox[1])
        assert abs(width - 1.5 * face_side) <= 2
    off = keep_photos_with_faces(photos, reports)
    assert [im.size for im in off.images] == [(512, 384)] * 2  # off: photos untouched


def test_crop_around_face_geometry():
    image = Image.new("RGB", (400, 300))
    crop = crop_around_face(image, (100, 100, 150, 180), margin=0.5)
    assert crop.size == (160, 160)
    corner = crop_around_face(image, (0, 0, 40, 40), margin=0.5)
    assert corner.size == (80, 80)  # moved inside, not shrunk
    huge = crop_around_face(image, (0, 0, 390, 290), margin=0.5)
    assert huge.size == (300, 300)
    assert crop_around_face(image, (100, 100, 150, 150), margin=0).size == (50, 50)
    with pytest.raises(ValueError):
        crop_around_face(image, (0, 0, 10, 10), margin=-1)


# ----------------------------------------------------------------------------- any photo mode


def _modes(tmp_path) -> dict[str, object]:
    astronaut = Image.open(ASSETS / "astronaut.jpg").convert("RGB")
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned left; viewers turn it right
    astronaut.transpose(Image.Transpose.ROTATE_90).save(rotated, exif=exif, quality=92)
    cmyk = tmp_path / "cmyk.jpg"
    astronaut.convert("CMYK").save(cmyk, quality=92)
    grey16 = np.asarray(astronaut.convert("L"), dtype=np.uint16) * 257
    return {
        "exif": rotated,
        "P": astronaut.quantize(256),
        "RGBA": astronaut.convert("RGBA"),
        "CMYK": cmyk,
        "L": astronaut.convert("L"),
        "I;16": Image.fromarray(grey16, mode="I;16"),
    }


def test_any_photo_mode_is_analysed_as_rgb(analyzer, tmp_path):
    modes = _modes(tmp_path)
    photos = load_id_images(list(modes.values()))
    assert all(p.mode == "RGB" and p.size == (512, 512) for p in photos)
    seen: list[tuple] = []
    original = analyzer.det_model.detect

    def detect(img, *args, **kwargs):
        seen.append((img.shape, img.dtype))
        return original(img, *args, **kwargs)

    analyzer.det_model.detect = detect
    try:
        reports = dict(zip(modes, analyzer.analyze(photos), strict=True))
    finally:
        del analyzer.det_model.detect
    assert all(shape == (512, 512, 3) and dtype == np.uint8 for shape, dtype in seen)
    (reference,) = analyzer.analyze(load_id_images([ASSETS / "astronaut.jpg"]))
    centre = np.array(reference.bbox).reshape(2, 2).mean(axis=0)
    for mode in ("exif", "P", "RGBA", "CMYK"):  # colour photos: the tiny detector sees the face
        report = reports[mode]
        assert report.found and report.num_faces == 1, mode
        assert np.abs(np.array(report.bbox).reshape(2, 2).mean(axis=0) - centre).max() < 25, mode
    assert np.allclose(reports["exif"].bbox, reference.bbox, atol=12)  # upright again
    for mode in ("L", "I;16"):  # grey photos: accepted; the tiny detector looks for skin colour
        assert reports[mode].message.startswith("photo")
    grey = np.asarray(photos[list(modes).index("I;16")])
    assert (grey[..., 0] == grey[..., 2]).all() and grey.max() > 200  # 16-bit scaled, not clipped


# ----------------------------------------------------------------------------- missing pack


def _no_download(monkeypatch):
    import insightface.utils.storage as storage

    def refuse(*args, **kwargs):
        raise AssertionError("InsightFace tried to download")

    monkeypatch.setattr(storage, "download_file", refuse)


def test_missing_pack_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    _no_download(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(faces, "_network_available", lambda *a, **k: pytest.fail("probed network"))
    with pytest.raises(PhotoMakerInputError) as info:  # fast: it neither probes nor downloads
        FaceAnalyzer(pack="buffalo_l", root=tmp_path)
    message = str(info.value)
    assert "'buffalo_l'" in message
    assert "det_10g.onnx" in message and "w600k_r50.onnx" in message
    assert str(tmp_path / "models" / "buffalo_l") in message
    assert not (tmp_path / "models").exists()  # nothing half-downloaded


def test_missing_pack_without_network_fails_fast(tmp_path, monkeypatch):
    _no_download(monkeypatch)
    for name in faces._OFFLINE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(faces, "_network_available", lambda *a, **k: False)
    with pytest.raises(PhotoMakerInputError, match="antelopev2.*no network.*glintr100.onnx"):
        FaceAnalyzer(pack="antelopev2", root=tmp_path)
    with pytest.raises(PhotoMakerInputError, match="downloads are off"):
        FaceAnalyzer(pack="buffalo_l", root=tmp_path, allow_download=False)


def test_network_probe_is_bounded(monkeypatch):
    """A DNS lookup that hangs does not hold the caller: it returns while the probe still
    hangs (shown by events, not by a clock, so a busy machine cannot flake it)."""
    import socket

    release, finished = threading.Event(), threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        finished.set()
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", hang)
    try:
        assert faces._network_available(timeout=0.05) is False
        assert not finished.is_set()
    finally:
        release.set()


def test_empty_or_wrong_pack_folders(tmp_path, monkeypatch):
    _no_download(monkeypatch)
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    with pytest.raises(PhotoMakerInputError, match="folder is empty"):
        FaceAnalyzer(pack="buffalo_l", root=tmp_path)
    with pytest.raises(PhotoMakerInputError, match="holds no .onnx models"):
        FaceAnalyzer(pack=tmp_path / "models" / "buffalo_l")
    with pytest.raises(PhotoMakerInputError, match="does not exist"):
        FaceAnalyzer(pack=tmp_path / "nowhere")
    with pytest.raises(PhotoMakerInputError, match="does not exist"):
        FaceAnalyzer(pack="./nowhere/pack")


def test_pack_without_recognizer_is_a_user_error(pack, tmp_path):
    only_detector = tmp_path / "det_only"
    only_detector.mkdir()
    (only_detector / DETECTOR_FILE).write_bytes((pack / DETECTOR_FILE).read_bytes())
    with pytest.raises(PhotoMakerInputError, match="no recognition model"):
        FaceAnalyzer(pack=only_detector)


# ----------------------------------------------------------------------------- providers


def test_providers_prefer_cuda_unless_cpu_is_forced(monkeypatch, pack):
    import onnxruntime

    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert default_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert default_providers(force_cpu=True) == ["CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert default_providers() == ["CPUExecutionProvider"]
    forced = FaceAnalyzer(pack=pack, providers=["CUDAExecutionProvider"], force_cpu=True)
    assert forced.providers == ["CPUExecutionProvider"]
    assert forced.det_model.session.get_providers() == ["CPUExecutionProvider"]


# ----------------------------------------------------------------------------- V2 end to end


@pytest.mark.slow
def test_v2_end_to_end_on_the_tiny_pipeline(analyzer, tmp_path):
    import torch

    from photomaker import tiny

    photos = load_id_images([EXAMPLES[0], photo(), ImageOps.mirror(Image.open(EXAMPLES[0]))])
    kept = keep_photos_with_faces(photos, analyzer.analyze(photos))
    assert kept.indices == [0, 2] and kept.messages[0].startswith("photo 2: no face found")
    pipe = tiny.build_tiny_pipeline("v2", cache_dir=tmp_path)

    def generate(embeddings: np.ndarray) -> np.ndarray:
        return pipe(
            prompt="a photo of a woman img",
            input_id_images=kept.images,
            id_embeds=torch.from_numpy(embeddings),
            num_inference_steps=4,
            height=64,
            width=64,
            start_merge_step=1,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images

    images = generate(kept.embeddings)
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    assert np.array_equal(images, generate(kept.embeddings))  # same inputs → same image
    other = generate(kept.embeddings[::-1].copy() * 0.0)
    assert not np.allclose(images, other)  # the face embeddings reach the image


def test_tiny_module_offers_build_face_pack():
    from photomaker import tiny

    assert tiny.build_face_pack is build_face_pack
