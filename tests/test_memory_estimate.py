"""photomaker/memory_estimate.py: each memory mode's peak estimated from the pipeline as
loaded, which ``memory auto`` reads. Calibrated on SDXL + PhotoMaker's measured peaks; the
app's default optional models (style image, doodle, fast mode) weigh on top."""

from __future__ import annotations

import logging

import pytest
import torch

from photomaker import loading, memory_estimate, settings
from photomaker.settings import Settings, gpu_memory_at_start, pick_memory_mode


@pytest.fixture(scope="module")
def full_size():
    from bench.memory import peak_estimates

    return peak_estimates()


def test_the_estimate_gives_the_measured_peaks_and_weighs_the_default_optional_models(full_size):
    """SDXL + PhotoMaker V2 at full size (meta device): the calibrated modes give the H100's
    measured peaks; with the style image's encoder and IP-Adapter, the doodle's adapter and
    the fast LoRA, full mode needs about 4.8 GB more, so a card with 12 GB free that the
    fixed table sent to full gets encoder-offload."""
    plain, defaults = full_size["plain"], full_size["defaults"]
    assert (plain["full"], plain["model-offload"]) == (10.96, 5.81)  # measured, H100
    assert plain["encoder-offload"] == 6.0
    assert 15.0 < defaults["full"] < 16.5
    assert defaults["encoder-offload"] < 8.0 - settings.AUTO_MEMORY_MARGIN_GB
    optional = full_size["optional_gb"]
    assert 3.6 < optional["style image encoder"] < 3.8  # ViT-bigG's vision tower, bf16
    ip_adapter = optional["IP-Adapter weights (its attention and image projection)"]
    assert 0.69 < ip_adapter < 0.71  # ip-adapter_sdxl.bin: 703 MB in fp16
    # Group-offload holds the IP-Adapter whole during a style-image call, on top of its share.
    assert defaults["group-offload"] == pytest.approx(plain["group-offload"] + ip_adapter, abs=0.02)
    assert pick_memory_mode(12.4) == "full"  # SDXL + PhotoMaker alone
    assert pick_memory_mode(12.4, peaks=defaults) == "encoder-offload"
    assert pick_memory_mode(20.0, peaks=defaults) == "full"
    # An 8 GB card with the desktop on it (7.5 GB free): the style image's models alone keep
    # encoder-offload out of reach; without them (--style-adapter none) it fits.
    lean = full_size["without_style_image"]
    assert defaults["full"] - lean["full"] == pytest.approx(
        optional["style image encoder"] + ip_adapter, abs=0.02
    )
    assert pick_memory_mode(7.5, peaks=defaults) == "group-offload"
    assert pick_memory_mode(7.5, peaks=lean) == "encoder-offload"


def test_the_tiny_pipelines_estimate_counts_what_each_mode_keeps():
    pipe = loading.build_pipeline(Settings(tiny=True))
    models = memory_estimate.models_of(pipe)
    assert {"image_encoder", "adapter", "unet", "id_encoder"} <= set(models)
    detached = memory_estimate.detached_style_bytes(pipe)
    assert detached > 0  # the IP-Adapter's weights, outside the UNet until a style image
    total = sum(memory_estimate.model_bytes(m) for m in models.values()) + detached
    peaks = memory_estimate.estimate_peaks_gb(pipe)
    expected_full = total / 1e9 + memory_estimate.ACTIVATIONS_UNTILED_GB
    assert peaks["full"] == pytest.approx(expected_full, abs=0.006)
    assert list(peaks) == list(memory_estimate.MODES)


def test_memory_auto_reads_the_pipeline_it_loaded(monkeypatch, request, caplog):
    request.addfinalizer(gpu_memory_at_start.cache_clear)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (int(12.4e9), 12 * 2**30))
    gpu_memory_at_start.cache_clear()
    estimates = {"full": 15.7, "encoder-offload": 6.9, "model-offload": 6.7,
                 "group-offload": 1.0, "sequential-offload": 0.6}  # fmt: skip
    on_cuda = Settings(device="cuda")
    assert on_cuda.resolved_memory() == "full"  # before loading: the table's figures
    assert on_cuda.resolved_memory(estimates) == "encoder-offload"
    assert Settings(device="cuda", memory="full").resolved_memory(estimates) == "full"
    # place() estimates from the pipeline it places and logs what it chose and why.
    pipe = loading.build_pipeline(Settings(tiny=True, fast_lora="none", doodle_adapter="none"))
    monkeypatch.setattr(memory_estimate, "estimate_peaks_gb", lambda p, **kw: estimates)
    placed = []
    monkeypatch.setattr(loading, "apply_memory_mode", lambda p, mode, *a: placed.append(mode))
    with caplog.at_level(logging.INFO, logger="photomaker.loading"):
        loading.place(pipe, on_cuda)
    assert placed == ["encoder-offload"]
    assert "memory auto: encoder-offload (an estimated 6.9 GB peak; 12.4 of 12.9 GB free" in (
        caplog.text
    )
    assert "without the style image" not in caplog.text  # same mode without it: nothing to say


def test_the_log_says_when_the_style_image_alone_keeps_a_faster_mode_out(
    monkeypatch, request, caplog
):
    """A card with 7.5 GB free: group-offload with the style image's models; encoder-offload
    would fit without them, and the log names the setting."""
    request.addfinalizer(gpu_memory_at_start.cache_clear)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (int(7.5e9), 8 * 2**30))
    gpu_memory_at_start.cache_clear()
    pipe = loading.build_pipeline(Settings(tiny=True, fast_lora="none", doodle_adapter="none"))
    with_style = {"full": 15.7, "encoder-offload": 6.9, "model-offload": 6.7,
                  "group-offload": 1.7, "sequential-offload": 1.3}  # fmt: skip
    without = {**with_style, "full": 11.3, "encoder-offload": 6.2, "model-offload": 6.0}
    asked = []

    def estimate(p, style_bytes=None, leave_out=()):
        asked.append((style_bytes, tuple(leave_out)))
        return without if leave_out else with_style

    monkeypatch.setattr(memory_estimate, "estimate_peaks_gb", estimate)
    placed = []
    monkeypatch.setattr(loading, "apply_memory_mode", lambda p, mode, *a: placed.append(mode))
    with caplog.at_level(logging.INFO, logger="photomaker.loading"):
        loading.place(pipe, Settings(device="cuda"))
    assert placed == ["group-offload"]
    assert asked == [(None, ()), (0, ("image_encoder",))]
    assert (
        "memory auto: without the style image (--style-adapter none), encoder-offload would fit "
        "(an estimated 6.2 GB peak)"
    ) in caplog.text
    # Off already: no second estimate, nothing said.
    caplog.clear()
    asked.clear()
    plain = loading.build_pipeline(
        Settings(tiny=True, fast_lora="none", doodle_adapter="none", style_adapter="none")
    )
    with caplog.at_level(logging.INFO, logger="photomaker.loading"):
        loading.place(plain, Settings(device="cuda", style_adapter="none"))
    assert asked == [(None, ())]
    assert "without the style image" not in caplog.text
