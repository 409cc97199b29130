"""Full-size diffusers pipelines of every shipped family, built in code with random weights, and the
clock the benchmarks share.

Each builder follows the published config of the model a shipped recipe names (layer counts,
widths, heads, latent channels, schedule), so a network call costs what the real one costs; only
the weights are random. ``latent`` sets the latent side (the real models' own: SD 1.5 64, SDXL
128, SD 3.5 128, Flux 128, PixArt-alpha-512 64, DiT-XL/2-256 32); smaller sides make CPU runs
affordable, and the compute per call falls with the number of latent pixels.

Text encoders: SD 1.5 gets its real CLIP ViT-L/14 text tower (random weights, real tokenizer).
The larger families (SDXL's two CLIP towers, SD 3's and Flux's T5-XXL, PixArt's T5) are left out:
:class:`RandomTextEncoder` stands in, giving each prompt fixed random embeddings of the real shapes.
Prompts are encoded once per run and cached by the toolkit, so this leaves the per-step costs
measured unchanged.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass

import torch

from probes._compat import patch_torchvision

patch_torchvision()

from probes.models.tiny_sd import SD_SCHEDULE, build_clip_tokenizer  # noqa: E402


def _vae(latent_channels=4, scaling_factor=0.18215, shift_factor=None, quant_conv=True):
    """SD's AutoencoderKL (84M parameters; SD 3 and Flux use the same layout with 16 channels)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=scaling_factor,
        shift_factor=shift_factor, use_quant_conv=quant_conv, use_post_quant_conv=quant_conv)


def sd15(latent: int = 64):
    """stable-diffusion-v1-5: UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=latent, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1))
    scheduler = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=_vae(), text_encoder=text_encoder, tokenizer=build_clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def sdxl(latent: int = 128):
    """stable-diffusion-xl-base-1.0: UNet 2.6B (text towers replaced, see the module docstring)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=latent, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), use_linear_projection=True, cross_attention_dim=2048,
        transformer_layers_per_block=(1, 2, 10), addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816, norm_num_groups=32)
    scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=_vae(scaling_factor=0.13025), text_encoder=None, text_encoder_2=None,
                                     tokenizer=None, tokenizer_2=None, unet=unet, scheduler=scheduler)


def sd3(latent: int = 128):
    """stable-diffusion-3.5-medium: MMDiT-X (24 blocks, 13 with dual attention, 2.2B), 16-channel VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = SD3Transformer2DModel(
        sample_size=latent, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
        num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
        out_channels=16, pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(16, scaling_factor=1.5305, shift_factor=0.0609, quant_conv=False),
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
        tokenizer_3=None)


def flux(latent: int = 128):
    """FLUX.1-schnell: 12B transformer (19 double, 38 single blocks), 16-channel VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False,
        axes_dims_rope=(16, 56, 56))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=scheduler, vae=_vae(16, scaling_factor=0.3611, shift_factor=0.1159, quant_conv=False),
                        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                        transformer=transformer)
    pipe.default_sample_size = latent  # the pipeline's default image side is 8x this
    return pipe


def pixart(latent: int = 64):
    """PixArt-XL-2-512x512: transformer 611M (28 blocks, width 1152), SD's VAE."""
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel(
        sample_size=latent, num_layers=28, patch_size=2, attention_head_dim=72, num_attention_heads=16,
        caption_channels=4096, in_channels=4, out_channels=8, cross_attention_dim=1152, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False)
    scheduler = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return PixArtAlphaPipeline(tokenizer=None, text_encoder=None, vae=_vae(), transformer=transformer,
                               scheduler=scheduler)


def dit(latent: int = 32):
    """DiT-XL-2-256: transformer 675M in the original layout (28 blocks, width 1152, patch 2); diffusers'
    layout repeats the timestep and class embedders in every block (750M). SD's VAE."""
    from diffusers import DDPMScheduler, DiTPipeline, DiTTransformer2DModel

    transformer = DiTTransformer2DModel(
        sample_size=latent, num_layers=28, patch_size=2, attention_head_dim=72, num_attention_heads=16,
        in_channels=4, out_channels=8, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero", norm_elementwise_affine=False)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                              clip_sample=False)
    return DiTPipeline(transformer=transformer, vae=_vae(), scheduler=scheduler)


def nvlabs_edm2_importable() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("training.networks_edm2") is not None
    except ImportError:  # no package named training
        return False


def edm2_xs(latent: int = 64, label_dim: int = 1000):
    """EDM2-XS on ImageNet-512 latents (``edm2-img512-xs``: model_channels 128, 125M), built with
    NVlabs' own code, which must be importable (``PYTHONPATH=/path/to/edm2``); ``label_dim=0`` is
    the unconditional network the recipe reads plain posteriors with."""
    try:
        from training.networks_edm2 import Precond
    except ImportError:
        return None
    return Precond(img_resolution=latent, img_channels=4, label_dim=label_dim, model_channels=128)


#: family -> (builder, native latent side, text embeddings the family's encoders would give:
#: name -> shape per prompt, or None when the pipeline encodes its own prompts)
BUILDERS = {
    "stable-diffusion": (sd15, 64, None),
    "sdxl": (sdxl, 128, {"embeds": (77, 2048), "pooled": (1280,)}),
    "sd3": (sd3, 128, {"embeds": (333, 4096), "pooled": (2048,)}),
    "flux": (flux, 128, {"embeds": (256, 4096), "pooled": (768,)}),
    "pixart": (pixart, 64, {"embeds": (120, 4096), "mask": (120,)}),
    "dit": (dit, 32, None),
}


def parameter_count(family: str, latent: int) -> int:
    """Parameters of the family's pipeline, counted without allocating them (for memory checks)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        pipe = BUILDERS[family][0](latent)
    return sum(p.numel() for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters())


def build(family: str, latent: int, device: str, dtype: torch.dtype, seed: int = 0):
    """A full-size pipeline of ``family`` with latents ``latent`` wide, in eval mode on ``device``."""
    builder = BUILDERS[family][0]
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        pipe = builder(latent)
    finally:
        torch.random.set_rng_state(state)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.to(device=device, dtype=dtype).eval()  # module by module: pipe.to(dtype) warns about
    pipe.set_progress_bar_config(disable=True)              # fp32-kept modules of pretrained loads
    return pipe


@dataclass
class RandomTextEncoder:
    """Stands in for a family's text encoders: each prompt gets fixed random embeddings of the real
    shapes (seeded by the prompt's text), so prompts differ and the network sees real sizes."""

    shapes: dict
    dtype: torch.dtype
    device: str

    def __call__(self, texts):
        rows = []
        for text in texts:
            g = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "little"))
            rows.append({k: torch.ones(shape, dtype=torch.long) if k == "mask" else torch.randn(shape, generator=g)
                         for k, shape in self.shapes.items()})
        return {k: torch.stack([r[k] for r in rows]).to(self.device, self.dtype if k != "mask" else torch.long)
                for k in self.shapes}


# --- the clock ------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


#: What is timed: wall time on CUDA; on CPU the process's CPU time, which a busy shared machine
#: does not inflate (it equals compute time when torch runs one thread).
CLOCK = {"cpu": time.process_time, "cuda": time.perf_counter}


def timed(fn, device: str, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls of ``fn`` and its last result."""
    clock = CLOCK["cuda" if str(device).startswith("cuda") else "cpu"]
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        start = clock()
        out = fn()
        sync(device)
        times.append(clock() - start)
    return statistics.median(times), out
