"""Model configurations for the benchmarks, written out so nothing is ever downloaded.

``SDXL_*`` are the configs of ``stabilityai/stable-diffusion-xl-base-1.0`` (``unet/``,
``text_encoder/``, ``text_encoder_2/``, ``vae/`` and ``scheduler/`` ``config.json``; the fields
that only name the class or the diffusers version are left out). Every SDXL fine-tune the app
uses as a base (RealVisXL, ...) has the same shapes. ``PHOTOMAKER_*`` are the official ID-encoder
and LoRA sizes (``shared/reference/*.keys.json``).

``TINY_*`` are small configs of the same families, for dry runs on a CPU in seconds; ``SMALL_UNET``
is an SDXL-shaped UNet (same blocks, same conditioning widths, so it takes the real text
encoders' 2048-wide embeddings) at about 1/40 of the compute, for the CPU stage timings.

Only plain dicts here: this module imports nothing.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- SDXL base 1.0

SDXL_UNET = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

#: CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14), SDXL's ``text_encoder``.
SDXL_TEXT_ENCODER = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

#: OpenCLIP ViT-bigG/14's text tower with its projection, SDXL's ``text_encoder_2``.
SDXL_TEXT_ENCODER_2 = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "pad_token_id": 1,
    "projection_dim": 1280,
    "vocab_size": 49408,
}

SDXL_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SDXL_SCHEDULER = {  # EulerDiscreteScheduler
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

#: Parameter counts of the configs above (checked by the tests, quoted by the results files).
SDXL_PARAMETERS = {
    "unet": 2_567_463_684,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
    "vae": 83_653_863,
}

# --------------------------------------------------------------------------- PhotoMaker

#: ``photomaker.encoders.IDEncoderConfig`` fields; the defaults there are the official sizes.
PHOTOMAKER_ID_ENCODER: dict = {}
PHOTOMAKER_LORA_RANK = 64
#: Parameter counts of the released checkpoints (shared/reference/*.keys.json).
PHOTOMAKER_PARAMETERS = {
    "id_encoder_v1": 326_273_024,  # CLIP ViT-L/14 vision tower + 2 projections + fuse module
    "id_encoder_v2": 543_395_840,  # V1 + the Q-Former perceiver
    "lora": 92_897_280,  # rank 64 on attn1/attn2 to_q/k/v/out of all 70 transformer blocks
}

# ------------------------------------------------------- the app's default optional models

#: The style image's image encoder, ``h94/IP-Adapter`` ``sdxl_models/image_encoder/config.json``
#: (``CLIPVisionModelWithProjection``): OpenCLIP ViT-bigG/14's vision tower.
STYLE_IMAGE_ENCODER = {
    "hidden_size": 1664,
    "intermediate_size": 8192,
    "num_hidden_layers": 48,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 1280,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
#: The tiny stand-in of the style image's encoder (bench/gpu.py's dry run).
TINY_STYLE_IMAGE_ENCODER = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "patch_size": 32,
    "image_size": 224,
    "projection_dim": 32,
}
#: ``ip-adapter_sdxl``'s image projection: 4 tokens of the UNet's 2048-wide cross-attention
#: from the encoder's 1280-wide image embedding.
IP_ADAPTER_TOKENS = 4
#: The doodle's adapter, ``TencentARC/t2i-adapter-sketch-sdxl-1.0``'s ``config.json``.
T2I_SKETCH_ADAPTER = {
    "adapter_type": "full_adapter_xl",
    "channels": [320, 640, 1280, 1280],
    "downscale_factor": 16,
    "in_channels": 3,
    "num_res_blocks": 2,
}
#: The fast mode's LoRA rank at full size: an assumption (bench/gpu.py's, too).
FAST_LORA_RANK = 64

# --------------------------------------------------------------------------- small and tiny

#: SDXL-shaped UNet, 1/5 of the widths and one transformer layer per attention block; same
#: conditioning (2048-wide text, 1280 pooled + 6 time ids), so it runs on real-size text
#: embeddings. Heads are 64 wide as in SDXL.
SMALL_UNET = {
    **SDXL_UNET,
    "block_out_channels": [64, 128, 256],
    "attention_head_dim": [1, 2, 4],
    "transformer_layers_per_block": [1, 1, 2],
    "norm_num_groups": 32,
    "sample_size": 32,
}
#: The PhotoMaker LoRA's rank relative to the width it adapts is 64 / 1280 at SDXL's
#: deepest level; the small UNet's LoRA keeps that ratio (13 / 256), so that the unfused
#: LoRA's share of a step is about the same.
SMALL_LORA_RANK = 13

TINY_UNET = {
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": [2, 4],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": [1, 2],
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
    "cross_attention_dim": 64,
    "norm_num_groups": 16,
}

TINY_TEXT_ENCODER = {
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "layer_norm_eps": 1e-05,
    "hidden_act": "gelu",
    "projection_dim": 32,
    "max_position_embeddings": 77,
}
TINY_TEXT_ENCODER_2 = dict(TINY_TEXT_ENCODER)

TINY_VAE = {
    "block_out_channels": [16, 32],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": 64,
}

#: The ID encoder of ``photomaker.tiny`` (its two projections add up to the tiny text width).
TINY_ID_ENCODER = {
    "vision_hidden_size": 32,
    "vision_intermediate_size": 37,
    "vision_num_layers": 2,
    "vision_num_heads": 4,
    "vision_patch_size": 14,
    "vision_image_size": 224,
    "projection_dim": 32,
    "projection_dim_2": 32,
    "id_embedding_dim": 512,
    "tokens_per_image_v2": 2,
    "token_proj_ratio": 1,
    "perceiver_depth": 2,
    "perceiver_dim_head": 16,
    "perceiver_ff_mult": 2,
}
TINY_LORA_RANK = 4

# --------------------------------------------------------------------------- model sets

SIZES = {
    "full": {
        "unet": SDXL_UNET,
        "text_encoder": SDXL_TEXT_ENCODER,
        "text_encoder_2": SDXL_TEXT_ENCODER_2,
        "vae": SDXL_VAE,
        "id_encoder": PHOTOMAKER_ID_ENCODER,
        "lora_rank": PHOTOMAKER_LORA_RANK,
        "image_size": 1024,
    },
    "small": {  # bench/cpu_stages.py: real-size encoders and VAE, the small UNet
        "unet": SMALL_UNET,
        "text_encoder": SDXL_TEXT_ENCODER,
        "text_encoder_2": SDXL_TEXT_ENCODER_2,
        "vae": SDXL_VAE,
        "id_encoder": PHOTOMAKER_ID_ENCODER,
        "lora_rank": SMALL_LORA_RANK,
        "image_size": 128,
    },
    "tiny": {
        "unet": TINY_UNET,
        "text_encoder": TINY_TEXT_ENCODER,
        "text_encoder_2": TINY_TEXT_ENCODER_2,
        "vae": TINY_VAE,
        "id_encoder": TINY_ID_ENCODER,
        "lora_rank": TINY_LORA_RANK,
        "image_size": 64,
    },
}
