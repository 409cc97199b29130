"""Tiny random-weight diffusers pipelines of every family, built in code, offline.

Shapes follow diffusers' own test configs, narrowed further. T5-conditioned families (Flux,
PixArt) get a tiny T5 encoder and a T5 tokenizer built in code over a small word list (no
tokenizer model ships offline), so their prompts encode for real; the tests' pipeline calls still
pass prompt embeddings, as users of those pipelines often do. SD 3 is built without its optional
T5. Every module is put in ``eval()`` mode (modules built in code start in training mode; DiT's
label dropout would make them nondeterministic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from probes._compat import patch_torchvision
from probes.models.tiny_sd import _VOCAB_SIZE, SD_SCHEDULE, build_clip_tokenizer, build_tiny_pipeline

patch_torchvision()


def _seeded(seed, build):
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return build()
    finally:
        torch.random.set_rng_state(state)


def _eval(pipe):
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _clip(hidden=32, projection=32, with_projection=False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=_VOCAB_SIZE, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=projection,
                            bos_token_id=_VOCAB_SIZE - 2, eos_token_id=_VOCAB_SIZE - 1,
                            pad_token_id=_VOCAB_SIZE - 1)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _vae(latent_channels=4, blocks=(8, 8), **kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=1,
                         block_out_channels=blocks, norm_num_groups=min(blocks),
                         down_block_types=("DownEncoderBlock2D",) * len(blocks),
                         up_block_types=("UpDecoderBlock2D",) * len(blocks), **kw)


_T5_WORDS = ["a", "photo", "of", "the", "an", "cat", "dog", "car", "bus", "truck", "animal", "vehicle", "bird",
             "horse", "ship", "plane", "fish", "boat", "mammal", "thing", "object"]


def _t5_tokenizer():
    """A T5 tokenizer (sentencepiece-style unigram over whole words, then letters) built in code."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    vocab = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
             + [("\u2581" + w, -2.0) for w in _T5_WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"])
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)


def _t5(d_model=32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=4 + len(_T5_WORDS) + 26, d_model=d_model, d_kv=8, d_ff=64,
                                   num_layers=2, num_heads=4))


def tiny_sd(prediction_type="epsilon", scheduler="ddim", seed=0):
    return build_tiny_pipeline(seed=seed, prediction_type=prediction_type, sample_size=8, scheduler=scheduler)


def tiny_sdxl(seed=0):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    def build():
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
            projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64, norm_num_groups=16)
        return dict(unet=unet, vae=_vae(scaling_factor=0.13025), text_encoder=_clip(),
                    text_encoder_2=_clip(with_projection=True))

    parts = _seeded(seed, build)
    tok = build_clip_tokenizer()
    sched = EulerDiscreteScheduler(**SD_SCHEDULE, steps_offset=1, timestep_spacing="leading")
    return _eval(StableDiffusionXLPipeline(tokenizer=tok, tokenizer_2=tok, scheduler=sched, **parts))


def tiny_sd3(seed=0):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    def build():
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4)
        return dict(transformer=transformer, vae=_vae(scaling_factor=1.5305, shift_factor=0.0609),
                    text_encoder=_clip(with_projection=True), text_encoder_2=_clip(with_projection=True))

    parts = _seeded(seed, build)
    tok = build_clip_tokenizer()
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return _eval(StableDiffusion3Pipeline(tokenizer=tok, tokenizer_2=tok, text_encoder_3=None, tokenizer_3=None,
                                          scheduler=sched, **parts))


def tiny_flux(seed=0):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    def build():
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
        return dict(transformer=transformer, vae=_vae(latent_channels=4, blocks=(8, 8), scaling_factor=0.3611,
                                                      shift_factor=0.1159, use_quant_conv=False,
                                                      use_post_quant_conv=False),
                    text_encoder=_clip(), text_encoder_2=_t5())

    parts = _seeded(seed, build)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    return _eval(FluxPipeline(scheduler=sched, tokenizer=build_clip_tokenizer(), tokenizer_2=_t5_tokenizer(),
                              **parts))


