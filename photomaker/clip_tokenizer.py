"""The real CLIP tokenizer, built offline from the BPE vocabulary file.

The file ships inside the ``open-clip-torch`` wheel (read from its installed files; the package
is never imported, since it would pull torchvision). Tests and ``--tiny`` use it so prompt
handling runs on real token ids; the GPU benchmark passes the file's path where open-clip is
not installed. Only the standard library and transformers are needed.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

__all__ = ["CLIP_MAX_LENGTH", "bpe_vocabulary_path", "clip_tokenizer"]

CLIP_MAX_LENGTH = 77


def bpe_vocabulary_path(explicit: str | os.PathLike | None = None) -> Path:
    """The CLIP BPE merges file: ``explicit`` when given, else the one inside the installed
    ``open-clip-torch`` distribution (read from its files; ``open_clip`` is never imported)."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"CLIP's BPE vocabulary {explicit} does not exist")
        return Path(explicit)
    try:
        dist = importlib.metadata.distribution("open-clip-torch")
    except importlib.metadata.PackageNotFoundError as error:
        raise RuntimeError(
            "The CLIP vocabulary comes from the open-clip-torch wheel: "
            "pip install --no-deps open-clip-torch"
        ) from error
    path = Path(dist.locate_file("open_clip/bpe_simple_vocab_16e6.txt.gz"))
    if not path.is_file():
        raise RuntimeError(f"open-clip-torch is installed but {path} is missing")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


@lru_cache(maxsize=4)
def _tokenizer_files(bpe: Path) -> Path:
    """vocab.json and merges.txt in the Hugging Face layout, written once per process."""
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the 48,894 merges CLIP uses
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(tempfile.mkdtemp(prefix="photomaker-clip-tokenizer-"))
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def clip_tokenizer(pad_token: str = "<|endoftext|>", bpe: str | os.PathLike | None = None):
    """The real CLIP tokenizer (49,408 tokens, 77 max). SDXL's second one pads with ``"!"``."""
    from transformers import CLIPTokenizer

    folder = _tokenizer_files(bpe_vocabulary_path(bpe))
    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        pad_token=pad_token,
        model_max_length=CLIP_MAX_LENGTH,
    )


# --------------------------------------------------------------------------- tiny SDXL
