"""Independent references the tests compare the package with.

* Hand-written functional versions of PHOTOMAKER.md's formulas (projections, fuse MLPs,
  token projection, perceiver attention with an explicit loop over heads), computed from a
  state dict with ``torch.nn.functional`` only — not the package's modules.
* The public reference implementation of PhotoMaker V1 (TencentARC's code as published on
  PyPI as ``photomakerv==0.1.0``, unpacked into ``.oracle/`` by ``scripts/test.sh``), loaded
  under another module name. Its V2 counterpart is that same pipeline with the two changes the
  official V2 code makes: two class tokens per photo and the V2 encoder (hand-written here).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ORACLE_DIR = Path(__file__).resolve().parent.parent / ".oracle" / "photomaker"


def layer_norm(x, sd, prefix, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)


def linear(x, sd, prefix, bias=True):
    return F.linear(x, sd[f"{prefix}.weight"], sd.get(f"{prefix}.bias") if bias else None)


def mlp(x, sd, prefix, residual):
    h = linear(F.gelu(linear(layer_norm(x, sd, f"{prefix}.layernorm"), sd, f"{prefix}.fc1")), sd, f"{prefix}.fc2")
    return h + x if residual else h


def fuse(text_vec, id_vec, sd):
    """PHOTOMAKER.md step 4, one class-token position at a time."""
    x = torch.cat([text_vec, id_vec], -1)
    x = mlp(x, sd, "fuse_module.mlp1", residual=False) + text_vec
    x = mlp(x, sd, "fuse_module.mlp2", residual=True)
    return layer_norm(x, sd, "fuse_module.layer_norm")


def fuse_prompt(prompt_embeds, id_vectors, mask, sd):
    """Replace masked positions of a [1, seq, d] prompt embedding with fused vectors, in order."""
    out = prompt_embeds.clone()
    positions = [i for i, m in enumerate(mask[0].tolist()) if m]
    for k, pos in enumerate(positions):
        out[0, pos] = fuse(prompt_embeds[0, pos], id_vectors[k], sd)
    return out


def v1_id_vectors(pooled, sd):
    """[N, hidden] pooled CLIP output → [N, 2048] (two bias-free projections, concatenated)."""
    return torch.cat([pooled @ sd["visual_projection.weight"].T, pooled @ sd["visual_projection_2.weight"].T], -1)


def perceiver_attention(context, latents, sd, prefix, dim_head):
    context = layer_norm(context, sd, f"{prefix}.norm1")
    latents = layer_norm(latents, sd, f"{prefix}.norm2")
    q = latents @ sd[f"{prefix}.to_q.weight"].T
    kv_in = torch.cat([context, latents], dim=-2)
    kv = kv_in @ sd[f"{prefix}.to_kv.weight"].T
    k, v = kv[..., : kv.shape[-1] // 2], kv[..., kv.shape[-1] // 2 :]
    heads = q.shape[-1] // dim_head
    outs = []
    for h in range(heads):
        sl = slice(h * dim_head, (h + 1) * dim_head)
        qh = q[..., sl] * dim_head**-0.25
        kh = k[..., sl] * dim_head**-0.25
        w = torch.softmax((qh @ kh.transpose(-1, -2)).float(), dim=-1)
        outs.append(w @ v[..., sl])
    return torch.cat(outs, -1) @ sd[f"{prefix}.to_out.weight"].T


def v2_id_vectors(last_hidden_state, face_embeds, sd, depth, dim_head, num_tokens=2):
    """PHOTOMAKER.md V2: face embedding queries CLIP's last hidden state → [N, 2, d]."""
    p = "qformer_perceiver"
    q0 = linear(F.gelu(linear(face_embeds, sd, f"{p}.token_proj.0")), sd, f"{p}.token_proj.2")
    q0 = q0.reshape(face_embeds.shape[0], num_tokens, -1)
    q0 = layer_norm(q0, sd, f"{p}.token_norm")
    r = f"{p}.perceiver_resampler"
    context = linear(last_hidden_state, sd, f"{r}.proj_in")
    latents = q0
    for i in range(depth):
        latents = perceiver_attention(context, latents, sd, f"{r}.layers.{i}.0", dim_head) + latents
        ff = layer_norm(latents, sd, f"{r}.layers.{i}.1.0")
        ff = F.gelu(ff @ sd[f"{r}.layers.{i}.1.1.weight"].T) @ sd[f"{r}.layers.{i}.1.3.weight"].T
        latents = ff + latents
    out = layer_norm(linear(latents, sd, f"{r}.proj_out"), sd, f"{r}.norm_out")
    return q0 + out