def tiny_pixart(seed=0):
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    def build():
        transformer = PixArtTransformer2DModel(
            sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
            caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6)
        return dict(transformer=transformer, vae=_vae(), text_encoder=_t5())

    parts = _seeded(seed, build)
    sched = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return _eval(PixArtAlphaPipeline(tokenizer=_t5_tokenizer(), scheduler=sched, **parts))


def tiny_dit(seed=0, scheduler="ddpm"):
    from diffusers import DDIMScheduler, DDPMScheduler, DiTPipeline, DiTTransformer2DModel

    def build():
        transformer = DiTTransformer2DModel(
            sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
            out_channels=8, activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
            norm_elementwise_affine=False)
        return dict(transformer=transformer, vae=_vae())

    parts = _seeded(seed, build)
    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[scheduler]
    extra = {"clip_sample": False} if scheduler == "ddpm" else {"clip_sample": False, "set_alpha_to_one": False}
    sched = cls(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", **extra)
    return _eval(DiTPipeline(scheduler=sched, **parts))


def text_embeddings(family, batch, seed=1):
    """Prompt embeddings for pipelines built here without T5: a dict of pipe keyword arguments."""
    g = torch.Generator().manual_seed(seed)
    if family == "flux":
        return dict(prompt_embeds=torch.randn(batch, 6, 32, generator=g),
                    pooled_prompt_embeds=torch.randn(batch, 32, generator=g))
    if family == "pixart":
        emb = torch.randn(2, batch, 6, 32, generator=g)
        mask = torch.ones(batch, 6, dtype=torch.long)
        return dict(prompt_embeds=emb[0], prompt_attention_mask=mask, negative_prompt=None,
                    negative_prompt_embeds=emb[1],
                    negative_prompt_attention_mask=mask)
    raise ValueError(family)


# -- one table of pipeline families for the adapter, probe and contract tests ------------------------

TAXONOMY = "animals-vehicles"


@dataclass
class FamilyCase:
    """A tiny pipeline of one registry family and how the tests call it.

    ``call``: the pipeline's keyword arguments (steps, guidance and generator are added by tests);
    ``cond``: the family denoiser's conditioning for a batch of b rows matching ``call``;
    ``guidance``: a guided scale for the probe tests (``None``: the pipeline has no CFG knob);
    ``conditioner_taxonomy``: checks the family's conditioner (``None``: cannot encode offline).
    """

    build: Callable
    call: dict
    cond: Callable[[int], Any]
    guidance: float | None = 5.0
    conditioner_taxonomy: str | None = TAXONOMY


def _flux_cond(b):
    e = text_embeddings("flux", b)
    return {"embeds": e["prompt_embeds"], "pooled": e["pooled_prompt_embeds"]}


def _pixart_cond(b):
    e = text_embeddings("pixart", b)
    return {"embeds": e["prompt_embeds"], "mask": e["prompt_attention_mask"]}


#: registry family name -> case. A family added to ``probes.families.FAMILIES`` with pipelines
#: fails the tests until it has a line here.
FAMILY_CASES = {
    "stable-diffusion": FamilyCase(lambda: tiny_sd("epsilon"), dict(prompt=["a cat", "a dog"]),
                                   lambda b: ["a cat", "a dog"][:b] if b <= 2 else ["a cat"] * b),
    "sdxl": FamilyCase(tiny_sdxl, dict(prompt=["a cat"], height=16, width=16), lambda b: ["a cat"] * b),
    "sd3": FamilyCase(tiny_sd3, dict(prompt=["a cat"], height=16, width=16), lambda b: ["a cat"] * b),
    "flux": FamilyCase(tiny_flux, dict(height=16, width=16, **text_embeddings("flux", 1)), _flux_cond,
                       guidance=None),
    "pixart": FamilyCase(tiny_pixart, dict(height=16, width=16, use_resolution_binning=False,
                                           **text_embeddings("pixart", 1)), _pixart_cond, guidance=4.5),
    "dit": FamilyCase(tiny_dit, dict(class_labels=[3, 7]), lambda b: torch.tensor([3, 7] * b)[:b],
                      guidance=4.0),
}

_pipes: dict = {}


def family_pipe(name):
    """The tiny pipeline of a family, built once per test session."""
    if name not in _pipes:
        _pipes[name] = FAMILY_CASES[name].build()
    return _pipes[name]
