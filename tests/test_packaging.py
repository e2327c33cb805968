"""A plain (non-editable) install works: sdist -> wheel -> ``pip install --target``, then the
CLI runs from the installed package alone (styles shipped as package data)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "requirements.txt",
           "style_templates.json", "photomaker"]  # fmt: skip


def run(args, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package built the way pip builds a release (sdist, then a wheel from it) and
    installed into a folder of its own."""
    tmp = tmp_path_factory.mktemp("packaging")
    checkout = tmp / "checkout"
    checkout.mkdir()
    for name in SOURCES:  # a clean copy: nothing built lands in the working tree
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, checkout / name)
    dist = tmp / "dist"
    run(
        [sys.executable, "-c",
         f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"],
        cwd=checkout,
    )  # fmt: skip
    sdist = next(dist.glob("photomaker_open-*.tar.gz"))
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
        assert any(n.endswith("/style_templates.json") for n in names)
        archive.extractall(tmp / "unpacked", filter="data")
    (unpacked,) = (tmp / "unpacked").iterdir()
    wheels = tmp / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(wheels), str(unpacked)],
    )  # fmt: skip
    wheel = next(wheels.glob("photomaker_open-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        assert "photomaker/style_templates.json" in archive.namelist()
        for name in ("web/layout.py", "web/static/app.css", "web/static/toast.css",
                     "web/static/pick_the_brush.js", "service/core.py", "params.py"):
            assert f"photomaker/{name}" in archive.namelist(), name  # the app ships whole
        entry_points = next(n for n in archive.namelist() if n.endswith("entry_points.txt"))
        assert "photomaker = photomaker.cli:main" in archive.read(entry_points).decode()
    site = tmp / "site"
    run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(site), str(wheel)],
    )  # fmt: skip
    return site


def cli(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    return run([sys.executable, "-m", "photomaker", *args], cwd=cwd, env=env)


@pytest.mark.slow
def test_installed_package_lists_styles_from_its_own_copy(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    where = run(
        [sys.executable, "-c", "import photomaker.styles as s; print(s.__file__); print(s.STYLE_FILE)"],
        cwd=tmp_path, env=env,
    ).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(installed) for p in where)  # not the checkout's
    names = cli(installed, "styles", cwd=tmp_path).stdout.splitlines()
    assert names[0] == "Photographic (Default)" and "Watercolor" in names
    assert (installed / "bin" / "photomaker").is_file()  # the console script


@pytest.mark.slow
def test_installed_package_generates_in_tiny_mode(installed, tmp_path):
    from photomaker.tiny_faces import draw_tiny_face

    photo = tmp_path / "me.png"
    draw_tiny_face(Image.new("RGB", (256, 256), "white"), (80, 60, 176, 190), 0).save(photo)
    out = tmp_path / "out"
    proc = cli(
        installed, "generate", "--tiny", "--photos", str(photo), "--prompt", "a man img",
        "--steps", "1", "--seed", "3", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert proc.stdout.splitlines()[0] == "seed: 3"
    assert (out / "photomaker-3-1.png").is_file()


@pytest.mark.slow
def test_installed_package_builds_the_app(installed, tmp_path):
    """`photomaker app` from a plain install: the same app, its look read from the package."""
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1"}
    code = (
        "import photomaker.web as w, photomaker.web.look as look; from photomaker.settings "
        "import Settings; demo = w.create_app(Settings(tiny=True)); "
        "print(look.STATIC); print('#photo-view' in look.css())"
    )
    built = run([sys.executable, "-c", code], cwd=tmp_path, env=env)
    static, has_css = built.stdout.split()[-2:]
    assert Path(static).is_relative_to(installed) and has_css == "True"
    # The libraries' notices that are wrong here (photomaker/library_notices.py) stay out of
    # the log, and so do the tiny models' progress bars: building the app prints nothing.
    assert built.stderr == "", built.stderr[-2000:]
    usage = cli(installed, "app", "--help", cwd=tmp_path).stdout
    assert "photomaker app" in usage and "--tiny" in usage
