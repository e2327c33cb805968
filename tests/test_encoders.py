"""The ID encoders: official layout at full size, and the formulas of PHOTOMAKER.md on small sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from photomaker.encoders import IDEncoderConfig, build_id_encoder
from photomaker.tiny import random_state_dict
from tests import reference

#: Key manifests of the released checkpoints (facts about those files, copied here so the
#: suite stands alone on a fresh clone).
MANIFESTS = Path(__file__).resolve().parent / "data"
SMALL = IDEncoderConfig(
    vision_hidden_size=24,
    vision_intermediate_size=40,
    vision_num_layers=2,
    vision_num_heads=4,
    vision_patch_size=14,
    vision_image_size=56,
    projection_dim=16,
    projection_dim_2=16,
    id_embedding_dim=512,
    token_proj_ratio=1,
    perceiver_depth=2,
    perceiver_dim_head=8,
    perceiver_ff_mult=2,
)


def manifest(version: str) -> dict:
    return json.loads((MANIFESTS / f"photomaker-{version}.id_encoder.keys.json").read_text())


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_official_sizes_match_the_released_layout(version):
    with torch.device("meta"):
        encoder = build_id_encoder(version)
    ours = {k: list(v.shape) for k, v in encoder.state_dict().items()}
    expected = {k: v["shape"] for k, v in manifest(version)["keys"].items()}
    assert ours == expected
    assert (
        sum(v.numel() for v in encoder.state_dict().values()) == manifest(version)["num_parameters"]
    )


def small_encoder(version: str, seed: int = 0):
    encoder = build_id_encoder(version, SMALL)
    encoder.load_state_dict(random_state_dict(encoder, seed=seed))
    return encoder.eval()


def inputs(n: int, seq: int = 12):
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(1, n, 3, 56, 56, generator=g)
    prompt = torch.randn(1, seq, SMALL.fuse_dim, generator=g)
    return pixels, prompt, g


@pytest.mark.parametrize("n", [1, 3])
def test_v1_forward_matches_the_formulas(n):
    encoder = small_encoder("v1")
    pixels, prompt, _ = inputs(n)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 4 : 4 + n] = True
    with torch.no_grad():
        out = encoder(pixels, prompt.clone(), mask)
        sd = encoder.state_dict()
        pooled = encoder.vision_model(pixels[0])[1]  # CLIP's post-layernorm CLS, transformers' own
        expected = reference.fuse_prompt(prompt, reference.v1_id_vectors(pooled, sd), mask, sd)
    reference.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # unmasked positions are untouched, masked ones changed
    assert torch.equal(out[0, ~mask[0]], prompt[0, ~mask[0]])
    assert not torch.allclose(out[0, mask[0]], prompt[0, mask[0]])


@pytest.mark.parametrize("n", [1, 2])
def test_v2_forward_matches_the_formulas(n):
    encoder = small_encoder("v2")
    pixels, prompt, g = inputs(n)
    faces = torch.randn(1, n, 512, generator=g)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 3 : 3 + 2 * n] = True
    with torch.no_grad():
        out = encoder(pixels, prompt.clone(), mask, faces)
        sd = encoder.state_dict()
        hidden = encoder.vision_model(pixels[0])[0]  # last hidden state, before post-layernorm
        vectors = reference.v2_id_vectors(
            hidden, faces[0], sd, SMALL.perceiver_depth, SMALL.perceiver_dim_head
        )
        assert vectors.shape == (n, 2, SMALL.fuse_dim)
        expected = reference.fuse_prompt(prompt, vectors.reshape(-1, SMALL.fuse_dim), mask, sd)
    reference.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_v2_needs_face_embeddings():
    encoder = small_encoder("v2")
    pixels, prompt, _ = inputs(1)
    with pytest.raises(ValueError, match="id_embeds"):
        encoder.encode_id_images(pixels)


def test_fuse_writes_id_vectors_in_photo_order():
    encoder = small_encoder("v1")
    pixels, prompt, _ = inputs(2)
    with torch.no_grad():
        ids = encoder.encode_id_images(pixels)
        mask = torch.zeros(1, 12, dtype=torch.bool)
        mask[0, 5:7] = True
        prompt[0, 6] = prompt[0, 5]  # copies of one class word, as after expansion
        forward = encoder.fuse_module(prompt, ids, mask)
        swapped = encoder.fuse_module(prompt, ids.flip(1), mask)
    reference.assert_close(forward[0, 5], swapped[0, 6], atol=1e-6, rtol=1e-6)
    reference.assert_close(forward[0, 6], swapped[0, 5], atol=1e-6, rtol=1e-6)
