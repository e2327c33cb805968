"""The Space deploys as-is: README.md's front matter has the keys Spaces read, with versions
that agree with requirements.txt and pyproject.toml, and preloads the default weights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from photomaker.settings import DEFAULT_BASE_MODEL, DEFAULT_DOODLE_ADAPTER, OFFICIAL_CHECKPOINTS

ROOT = Path(__file__).resolve().parent.parent
#: torch versions ZeroGPU lists as supported (huggingface/hub-docs, docs/hub/spaces-zerogpu.md);
#: it says "almost all versions from 2.1.0 to latest", and 2.3.x is not.
ZEROGPU_TORCH = ["2.1.0", "2.1.1", "2.1.2", "2.2.0", "2.2.2", "2.4.0", "2.5.1", "2.6.0",
                 "2.7.1", "2.8.0"]  # fmt: skip
ZEROGPU_PYTHON = "3.10.13"


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n"), "README.md must start with the Space's YAML block"
    block = text[4 : text.index("\n---\n", 4)]
    return yaml.safe_load(block)


def requirements() -> dict[str, Requirement]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    reqs = [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    return {r.name.lower(): r for r in reqs}


def test_front_matter_has_the_keys_spaces_read():
    config = front_matter()
    for key in ("title", "emoji", "sdk", "sdk_version", "app_file", "python_version",
                "suggested_hardware", "preload_from_hub", "startup_duration_timeout"):  # fmt: skip
        assert config.get(key), key
    assert config["sdk"] == "gradio"
    assert (ROOT / config["app_file"]).is_file() and config["app_file"] == "app.py"
    assert re.fullmatch(r"\d+[mh]", str(config["startup_duration_timeout"]))


def test_sdk_version_is_inside_the_gradio_range():
    config = front_matter()
    gradio = requirements()["gradio"]
    assert Version(str(config["sdk_version"])) in gradio.specifier, (config["sdk_version"], gradio)


def test_python_version_is_zerogpus_and_the_packages():
    config = front_matter()
    python = str(config["python_version"])
    assert python == ZEROGPU_PYTHON
    pyproject = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+; we run on 3.10
    requires = re.search(r'^requires-python\s*=\s*"([^"]+)"', pyproject, re.M).group(1)
    assert Version(python) in SpecifierSet(requires)


def test_hardware_is_a_real_flavor():
    hub = pytest.importorskip("huggingface_hub")
    flavors = {h.value for h in hub.SpaceHardware}
    assert front_matter()["suggested_hardware"] in flavors


def test_torch_range_stays_within_what_zerogpu_runs():
    torch = requirements()["torch"]
    allowed = [v for v in ZEROGPU_TORCH if Version(v) in torch.specifier]
    assert allowed, f"{torch} allows none of ZeroGPU's torch versions"
    for unsupported in ("2.0.1", "2.3.0", "2.3.1"):
        assert Version(unsupported) not in torch.specifier, unsupported


def test_default_weights_are_preloaded():
    preload = [str(item).split() for item in front_matter()["preload_from_hub"]]
    repos = {entry[0]: entry[1:] for entry in preload}
    assert DEFAULT_BASE_MODEL in repos
    repo, weight = OFFICIAL_CHECKPOINTS["v2"]  # the default version
    assert repo in repos and weight in repos[repo][0].split(",")
    assert repos.get(DEFAULT_DOODLE_ADAPTER) == []  # the doodle's adapter, the whole repo
