"""The PhotoMaker ID encoders (V1 and V2) and the fuse module that builds the stacked ID embedding.

The module names and parameter layout follow the released checkpoints exactly (see
``shared/reference/*.keys.json``), so ``load_state_dict(strict=True)`` on a released
``id_encoder`` entry works. Every size is a field of :class:`IDEncoderConfig`: the defaults
are the official ones, and tests shrink them to run in milliseconds.

Both encoders are split into two halves so that a caller can encode a set of photos once and
reuse the result with many prompts:

* :meth:`PhotoMakerIDEncoder.encode_id_images` — photos (and, for V2, face embeddings) →
  prompt-independent *ID image embeddings* ``[b, n, tokens_per_image, fuse_dim]``;
* :class:`FuseModule` — ID image embeddings + the prompt embedding → the prompt embedding with
  the class-word positions replaced by the stacked ID embedding.

``forward`` chains the two, with the signature of the reference implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

__all__ = [
    "IDEncoderConfig",
    "FuseModule",
    "PhotoMakerIDEncoder",
    "PhotoMakerIDEncoderV2",
    "build_id_encoder",
]


@dataclass(frozen=True)
class IDEncoderConfig:
    """Sizes of an ID encoder. The defaults are those of the released V1/V2 checkpoints."""

    vision_hidden_size: int = 1024
    vision_intermediate_size: int = 4096
    vision_num_layers: int = 24
    vision_num_heads: int = 16
    vision_patch_size: int = 14
    vision_image_size: int = 224
    # The two projections are concatenated into one vector per photo, which must match the
    # width of SDXL's prompt embedding (768 from text encoder 1 + 1280 from text encoder 2).
    projection_dim: int = 768
    projection_dim_2: int = 1280
    # V2 only.
    id_embedding_dim: int = 512
    tokens_per_image_v2: int = 2
    token_proj_ratio: int = 4
    perceiver_depth: int = 4
    perceiver_dim_head: int = 128
    perceiver_ff_mult: int = 4

    @property
    def fuse_dim(self) -> int:
        return self.projection_dim + self.projection_dim_2

    def vision_config(self) -> CLIPVisionConfig:
        # hidden_act, layer_norm_eps, etc. keep CLIP's defaults (quick_gelu, 1e-5), as the
        # reference builds its encoder from CLIPVisionConfig with only these fields set.
        return CLIPVisionConfig(
            hidden_size=self.vision_hidden_size,
            intermediate_size=self.vision_intermediate_size,
            num_attention_heads=self.vision_num_heads,
            num_hidden_layers=self.vision_num_layers,
            patch_size=self.vision_patch_size,
            image_size=self.vision_image_size,
            projection_dim=self.projection_dim,
        )


# --------------------------------------------------------------------------- fuse module


class MLP(nn.Module):
    """LayerNorm → Linear → GELU → Linear, with an optional residual around all of it."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, use_residual: bool = True):
        super().__init__()
        if use_residual and in_dim != out_dim:
            raise ValueError("a residual MLP needs in_dim == out_dim")
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.use_residual = use_residual
        self.act_fn = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act_fn(self.fc1(self.layernorm(x))))
        return out + x if self.use_residual else out