# --------------------------------------------------------------------------- the oracle


def load_oracle():
    """The official V1 pipeline module, or None when .oracle/ is absent."""
    if not (ORACLE_DIR / "pipeline.py").is_file():
        return None
    if "pm_reference" in sys.modules:
        return sys.modules["pm_reference"]
    # It imports torchvision at the top for a transform it never uses in inference; torchvision
    # does not import beside the CPU torch wheel, so give it an empty stand-in.
    saved = {name: sys.modules.get(name) for name in ("torchvision", "torchvision.transforms")}
    stub = types.ModuleType("torchvision")
    stub.transforms = types.ModuleType("torchvision.transforms")
    sys.modules["torchvision"] = stub
    sys.modules["torchvision.transforms"] = stub.transforms
    try:
        package = types.ModuleType("pm_reference")
        package.__path__ = [str(ORACLE_DIR)]
        sys.modules["pm_reference"] = package
        for name in ("model", "pipeline"):
            spec = importlib.util.spec_from_file_location(f"pm_reference.{name}", ORACLE_DIR / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            if name == "pipeline":
                package.PhotoMakerIDEncoder = sys.modules["pm_reference.model"].PhotoMakerIDEncoder
            spec.loader.exec_module(module)
            setattr(package, name, module)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return package


class HandWrittenEncoder(torch.nn.Module):
    """The official encoders' forward (V1 or V2), from the formulas, for the oracle pipeline.

    Only the CLIP vision tower is transformers' own module; the rest is the functions above.
    """

    def __init__(self, pm_version, vision_model, state_dict, depth, dim_head, id_embeds=None):
        super().__init__()
        self.pm_version = pm_version
        self.vision_model = vision_model
        self.sd = state_dict
        self.depth, self.dim_head = depth, dim_head
        self.id_embeds = id_embeds
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # the oracle reads the dtype from here

    def forward(self, id_pixel_values, prompt_embeds, class_tokens_mask):
        out = self.vision_model(id_pixel_values.flatten(0, 1))
        if self.pm_version == "v1":
            vectors = v1_id_vectors(out[1], self.sd)
        else:
            vectors = v2_id_vectors(out[0], self.id_embeds, self.sd, self.depth, self.dim_head)
        return fuse_prompt(prompt_embeds, vectors.reshape(-1, vectors.shape[-1]), class_tokens_mask, self.sd)


def oracle_pipeline(oracle, components, pipe, pm_version, id_embeds=None):
    """The reference pipeline on the same components and the same loaded checkpoint as ``pipe``."""
    base = oracle.pipeline.PhotoMakerStableDiffusionXLPipeline

    class ReferenceV2(base):
        def encode_prompt_with_trigger_word(self, *args, num_id_images=1, **kwargs):
            return super().encode_prompt_with_trigger_word(*args, num_id_images=num_id_images * 2, **kwargs)

    cls = ReferenceV2 if pm_version == "v2" else base
    ref = cls(**{k: v for k, v in components.items() if k not in ("id_encoder", "id_fuse_module")})
    ref.set_progress_bar_config(disable=True)
    ref.trigger_word = pipe.trigger_word
    ref.id_image_processor = pipe.id_image_processor
    sd = {k: v.detach() for k, v in pipe.id_encoder.state_dict().items()}
    sd.update({f"fuse_module.{k}": v.detach() for k, v in pipe.id_fuse_module.state_dict().items()})
    cfg = pipe.id_encoder.id_config
    ref.id_encoder = HandWrittenEncoder(
        pm_version, pipe.id_encoder.vision_model, sd, cfg.perceiver_depth, cfg.perceiver_dim_head, id_embeds
    )
    return ref


def assert_close(a, b, atol=1e-4, rtol=1e-4):
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), atol=atol, rtol=rtol)


