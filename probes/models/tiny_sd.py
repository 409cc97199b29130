"""A tiny Stable Diffusion pipeline built in code, offline, with random weights.

It has the real pipeline's parts and wiring (UNet2DConditionModel, AutoencoderKL with SD's 8x
latent downsampling, CLIPTextModel, a CLIP BPE tokenizer, SD's noise schedule), only narrow. Tests
and benchmarks use it to exercise everything that touches a Stable Diffusion pipeline without any
downloaded weights; its images are noise.

The tokenizer is the real CLIP BPE (49,408 tokens), derived from the vocabulary file that ships
inside open_clip and written once to a cache directory as ``vocab.json``/``merges.txt``.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import torch

from probes._compat import patch_torchvision
from probes.fileio import atomic_write_text
from probes.hub import cache_dir

#: SD 1.x's noise schedule (``scaled_linear`` betas, 1000 training steps).
SD_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

_VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_tokenizer_files(directory: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write (once) and return ``(vocab.json, merges.txt)`` of the CLIP BPE tokenizer.

    They are derived from open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz`` exactly as CLIP
    builds its vocabulary: 256 byte tokens, the same with ``</w>``, the first 48,894 merges, then
    ``<|startoftext|>`` and ``<|endoftext|>``.
    """
    directory = Path(directory) if directory is not None else cache_dir() / "clip-bpe"
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    if vocab_path.is_file() and merges_path.is_file():
        return vocab_path, merges_path
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    tokens = list(_bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == _VOCAB_SIZE
    directory.mkdir(parents=True, exist_ok=True)
    # Atomic writes: concurrent builders never read half a file.
    atomic_write_text(vocab_path, json.dumps({t: i for i, t in enumerate(tokens)}))
    atomic_write_text(merges_path, "#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_path, merges_path


def build_clip_tokenizer(directory: str | os.PathLike | None = None):
    """A transformers ``CLIPTokenizer`` with CLIP's real vocabulary (max length 77)."""
    patch_torchvision()
    from transformers import CLIPTokenizer

    vocab_path, merges_path = clip_tokenizer_files(directory)
    # Paths go positionally: transformers 5 ignores the vocab_file=/merges_file= keywords.
    return CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=77)


def build_tiny_pipeline(seed: int = 0, prediction_type: str = "epsilon", sample_size: int = 16,
                        scheduler: str = "ddim"):
    """A tiny random-weight ``StableDiffusionPipeline`` (latents ``4 x sample_size^2``, images 8x).

    Args:
        seed: seeds every weight; the same seed gives the same pipeline.
        prediction_type: ``epsilon`` (SD 1.x) or ``v_prediction`` (SD 2.x).
        sample_size: latent side; images are ``8 * sample_size`` pixels wide.
        scheduler: ``ddim`` or ``pndm`` (both with SD's schedule).
    """
    patch_torchvision()
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_clip_tokenizer()
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=16)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
            block_out_channels=(8, 8, 16, 16), norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=8 * sample_size, scaling_factor=0.18215)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
            bos_token_id=_VOCAB_SIZE - 2, eos_token_id=_VOCAB_SIZE - 1, pad_token_id=_VOCAB_SIZE - 1))
    finally:
        torch.random.set_rng_state(state)
    if scheduler == "ddim":
        sched = DDIMScheduler(**SD_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type=prediction_type)
    elif scheduler == "pndm":
        sched = PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
                              prediction_type=prediction_type)
    else:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected 'ddim' or 'pndm'")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sched, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    for module in (unet, vae, text_encoder):
        module.eval()
    return pipe


def save_tiny_pipeline(directory: str | os.PathLike, **kwargs) -> Path:
    """Build a tiny pipeline (``kwargs`` as :func:`build_tiny_pipeline`) and save it in diffusers'
    on-disk layout, loadable with ``StableDiffusionPipeline.from_pretrained(directory)``."""
    directory = Path(directory)
    build_tiny_pipeline(**kwargs).save_pretrained(str(directory), safe_serialization=True)
    return directory
