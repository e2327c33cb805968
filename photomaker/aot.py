"""Ahead-of-time compiled UNet (AOTInductor), for ZeroGPU where ``torch.compile`` cannot run.

One real UNet call is captured (the arguments the pipeline passes), the UNet is exported
with ``torch.export.export`` and **dynamic shapes** — the batch (1–4 images, with or without
CFG) and the latent height and width (every aspect-ratio preset) are ``torch.export.Dim``\\ s —
and compiled once with AOTInductor. On ZeroGPU the ``spaces`` wrappers do the capture, the
compile and the apply (``spaces.aoti_capture`` / ``aoti_compile`` / ``aoti_apply``: the
compiled model is pickled to the GPU worker with its weights); elsewhere
the same steps run here: a ``.pt2`` package of code only, test-loaded in a child process
(a bad package can crash the loader), then loaded with the UNet's own parameters as its
constants (user-managed: no second copy of the weights, and no 5 GB of constants linked into
the shared library).

The compiled forward serves the calls it was compiled for; anything else runs the eager UNet
(kept unless ``spaces.aoti_apply`` drained it): a call whose argument structure differs (the
doodle's or a ControlNet's residuals), a size outside the compiled range, and fast mode
(its LoRA adapter is not in the graph, and on ZeroGPU a fused fast call's merged weights
are not the graph's own copy of the weights). If export, compile or the test load fails, the
pipeline stays eager and a warning says why (:func:`compile_unet_ahead_of_time` returns
``None``).

The app turns it on with ``--aot`` (``PHOTOMAKER_AOT``; :func:`photomaker.loading.
compile_ahead_of_time`). On ZeroGPU: :func:`compile_unet` inside a long ``@spaces.GPU`` call
at start-up, its result returned to the main process and :func:`apply_compiled` there (what a
GPU worker changes does not persist; :func:`photomaker.zerogpu.compile_unet_on_gpu`).
Elsewhere: :func:`compile_unet_ahead_of_time`.
"""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

from .settings import on_zerogpu

logger = logging.getLogger(__name__)

#: Latent sides are multiples of this (SDXL's VAE factor 8 × presets on a 64-px grid gives
#: latents on an 8 grid; the tiny presets snap to 16 px, latents on an 8 grid too).
LATENT_GRID = 8


@dataclass(frozen=True)
class ShapeRange:
    """What the compiled graph accepts: UNet batch and latent sides (inclusive)."""

    batch: tuple[int, int] = (1, 8)
    latent: tuple[int, int] = (64, 192)

    @classmethod
    def for_tiny(cls) -> ShapeRange:
        return cls(batch=(1, 8), latent=(16, 64))


@dataclass
class CapturedCall:
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


class _Captured(Exception):
    def __init__(self, args: tuple, kwargs: dict):
        super().__init__("captured")
        self.call = CapturedCall(args, kwargs)


def capture_unet_call(pipe: Any, call_kwargs: Mapping[str, Any]) -> CapturedCall:
    """The arguments of the pipeline's first UNet call for ``call_kwargs`` (the call stops
    there). On ZeroGPU through ``spaces.aoti_capture``, elsewhere the same trick here."""
    if on_zerogpu():
        import spaces

        with spaces.aoti_capture(pipe.unet) as call:
            pipe(**call_kwargs)
        return CapturedCall(tuple(call.args), dict(call.kwargs))

    def capture(*args: Any, **kwargs: Any) -> Any:
        raise _Captured(args, kwargs)

    original = pipe.unet.__dict__.get("forward")
    pipe.unet.forward = capture
    try:
        pipe(**call_kwargs)
    except _Captured as captured:
        return captured.call
    finally:
        if original is None:
            del pipe.unet.forward
        else:
            pipe.unet.forward = original
    raise RuntimeError("the pipeline call never reached the UNet")