class FuseModule(nn.Module):
    """Fuses each class-word embedding with one ID vector and writes it back in place."""

    #: The prompt word that marks the class word this module fuses into; set by
    #: ``load_photomaker_adapter``, read by the pipeline (it is not a weight).
    trigger_word: str = "img"

    def __init__(self, embed_dim: int):
        super().__init__()
        self.mlp1 = MLP(embed_dim * 2, embed_dim, embed_dim, use_residual=False)
        self.mlp2 = MLP(embed_dim, embed_dim, embed_dim, use_residual=True)
        self.layer_norm = nn.LayerNorm(embed_dim)

    # A pipeline component: diffusers asks each one for its device and dtype.
    @property
    def device(self) -> torch.device:
        return self.layer_norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.layer_norm.weight.dtype

    def fuse_fn(self, prompt_embeds: torch.Tensor, id_embeds: torch.Tensor) -> torch.Tensor:
        stacked = torch.cat([prompt_embeds, id_embeds], dim=-1)
        stacked = self.mlp1(stacked) + prompt_embeds
        stacked = self.mlp2(stacked)
        return self.layer_norm(stacked)

    def forward(
        self,
        prompt_embeds: torch.Tensor,
        id_embeds: torch.Tensor,
        class_tokens_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Replace the masked positions of ``prompt_embeds`` by the fused ID embedding.

        ``prompt_embeds`` is ``[b, seq, d]``, ``id_embeds`` ``[b, n, tokens_per_image, d]`` and
        ``class_tokens_mask`` ``[b, seq]`` with ``n * tokens_per_image`` true entries per row
        (fewer when the prompt was truncated: then only the first ID vectors are used, as in
        the reference). The i-th masked position, in order, gets the i-th ID vector.
        """
        id_embeds = id_embeds.to(prompt_embeds.dtype)
        batch_size, seq_length, dim = prompt_embeds.shape
        flat_prompt = prompt_embeds.reshape(-1, dim).clone()
        flat_mask = class_tokens_mask.reshape(-1).to(torch.bool)
        num_positions = int(flat_mask.sum())
        id_vectors = id_embeds.reshape(-1, id_embeds.shape[-1])[:num_positions]
        if id_vectors.shape[0] != num_positions:
            raise ValueError(
                f"{num_positions} class-token positions but only {id_vectors.shape[0]} ID vectors"
            )
        fused = self.fuse_fn(flat_prompt[flat_mask], id_vectors)
        flat_prompt[flat_mask] = fused.to(flat_prompt.dtype)
        return flat_prompt.view(batch_size, seq_length, dim)


# --------------------------------------------------------------------------- V1


class PhotoMakerIDEncoder(CLIPVisionModelWithProjection):
    """ID encoder V1: CLIP ViT-L/14 pooled output → two projections → one 2048-d vector per photo."""

    tokens_per_image = 1

    def __init__(self, config: IDEncoderConfig | None = None):
        self.id_config = config or IDEncoderConfig()
        super().__init__(self.id_config.vision_config())
        c = self.id_config
        self.visual_projection_2 = nn.Linear(c.vision_hidden_size, c.projection_dim_2, bias=False)
        self.fuse_module = FuseModule(c.fuse_dim)

    def detach_fuse_module(self) -> FuseModule:
        """Take the fuse module out of this encoder's module tree and return it.

        The checkpoint keeps both halves in one state dict; a pipeline registers them as two
        components, because the fuse runs on every call while the vision tower runs only for
        new photos (see :mod:`photomaker.loaders`). :meth:`forward` keeps working.
        """
        fuse = self._modules.pop("fuse_module")
        self.__dict__["_detached_fuse_module"] = fuse  # a plain reference, not a submodule
        return fuse

    def encode_id_images(
        self, id_pixel_values: torch.Tensor, id_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[b, n, 3, H, W]`` pixels → ``[b, n, 1, fuse_dim]`` ID image embeddings."""
        b, n, c, h, w = id_pixel_values.shape
        pooled = self.vision_model(id_pixel_values.view(b * n, c, h, w))[1]
        embeds = torch.cat([self.visual_projection(pooled), self.visual_projection_2(pooled)], -1)
        return embeds.view(b, n, 1, -1)

    def forward(
        self,
        id_pixel_values: torch.Tensor,
        prompt_embeds: torch.Tensor | None = None,
        class_tokens_mask: torch.Tensor | None = None,
        id_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The reference's call (photos + prompt → fused prompt); without ``prompt_embeds``
        only the photos are encoded, which is how a pipeline calls it (offload hooks see a
        module call, not a bare method)."""
        id_image_embeds = self.encode_id_images(id_pixel_values, id_embeds)
        if prompt_embeds is None:
            return id_image_embeds
        fuse = self._modules.get("fuse_module") or self.__dict__["_detached_fuse_module"]
        return fuse(prompt_embeds, id_image_embeds, class_tokens_mask)


# --------------------------------------------------------------------------- V2


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    # Indices 0, 1, 3 carry the weights, as in the released checkpoint (2 is the GELU).
    inner = dim * mult
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to ``concat(context, latents)``; q and k each scaled by dim_head**-0.25."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.heads, -1).transpose(1, 2)

    def forward(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        context = self.norm1(context)
        latents = self.norm2(latents)
        b, length, _ = latents.shape
        q = self._split_heads(self.to_q(latents))
        k, v = self.to_kv(torch.cat([context, latents], dim=-2)).chunk(2, dim=-1)
        k, v = self._split_heads(k), self._split_heads(v)
        # Scaling both factors before the product is more stable in fp16 than dividing after.
        scale = 1 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        out = (weight @ v).permute(0, 2, 1, 3).reshape(b, length, -1)
        return self.to_out(out)


class FacePerceiverResampler(nn.Module):
    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, embedding_dim: int,
                 output_dim: int, ff_mult: int):
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), _feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )

    def forward(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        context = self.proj_in(context)
        for attention, feed_forward in self.layers:
            latents = attention(context, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))


class QFormerPerceiver(nn.Module):
    """Face embedding → ``tokens`` query vectors, refined by attending to CLIP's patch tokens."""

    def __init__(self, config: IDEncoderConfig):
        super().__init__()
        dim = config.fuse_dim
        self.num_tokens = config.tokens_per_image_v2
        self.cross_attention_dim = dim
        hidden = config.id_embedding_dim * config.token_proj_ratio
        self.token_proj = nn.Sequential(
            nn.Linear(config.id_embedding_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, dim * self.num_tokens),
        )
        self.token_norm = nn.LayerNorm(dim)
        self.perceiver_resampler = FacePerceiverResampler(
            dim=dim,
            depth=config.perceiver_depth,
            dim_head=config.perceiver_dim_head,
            heads=dim // config.perceiver_dim_head,
            embedding_dim=config.vision_hidden_size,
            output_dim=dim,
            ff_mult=config.perceiver_ff_mult,
        )

    def forward(self, face_embeds: torch.Tensor, last_hidden_state: torch.Tensor) -> torch.Tensor:
        queries = self.token_proj(face_embeds).reshape(-1, self.num_tokens, self.cross_attention_dim)
        queries = self.token_norm(queries)
        return queries + self.perceiver_resampler(queries, last_hidden_state)


class PhotoMakerIDEncoderV2(PhotoMakerIDEncoder):
    """ID encoder V2: ArcFace embedding queries CLIP's last hidden state → 2 vectors per photo."""

    def __init__(self, config: IDEncoderConfig | None = None):
        super().__init__(config)
        self.tokens_per_image = self.id_config.tokens_per_image_v2
        self.qformer_perceiver = QFormerPerceiver(self.id_config)

    def encode_id_images(
        self, id_pixel_values: torch.Tensor, id_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[b, n, 3, H, W]`` pixels + ``[b, n, 512]`` face embeddings → ``[b, n, 2, fuse_dim]``."""
        if id_embeds is None:
            raise ValueError("PhotoMaker V2 needs `id_embeds`: one face embedding per ID photo")
        b, n, c, h, w = id_pixel_values.shape
        last_hidden_state = self.vision_model(id_pixel_values.view(b * n, c, h, w))[0]
        face = id_embeds.reshape(b * n, -1).to(last_hidden_state.dtype)
        embeds = self.qformer_perceiver(face, last_hidden_state)
        return embeds.view(b, n, self.tokens_per_image, -1)


def build_id_encoder(pm_version: str, config: IDEncoderConfig | None = None) -> PhotoMakerIDEncoder:
    """The encoder class for ``"v1"`` or ``"v2"``."""
    if pm_version == "v1":
        return PhotoMakerIDEncoder(config)
    if pm_version == "v2":
        return PhotoMakerIDEncoderV2(config)
    raise ValueError(f"pm_version must be 'v1' or 'v2', not {pm_version!r}")
