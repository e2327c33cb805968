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

Off ZeroGPU a compiled package is kept in a cache folder (``--aot-cache``, by default in
the Hugging Face cache folder), under a key that hashes everything its code depends on
(:func:`package_key`): the next start with the same torch, GPU, models and settings loads it
in seconds instead of exporting and compiling for minutes (:class:`PackageCache`).

The app turns it on with ``--aot`` (``PHOTOMAKER_AOT``; :func:`photomaker.loading.
compile_ahead_of_time`). On ZeroGPU: :func:`compile_unet` inside a long ``@spaces.GPU`` call
at start-up, its result returned to the main process and :func:`apply_compiled` there (what a
GPU worker changes does not persist; :func:`photomaker.zerogpu.compile_unet_on_gpu`).
Elsewhere: :func:`compile_unet_ahead_of_time`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
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
    return load_package(package_path, weights, device)


def load_package(package_path: str, weights: Mapping[str, Any], device: str) -> Any:
    """A weightless ``.pt2`` package, test-loaded in a child process
    (:func:`check_package_loads`), loaded, and given ``weights`` as its user-managed
    constants (every constant it names must be there)."""
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


#: Raise when this module changes what a package holds in a way :func:`package_key` cannot
#: see (how the UNet is exported or compiled): old cached packages then stop matching.
PACKAGE_FORMAT = 1
#: How many compiled UNets the cache keeps (the newest): one per torch, GPU, dtype, model
#: and shape range used lately. Each is code only (the weights are the UNet's own).
CACHE_ENTRIES = 4


def _device_identity(device: str) -> str:
    """What the compiled code is specific to: the GPU model and compute capability, or the
    CPU architecture and the vector instruction set Inductor picked."""
    if torch.device(device).type == "cuda":
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda {torch.cuda.get_device_name(index)} sm{major}{minor}"
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return f"{torch.device(device).type} {platform.machine()} {pick_vec_isa()}"


def _describe_leaf(leaf: Any) -> Any:
    if isinstance(leaf, torch.Tensor):
        return [list(leaf.shape), str(leaf.dtype), leaf.device.type]
    return repr(leaf)


