"""The app package's own contracts: one table of parameters behind the API, the README's
API table made from it, and the one Gradio internal we lean on (fails loudly if it moves)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import gradio as gr

from photomaker import params
from photomaker.service import GenerationRequest, check_request
from photomaker.web import api, compat

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_api_table_is_the_parameter_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- api-table -->") + len("<!-- api-table -->\n")
    end = readme.index("<!-- /api-table -->")
    assert readme[start:end] == params.markdown_table(), (
        "README's API table differs from photomaker/params.py: paste "
        "`python -c 'import photomaker.params as p; print(p.markdown_table())'`"
    )


def test_request_defaults_and_limits_come_from_the_table():
    request = GenerationRequest(photos=[], prompt="a man img")
    for p in params.PARAMS:
        if p.default is not None and p.name != "prompt":
            assert getattr(request, p.name) == p.default, p.name
    for name, (low, high) in params.LIMITS.items():
        assert (params.param(name).low, params.param(name).high) == (low, high)


def test_the_service_and_the_api_refuse_the_same_numbers():
    for p in params.PARAMS:
        if p.kind not in ("integer", "number"):
            continue
        for value, ok in ((p.low, True), (p.high, True), (p.high + 1, False), (p.low - 1, False)):
            request = GenerationRequest(photos=[], prompt="a man img", randomize_seed=False)
            setattr(request, p.name, value)
            try:
                check_request(request)
                service_ok = True
            except params.PhotoMakerInputError:
                service_ok = False
            try:
                params.check_value(p, value)
                api_ok = True
            except params.PhotoMakerInputError:
                api_ok = False
            assert service_ok == api_ok == ok, (p.name, value)


def test_the_endpoint_signature_is_the_table():
    endpoint = api.endpoint(lambda **kw: kw, styles=["Watercolor"])
    parameters = inspect.signature(endpoint).parameters
    assert list(parameters)[:-1] == [p.name for p in params.API_PARAMS]
    defaults = {name: p.default for name, p in parameters.items()}
    assert defaults["adapter_conditioning_scale"] == 0.7 and defaults["doodle"] is None
    assert defaults["prompt"] is inspect.Parameter.empty  # required, as before


def test_old_requests_get_the_defaults_of_the_later_parameters():
    eleven = ["photos?", "p", "n", "s", "a", 2, 20, 1, 5.0, 1, False]
    later = [None, 0.7, 0.8, False, None, 0.5]  # doodle, fast mode, style image
    assert api.check_request_files([None, *eleven[1:]])[11:] == later
    fourteen = [None, *eleven[1:], None, 0.5, 0.5]  # before the fast mode
    assert api.check_request_files(fourteen)[11:] == [None, 0.5, 0.5, False, None, 0.5]
    assert api.check_request_files([*fourteen, True])[11:] == [None, 0.5, 0.5, True, None, 0.5]
    assert len(api.check_request_files([*fourteen, True, None, 0.9])) == 17


def test_gradio_still_has_what_compat_overrides():
    """If this fails, Gradio changed Blocks.preprocess_data: see photomaker/web/compat.py."""
    assert compat.supported(), inspect.signature(gr.Blocks.preprocess_data)
    assert compat.blocks_class() is compat.PhotoMakerBlocks
    assert re.match(r"\d+\.\d+", gr.__version__)


def test_no_gradio_instance_is_patched():
    """The app assigns nothing into Gradio classes or instances."""
    sources = "\n".join(p.read_text() for p in (ROOT / "photomaker" / "web").glob("*.py"))
    assert not re.search(r"\.(preprocess|api_info|example_payload|preprocess_data)\s*=", sources)


def test_the_gpu_lock_is_per_pipeline():
    from types import SimpleNamespace

    from photomaker.service import gpu_lock

    first, second = SimpleNamespace(), SimpleNamespace()
    assert gpu_lock(first) is gpu_lock(first)
    with gpu_lock(first):  # one pipeline busy: another one's jobs still run
        assert gpu_lock(second).acquire(timeout=1)
        gpu_lock(second).release()
