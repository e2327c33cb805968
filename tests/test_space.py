"""The Space deploys as-is: README.md's front matter has the keys Spaces read, with versions
that agree with requirements.txt and pyproject.toml, and preloads the default weights."""

from __future__ import annotations

import json
import re
from pathlib import Path

import huggingface_hub as hub
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from photomaker.settings import (
    DEFAULT_BASE_MODEL,
    DEFAULT_DOODLE_ADAPTER,
    DEFAULT_FAST_LORA,
    DEFAULT_STYLE_ADAPTER,
    OFFICIAL_CHECKPOINTS,
)

ROOT = Path(__file__).resolve().parent.parent
#: What Hugging Face's ZeroGPU page says (source and date inside the file).
ZEROGPU = json.loads((ROOT / "tests" / "data" / "zerogpu.json").read_text())


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "README.md must start with the Space's YAML block"
    block = text[4 : text.index("\n---\n", 4)]
    return yaml.safe_load(block)


def pins(name: str = "requirements.txt") -> dict[str, Version]:
    """A pin file's ``name==version`` lines; anything else there (a range, a URL) fails."""
    found = {}
    for line in (ROOT / name).read_text().splitlines():
        text = line.split("#")[0].strip()
        if text:
            req = Requirement(text)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name}: {line!r} is not an exact pin"
            found[req.name.lower()] = Version(spec.version)
    return found


def ranges() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower(): Requirement(d) for d in deps}


def test_front_matter_has_the_keys_spaces_read():
    config = front_matter()
    for key in ("title", "emoji", "sdk", "sdk_version", "app_file", "python_version",
                "suggested_hardware", "preload_from_hub", "startup_duration_timeout"):  # fmt: skip
        assert config.get(key), key
    assert config["sdk"] == "gradio"
    assert (ROOT / config["app_file"]).is_file() and config["app_file"] == "app.py"
    assert re.fullmatch(r"\d+[mh]", str(config["startup_duration_timeout"]))


def test_sdk_version_is_the_pinned_gradio():
    """The Space installs gradio at sdk_version: the version the suite ran with."""
    assert Version(str(front_matter()["sdk_version"])) == pins()["gradio"]


def test_python_version_is_one_zerogpu_runs_and_the_package_allows():
    python = str(front_matter()["python_version"])
    assert python in ZEROGPU["python"]
    assert python == max(ZEROGPU["python"], key=Version)  # the newer of the two
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert Version(python) in SpecifierSet(requires)


def test_hardware_is_a_real_flavor():
    flavors = {h.value for h in hub.SpaceHardware}
    assert front_matter()["suggested_hardware"] == ZEROGPU["hardware_flavor"]["value"]
    assert front_matter()["suggested_hardware"] in flavors


def test_torch_is_a_version_zerogpu_lists_with_blackwell_kernels():
    torch = pins()["torch"]
    assert str(torch) in ZEROGPU["torch"], f"torch {torch} is not one ZeroGPU lists"
    assert torch >= Version(ZEROGPU["blackwell_torch_min"]["version"])
    assert torch in ranges()["torch"].specifier
    assert all(Version(v) in ranges()["torch"].specifier for v in ZEROGPU["torch"])


def test_every_dependency_is_pinned_inside_its_range():
    pinned = pins()
    for name, req in ranges().items():
        assert name in pinned, f"{name} is not pinned in requirements.txt"
        assert pinned[name] in req.specifier, f"{name}=={pinned[name]} is outside {req}"
    dev = pins("requirements-dev.txt")
    assert not set(dev) & set(pinned), "a package pinned twice"
    assert set(pins("requirements-nodeps.txt")) == {"open-clip-torch"}


def test_the_requirements_comments_cite_the_current_zerogpu_facts():
    text = (ROOT / "requirements.txt").read_text()
    assert "2.1.0" not in text  # the old "2.1.0 up to latest" is gone
    assert all(v in text for v in ZEROGPU["torch"])


def test_default_weights_are_preloaded():
    preload = [str(item).split() for item in front_matter()["preload_from_hub"]]
    repos = {entry[0]: entry[1:] for entry in preload}
    assert DEFAULT_BASE_MODEL in repos
    repo, weight = OFFICIAL_CHECKPOINTS["v2"]  # the default version
    assert repo in repos and weight in repos[repo][0].split(",")
    assert repos.get(DEFAULT_DOODLE_ADAPTER) == []  # the doodle's adapter, the whole repo
    fast_repo, fast_file = DEFAULT_FAST_LORA.rsplit("/", 1)  # the fast mode's LoRA, one file
    assert repos.get(fast_repo) == [fast_file]
    owner, name, style_file = DEFAULT_STYLE_ADAPTER.split("/", 2)
    files = repos[f"{owner}/{name}"][0].split(",")  # the adapter and its image encoder
    folder = style_file.rsplit("/", 1)[0]
    assert style_file in files and f"{folder}/image_encoder/config.json" in files