def dynamic_shapes(unet: Any, call: CapturedCall, shapes: ShapeRange) -> dict[str, Any]:
    """``torch.export`` dynamic shapes for the UNet's arguments: dim 0 of every tensor that
    has the batch is ``batch``; the sample's dims 2 and 3 are multiples of
    :data:`LATENT_GRID` within ``shapes.latent``."""
    from torch.export import Dim

    batch = Dim("batch", min=shapes.batch[0], max=shapes.batch[1])
    low, high = (side // LATENT_GRID for side in shapes.latent)
    height = LATENT_GRID * Dim("latent_h", min=low, max=high)
    width = LATENT_GRID * Dim("latent_w", min=low, max=high)
    bound = inspect.signature(unet.forward).bind(*call.args, **call.kwargs).arguments
    sample = bound["sample"]
    size = sample.shape[0]

    def spec(value: Any, is_sample: bool = False) -> Any:
        if isinstance(value, torch.Tensor):
            dims: dict[int, Any] = {}
            if value.ndim >= 1 and value.shape[0] == size:
                dims[0] = batch
            if is_sample:
                dims[2], dims[3] = height, width
            return dims or None
        if isinstance(value, dict):
            return {k: spec(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(spec(v) for v in value)
        return None

    return {name: spec(value, name == "sample") for name, value in bound.items()}


def export_unet(unet: Any, call: CapturedCall, shapes: ShapeRange) -> Any:
    """``torch.export.export`` of the UNet on the captured call, with dynamic shapes."""
    with torch.no_grad():
        return torch.export.export(
            unet,
            call.args,
            call.kwargs,
            dynamic_shapes=dynamic_shapes(unet, call, shapes),
            strict=False,
        )


def weightless_package_configs() -> dict[str, Any]:
    """Inductor settings of the compile off ZeroGPU, the ones ``spaces.aoti_compile`` uses:
    the weights stay out of the shared library and out of the package (they are given at
    load time), and no constant folding, so the graph's constants are exactly the module's
    parameters by name. The on-disk setting tells the loader the constants come from
    outside: a package built without it crashed torch 2.11's CUDA loader (a segfault, on an
    H200); that this setting alone avoids the crash is not yet verified on a GPU."""
    configs: dict[str, Any] = {
        "aot_inductor.package_constants_in_so": False,
        "aot_inductor.package": True,
        "always_keep_tensor_constants": True,
        "joint_graph_constant_folding": False,
    }
    if _torch_at_least(2, 10):
        configs["aot_inductor.package_constants_on_disk_format"] = "pickle_weights"
    else:
        configs["aot_inductor.package_constants_on_disk"] = True
    return configs


def _torch_at_least(major: int, minor: int) -> bool:
    found = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return found >= (major, minor)


#: How long the child process that test-loads a compiled package may take.
LOAD_CHECK_TIMEOUT_S = 300


def check_package_loads(package_path: str, device: str) -> None:
    """Load the package once in a child process first: a package the loader cannot take can
    crash the process outright (a segfault, seen on a GPU), which no ``except`` catches. So
    the child takes that risk, and a failure here is an ordinary error (the app then stays
    eager and says why)."""
    script = (
        "import sys, torch\n"
        "device = torch.device(sys.argv[2])\n"
        "if device.type == 'cuda' and device.index is not None: torch.cuda.set_device(device)\n"
        "torch._inductor.aoti_load_package(sys.argv[1]).get_constant_fqns()\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, package_path, device],
            capture_output=True,
            text=True,
            timeout=LOAD_CHECK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"loading the compiled package took over {error.timeout} s") from None
    if done.returncode != 0:
        how = (
            f"killed by signal {-done.returncode}"
            if done.returncode < 0
            else f"exit status {done.returncode}"
        )
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"loading the compiled package failed in a test process ({how}): {last}")


def compile_exported(
    exported: Any,
    package_path: str | None = None,
    weights: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> Callable[..., Any]:
    """The AOTInductor-compiled callable of an exported program: ``spaces.aoti_compile`` on
    ZeroGPU; elsewhere the same steps here — the code compiled into a ``.pt2`` package
    without weights, test-loaded in a child process (:func:`check_package_loads`), loaded,
    and given ``weights`` (the module's state dict) as user-managed constants: it runs on
    those very tensors, so it costs no extra memory and sees in-place changes of them."""
    if on_zerogpu():
        import spaces

        return spaces.aoti_compile(exported)
    if weights is None:
        raise ValueError("compile_exported needs the module's weights off ZeroGPU")
    from torch._inductor.package.package import package_aoti

    if package_path is None:
        folder = tempfile.mkdtemp(prefix="photomaker-aoti-")
        package_path = os.path.join(folder, "unet.pt2")
    module = exported.module()
    args, kwargs = exported.example_inputs
    artifacts = torch._inductor.aot_compile(
        module, args, kwargs, options=weightless_package_configs()
    )
    package_aoti(package_path, [item for item in artifacts if isinstance(item, str)])
    check_package_loads(package_path, device)
    loaded = torch._inductor.aoti_load_package(package_path)
    names = loaded.get_constant_fqns()
    missing = [name for name in names if name not in weights]
    if missing:
        raise RuntimeError(f"the compiled UNet wants constants it was not given: {missing[:3]}")
    loaded.load_constants(
        {name: weights[name] for name in names}, check_full_update=True, user_managed=True
    )
    return loaded


def _fast_adapter_on(unet: Any) -> bool:
    """True in a fast call: the fast adapter enabled, or merged into the weights (a fused
    fast call, :func:`photomaker.fast.fused_fast_weights`). The adapter is not in the graph,
    and on ZeroGPU the graph holds its own copy of the quality weights, so neither may run on
    it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(
        isinstance(m, BaseTunerLayer)
        and "fast" in m.lora_A
        and (not m.disable_adapters or "fast" in m.merged_adapters)
        for m in unet.modules()
    )


@dataclass
class CompiledUNet:
    """What :func:`compile_unet` returns: the compiled callable, the argument structure it was
    compiled for, its shape range. Picklable on ZeroGPU (``spaces.aoti_compile``'s model and a
    pytree spec), so it can be returned from a ``@spaces.GPU`` function to the main process."""

    compiled: Callable[..., Any]
    call_spec: Any  # torch.utils._pytree.TreeSpec of (args, kwargs)
    shapes: ShapeRange
    seconds: float


class CompiledUNetForward:
    """The UNet's ``forward`` replacement: the compiled graph for the calls it covers, the
    eager forward for the rest (counted in ``compiled_calls`` / ``eager_calls``)."""

    def __init__(self, unet: Any, compiled: CompiledUNet):
        self._unet = unet
        self._compiled = compiled.compiled
        self._spec = compiled.call_spec
        self._shapes = compiled.shapes
        self.compiled_calls = 0
        self.eager_calls = 0

    def covers(self, args: tuple, kwargs: dict) -> bool:
        if pytree.tree_flatten((args, kwargs))[1] != self._spec:
            return False
        sample = args[0] if args else kwargs.get("sample")
        batch, _, height, width = sample.shape
        low, high = self._shapes.latent
        return (
            self._shapes.batch[0] <= batch <= self._shapes.batch[1]
            and all(low <= side <= high and side % LATENT_GRID == 0 for side in (height, width))
            and not _fast_adapter_on(self._unet)
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.covers(args, kwargs):
            self.compiled_calls += 1
            return self._compiled(*args, **kwargs)
        self.eager_calls += 1
        return type(self._unet).forward(self._unet, *args, **kwargs)


def compile_unet(
    pipe: Any,
    example_call: Mapping[str, Any],
    shapes: ShapeRange | None = None,
    package_path: str | None = None,
) -> CompiledUNet:
    """Capture, export and AOT-compile ``pipe.unet`` (raises on failure). On ZeroGPU call it
    inside a ``@spaces.GPU`` function (long enough for the compile) and return its result:
    changes made in the GPU worker do not reach the main process, which then calls
    :func:`apply_compiled`::

        @spaces.GPU(duration=1500)
        def compile_once():
            return aot.compile_unet(pipe, example_call)

        aot.apply_compiled(pipe, compile_once())

    ``example_call``: pipeline-call arguments of a typical request (its first UNet call is
    captured; the call does not run to the end)."""
    shapes = shapes or ShapeRange()
    start = time.perf_counter()
    call = capture_unet_call(pipe, example_call)
    exported = export_unet(pipe.unet, call, shapes)
    compiled = compile_exported(
        exported, package_path, weights=pipe.unet.state_dict(), device=str(pipe.unet.device)
    )
    spec = pytree.tree_flatten((call.args, call.kwargs))[1]
    return CompiledUNet(compiled, spec, shapes, time.perf_counter() - start)


def apply_compiled(
    pipe: Any, compiled: CompiledUNet, drain: bool = False
) -> CompiledUNetForward | None:
    """Put the compiled forward in place (returned, with its call counters).

    ``drain`` (ZeroGPU only): ``spaces.aoti_apply`` instead, which frees the eager weights
    (the compiled model carries its own copy) — half the UNet's memory, but then every call
    must be one the graph covers: no fast mode, no doodle or ControlNet residuals, no other
    sizes. Returns ``None`` then."""
    if drain and on_zerogpu():
        import spaces

        spaces.aoti_apply(compiled.compiled, pipe.unet)
        logger.info("compiled UNet applied, eager weights drained")
        return None
    forward = CompiledUNetForward(pipe.unet, compiled)
    pipe.unet.forward = forward
    logger.info("compiled UNet in place (%s; compiled in %.0f s)", compiled.shapes,
                compiled.seconds)
    return forward


def compile_unet_ahead_of_time(
    pipe: Any,
    example_call: Mapping[str, Any],
    shapes: ShapeRange | None = None,
    package_path: str | None = None,
) -> CompiledUNetForward | None:
    """:func:`compile_unet` then :func:`apply_compiled`, in one process (a dedicated GPU, the
    tests); returns the compiled forward, or ``None`` — with a warning, the UNet left eager —
    when anything fails. On ZeroGPU use the two steps (see :func:`compile_unet`)."""
    try:
        compiled = compile_unet(pipe, example_call, shapes, package_path)
    except Exception as error:  # any failure: stay eager, say why
        logger.warning(
            "ahead-of-time compilation of the UNet failed, so it runs eager: %s: %s",
            type(error).__name__,
            error,
        )
        return None
    return apply_compiled(pipe, compiled)


def compiled_forward_of(pipe: Any) -> CompiledUNetForward | None:
    """The compiled forward in place on ``pipe``'s UNet (with its call counters), or ``None``
    when the UNet runs eager."""
    unet = getattr(pipe, "unet", None)
    forward = None if unet is None else unet.__dict__.get("forward")
    return forward if isinstance(forward, CompiledUNetForward) else None


def remove_compiled_forward(pipe: Any) -> None:
    """Back to the eager forward (when the weights were not drained)."""
    if compiled_forward_of(pipe) is not None:
        del pipe.unet.forward