def package_key(unet: Any, call: CapturedCall, shapes: ShapeRange, device: str) -> str:
    """The cache key of a compiled UNet: a hash of everything its code depends on — the
    versions of torch, diffusers, peft and this package, the device (:func:`_device_identity`),
    the compile settings, the UNet's class, attention processors and parameter names, shapes
    and dtypes, the captured call's structure and argument shapes, the shape range. The
    weights' values are not in it: the package holds none (they are given at load time)."""
    from . import __version__

    leaves, spec = pytree.tree_flatten((call.args, call.kwargs))
    processors = sorted({type(p).__name__ for p in getattr(unet, "attn_processors", {}).values()})
    facts = {
        "format": PACKAGE_FORMAT,
        "versions": [
            torch.__version__,
            str(torch.version.cuda),
            version("diffusers"),
            version("peft"),
            __version__,
        ],
        "device": _device_identity(device),
        "configs": weightless_package_configs(),
        "unet": [type(unet).__name__, processors],
        "state": [[name, list(t.shape), str(t.dtype)] for name, t in unet.state_dict().items()],
        "call": [str(spec), [_describe_leaf(leaf) for leaf in leaves]],
        "shapes": [list(shapes.batch), list(shapes.latent)],
    }
    text = json.dumps(facts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def about(unet: Any, shapes: ShapeRange, device: str) -> dict[str, Any]:
    """What a cache entry's ``about.json`` says, for a person looking in the folder."""
    return {"torch": torch.__version__, "device": _device_identity(device),
            "dtype": str(unet.dtype), "shapes": str(shapes),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip


class PackageCache:
    """A folder of compiled UNets, one sub-folder per :func:`package_key`
    (``unet.pt2`` and ``about.json``). An entry appears whole or not at all: it is built in
    a temporary sibling folder and renamed into place once its package has loaded."""

    PACKAGE = "unet.pt2"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).expanduser()

    def find(self, key: str) -> Path | None:
        """The package of ``key``, or ``None`` (its entry is marked as used: newest kept)."""
        path = self.folder / key / self.PACKAGE
        if not path.is_file():
            return None
        try:
            os.utime(path.parent)
        except OSError:  # a read-only cache still serves
            pass
        return path

    def drop(self, key: str) -> None:
        shutil.rmtree(self.folder / key, ignore_errors=True)

    @contextmanager
    def adding(self, key: str, about: Mapping[str, Any]) -> Iterator[Path | None]:
        """A path to write ``key``'s package to; the entry is kept if the block succeeds
        (a failed compile leaves nothing behind), then the oldest entries beyond
        :data:`CACHE_ENTRIES` are removed. A cache folder that cannot be written only costs
        the cache (a warning): ``None`` then, and the package goes where it would without one."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            building = Path(tempfile.mkdtemp(prefix=".building-", dir=self.folder))
        except OSError as error:
            logger.warning("the compiled-UNet cache %s cannot be written (%s): not kept",
                           self.folder, error)  # fmt: skip
            yield None
            return
        try:
            yield building / self.PACKAGE
            (building / "about.json").write_text(json.dumps(dict(about), indent=1) + "\n")
            target = self.folder / key
            shutil.rmtree(target, ignore_errors=True)
            os.replace(building, target)
            logger.info("compiled UNet kept in the cache: %s", target / self.PACKAGE)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        self.prune()

    def prune(self, keep: int = CACHE_ENTRIES) -> None:
        """Remove all but the ``keep`` most recently used entries."""
        entries = [p for p in self.folder.iterdir() if (p / self.PACKAGE).is_file()]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[keep:]:
            shutil.rmtree(old, ignore_errors=True)


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
    from_cache: bool = False


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
    cache: str | os.PathLike | None = None,
) -> CompiledUNet:
    """Capture, export and AOT-compile ``pipe.unet`` (raises on failure); with ``cache`` (a
    folder, off ZeroGPU) load the package an earlier start compiled for the same
    :func:`package_key` instead, or keep the new one there. On ZeroGPU call it
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
    spec = pytree.tree_flatten((call.args, call.kwargs))[1]
    weights, device = pipe.unet.state_dict(), str(pipe.unet.device)
    store = PackageCache(cache) if cache is not None and not on_zerogpu() else None
    key = package_key(pipe.unet, call, shapes, device) if store else ""
    if store and (cached := store.find(key)):
        try:
            compiled = load_package(str(cached), weights, device)
        except Exception as error:  # a damaged or foreign file: drop it, compile anew
            logger.warning("the cached compiled UNet %s could not be used (%s: %s); compiling "
                           "again", cached, type(error).__name__, error)  # fmt: skip
            store.drop(key)
        else:
            logger.info("compiled UNet loaded from the cache: %s", cached)
            return CompiledUNet(compiled, spec, shapes, time.perf_counter() - start, True)
    exported = export_unet(pipe.unet, call, shapes)
    if store and package_path is None:
        with store.adding(key, about(pipe.unet, shapes, device)) as path:
            compiled = compile_exported(exported, path and str(path), weights, device)
    else:
        compiled = compile_exported(exported, package_path, weights=weights, device=device)
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
    logger.info(
        "compiled UNet in place (%s; %s in %.0f s)",
        compiled.shapes,
        "loaded from the cache" if compiled.from_cache else "compiled",
        compiled.seconds,
    )
    return forward


def compile_unet_ahead_of_time(
    pipe: Any,
    example_call: Mapping[str, Any],
    shapes: ShapeRange | None = None,
    package_path: str | None = None,
    cache: str | os.PathLike | None = None,
) -> CompiledUNetForward | None:
    """:func:`compile_unet` then :func:`apply_compiled`, in one process (a dedicated GPU, the
    tests); returns the compiled forward, or ``None`` — with a warning, the UNet left eager —
    when anything fails. On ZeroGPU use the two steps (see :func:`compile_unet`)."""
    try:
        compiled = compile_unet(pipe, example_call, shapes, package_path, cache)
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
