"""Start ``app.py`` under the ``spaces`` package's real ZeroGPU mode, on a CPU-only machine.

``python tests/zerogpu/run_app.py [app flags]`` with ``SPACES_ZERO_GPU=true`` and
``SPACES_ZERO_DEVICE_API_URL`` pointing at :mod:`tests.zerogpu.device_api`. What spaces does
is left as it is: it patches torch at import (weights moved ``.to("cuda")`` become stand-ins
in this process), packs them to disk at ``launch()``, schedules each call with the device API,
forks a worker, pickles the call into it, moves the packed weights in and pickles the result
back. Only what a CPU-only torch wheel lacks is filled in:

* before ``import spaces``: ``torch.version.cuda`` (None on a CPU wheel; spaces reads it at
  import), ``torch._C._cuda_init`` (missing; spaces saves it to restore in the worker) and a
  picklable ``torch.cuda._is_in_bad_fork`` (spaces calls it in a forked process pool);
* in the worker, the two steps that touch a real GPU: ``spaces.zero.torch.init`` (CUDA init)
  and ``spaces.zero.torch.move``, replaced by :func:`cpu_move`, which reads spaces' own pack
  files and points each stand-in at its weights on the CPU.

Ahead-of-time compilation (``--aot``) runs as on a Space up to the compile itself: the long
``spaces.GPU`` call at start-up, scheduled with the device API, in a forked worker, capturing
the UNet call with ``spaces.aoti_capture``; its result pickled back and applied in this
process before ``launch()``. What AOTInductor would return is replaced by
:class:`CompiledStandIn`: a real compile of even the tiny UNet takes about 45 s on this CPU
(tests/test_aot.py has one), and spaces' compiled model cannot be pickled on a CPU-only
machine (its weights are pinned on the way, which needs an accelerator).

Faults for the test, read by the worker at each pipeline call from the JSON file named by
``PHOTOMAKER_TEST_FAULTS``: ``{"fault": "oom" | "boom" | "input" | null, "step_sleep":
seconds}``. The worker logs what each job brought (photos, or the cached ID encoding).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

logger = logging.getLogger("zerogpu.emulation")


def _no_cuda_init() -> None:
    raise RuntimeError("no CUDA in this torch build (ZeroGPU emulation on the CPU)")


def _not_in_bad_fork() -> bool:
    return False


if torch.version.cuda is None:
    torch.version.cuda = "12.4"
if not hasattr(torch._C, "_cuda_init"):
    torch._C._cuda_init = _no_cuda_init
torch.cuda._is_in_bad_fork = _not_in_bad_fork

import spaces  # noqa: E402,F401  (ZeroGPU mode: patches torch now)
import spaces.zero.torch as zero_torch  # noqa: E402
from spaces.zero.torch import patching  # noqa: E402


def cpu_init(nvidia_uuid: str) -> None:
    """``spaces.zero.torch.init`` without CUDA: only what it sets in the environment."""
    os.environ["CUDA_VISIBLE_DEVICES"] = nvidia_uuid


def cpu_move(callback=None) -> None:
    """``spaces.zero.torch.move`` onto the CPU: the tensors made after packing, then each of
    spaces' pack files, read in its layout (batches, then big tensors, each padded to a page),
    every stand-in (``fake``) pointed at its tensor as spaces' ``pack_to_cuda`` does."""
    callback = callback or (lambda n: None)
    moved = 0
    for fake, original in list(patching.cuda_aliases.items()):
        if original is not None:
            fake.data = torch.Tensor(original)
            moved += original.numel() * original.element_size()
    files = 0
    for pack in patching.tensor_packs:
        data = bytearray(Path(pack.path()).read_bytes())
        files += 1
        offset = 0
        for meta, size, aligned in [t for batch in pack.batches for t in batch] + pack.big_tensors:
            raw = torch.frombuffer(data, dtype=torch.uint8, count=size, offset=offset).clone()
            tensor = torch.empty(0, dtype=meta.dtype).set_(
                raw.untyped_storage(), 0, meta.shape, meta.stride()
            )
            for fake in pack.fakes[meta]:
                fake.data = tensor
            offset += aligned
            moved += size
            callback(size)
    logger.info("moved %d bytes from %d pack file(s) into worker %d", moved, files, os.getpid())


zero_torch.init = cpu_init
zero_torch.move = cpu_move


def _faults() -> dict:
    path = os.environ.get("PHOTOMAKER_TEST_FAULTS")
    if not path or not Path(path).exists():
        return {}
    return json.loads(Path(path).read_text() or "{}")


def _install_faults() -> None:
    """Wrap the pipeline call (in the worker) with the faults the test asks for."""
    import time

    from photomaker.pipeline import PhotoMakerStableDiffusionXLPipeline as Pipeline

    # Every pipeline class's __call__ ends in the shared _generate: one place for the faults.
    call = Pipeline._generate

    def faulty_call(self, *args, **kwargs):
        faults = _faults()
        if faults.get("fault") == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if faults.get("fault") == "boom":
            raise RuntimeError("emulated fault inside the GPU call")
        if faults.get("fault") == "input":
            from photomaker.errors import PhotoMakerInputError

            raise PhotoMakerInputError("Emulated input problem found inside the GPU call.")
        sleep = float(faults.get("step_sleep") or 0)
        if sleep:
            inner = kwargs.get("callback_on_step_end")

            def slow_step(pipe, step, timestep, callback_kwargs):
                logger.info("slow step %d in worker %d", step, os.getpid())
                time.sleep(sleep)
                return inner(pipe, step, timestep, callback_kwargs) if inner else callback_kwargs

            kwargs["callback_on_step_end"] = slow_step
        return call(self, *args, **kwargs)

    Pipeline._generate = faulty_call

    from photomaker.service import PhotoMakerService

    run_job = PhotoMakerService.run_job

    def logged_run_job(self, job, cancel=None):
        logger.info(
            "worker %d got a job with %s",
            os.getpid(),
            "the cached ID encoding" if job.id_pixel_values is None else "the photos",
        )
        return run_job(self, job, cancel=cancel)

    PhotoMakerService.run_job = logged_run_job


class CompiledStandIn:
    """Stands in for spaces' compiled model: picklable, without weights; applied in the app's
    process, it runs the eager forward of the UNet it was applied to (which the workers
    forked later inherit) and logs the first call in each process."""

    unet = None
    _logged_in: int | None = None

    def __getstate__(self) -> dict:
        return {}

    def __call__(self, *args, **kwargs):
        if self._logged_in != os.getpid():
            self._logged_in = os.getpid()
            logger.info("compiled stand-in ran in worker %d", os.getpid())
        return type(self.unet).forward(self.unet, *args, **kwargs)


def _install_aot_stand_in() -> None:
    """The real ``aot.compile_unet`` (its capture through ``spaces.aoti_capture`` here) with
    the stand-in for export + compile; ``aot.apply_compiled`` points the stand-in at the UNet."""
    from photomaker import aot

    def export_unet(unet, call, shapes):
        logger.info("stand-in compile in worker %d", os.getpid())
        return None

    apply_compiled = aot.apply_compiled

    def apply_to(pipe, compiled, drain=False):
        compiled.compiled.unet = pipe.unet
        return apply_compiled(pipe, compiled, drain)

    aot.export_unet = export_unet
    aot.compile_exported = lambda exported, *args, **kwargs: CompiledStandIn()
    aot.apply_compiled = apply_to


if __name__ == "__main__":
    _install_faults()
    _install_aot_stand_in()
    import app

    sys.exit(app.main(sys.argv[1:]))
