"""One generation, from what a person typed and uploaded to images.

:class:`PhotoMakerService` is the one entry point the UI, the CLI and the tests call:
``service.generate(GenerationRequest(...)) -> GenerationResult``. Everything a request can
get wrong is checked here, in this order, before any GPU work, and raised as
:class:`~photomaker.errors.PhotoMakerInputError` with a message the user can act on:

1. numbers in range, a known style and aspect ratio, and a fast LoRA on the server when
   the request asks for the fast mode (whose steps and guidance then replace the request's);
2. the photos load (images, not too many);
3. the doodle, control image or style image, when one is given: the server has what reads it
   (a T2I-Adapter, a ControlNet, an IP-Adapter), and it loads;
4. the trigger word and the token budget of the *styled* prompt;
5. faces (V2, or when cropping): every photo needs one, unless the service was told to skip
   photos without a face, in which case it drops them and says which.

Generation itself is split in two so the app can put only the second half on the GPU
(``spaces.GPU`` on ZeroGPU): :meth:`PhotoMakerService.prepare` does all of the above on the
CPU, CLIP preprocessing of the photos included, and returns a small picklable
:class:`GenerationJob` (tensors, no photos; nothing of the photos at all when their encoding
is cached); :meth:`PhotoMakerService.run_job` encodes the ID photos (or reuses the cached
encoding) and denoises.

The GPU part is entered by one job at a time per pipeline (:func:`~.runtime.gpu_lock`), whatever
the caller's concurrency, and can be cancelled between steps (``cancel=threading.Event()``). What fails in
it reaches the user as :class:`~photomaker.errors.PhotoMakerServerError` — out of memory with
what to change, anything else with an error id that is in the log beside the traceback —
never as a traceback, and the server serves the next request.

After the GPU part, back on the CPU, each image gets its ID likeness
(:func:`~photomaker.faces.likeness`: the cosine similarity of ArcFace embeddings, the paper's
ID-similarity metric) when the service has a face analyzer for it.

The package, by job: :mod:`.types` (request, job, result and captions), :mod:`.validation`
(the checks, reading :mod:`photomaker.params`), :mod:`.runtime` (the lock per pipeline,
cancel, out of memory, error ids) and :mod:`.core` (:class:`PhotoMakerService`: the
orchestration and the ID cache). Everything is importable from here as before.
"""

from ..params import (
    ASPECT_RATIOS,
    DEFAULT_ASPECT_RATIO,
    DEFAULT_NEGATIVE_PROMPT,
    LIMITS,
    MAX_NEGATIVE_PROMPT_CHARS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    short_repr,
)
from .core import CROP_MARGIN, PhotoMakerService
from .runtime import (
    free_memory,
    gpu_lock,
    gpu_turn,
    is_out_of_memory,
    new_error_id,
    release_memory,
    server_error,
    server_errors,
)
from .types import GenerationJob, GenerationRequest, GenerationResult, JobOutput, PhotoAnalysis
from .validation import (
    LOG_PROMPT_CHARS,
    MAX_MERGE_STEP,
    check_request,
    log_head,
    merge_step,
    merge_warning,
    size_for,
    tiny_size,
)

__all__ = [
    "ASPECT_RATIOS", "CROP_MARGIN", "DEFAULT_ASPECT_RATIO", "DEFAULT_NEGATIVE_PROMPT", "LIMITS",
    "LOG_PROMPT_CHARS", "MAX_MERGE_STEP", "MAX_NEGATIVE_PROMPT_CHARS", "MAX_PROMPT_CHARS",
    "MAX_SEED", "GenerationJob", "GenerationRequest", "GenerationResult", "JobOutput",
    "PhotoAnalysis", "PhotoMakerService", "check_request", "free_memory", "gpu_lock",
    "gpu_turn", "is_out_of_memory", "log_head", "merge_step", "merge_warning", "new_error_id",
    "release_memory", "server_error", "server_errors", "short_repr", "size_for", "tiny_size",
]  # fmt: skip
