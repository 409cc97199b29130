"""Stable Diffusion (diffusers) as a denoiser on the sigma axis, and latent decoding for classifiers.

SD samples in a 4-channel latent space with a DDPM schedule (``scaled_linear`` betas, 1000 steps).
On the sigma axis a latent state is ``z_sigma = z0 + sigma * n``; the UNet sees
``z_sigma / sqrt(1 + sigma^2)`` at the timestep whose ``sigma_t = sqrt((1 - abar_t) / abar_t)``
matches, and its output (eps for SD 1.x, v for SD 2.x) is converted to ``z0_hat`` by
:class:`~probes.denoisers.DiscreteScheduleDenoiser`. Prompts are the conditioning: a batch's
``cond`` is a list with one prompt per sample, ``None`` meaning the unconditional branch (the empty
prompt, or the negative prompt when one is set). Classifiers see images, not latents:
:class:`LatentDecoder` decodes ``z0_hat`` with the VAE (optionally at a reduced size) and
:class:`DecodedClassifier` chains it in front of an image classifier.

Typical use (the run builds the same objects from a recipe's ``model``/``classifier`` fields)::

    pipe = load_pipeline("/weights/stable-diffusion-v1-5", dtype="float16", device="cuda")
    denoiser = StableDiffusionDenoiser(pipe, negative_prompt="blurry")
    guided = GuidedDenoiser(denoiser, scale=7.5)
    conditioner = prompt_conditioner(taxonomy)            # node -> "a photo of a {label}"
    classifier = DecodedClassifier(LatentDecoder(pipe.vae, decode_size=32),
                                   ClipZeroShotClassifier.create(taxonomy, "ViT-B-32", "openai"))
    x = denoiser.init_noise(8, generator)                 # latents at sigma_max
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from probes._compat import patch_torchvision
from probes.classifiers.base import Classifier
from probes.classifiers.clip import node_names
from probes.conditioning import PromptConditioner
from probes.denoisers.base import Denoiser
from probes.denoisers.discrete import DiscreteScheduleDenoiser
from probes.errors import ProbesError, quote_library_error
from probes.hub import hub_offline, quiet_loading_bars

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

_HINT = ("set model: /path/to/{folder} (a diffusers folder with model_index.json) in the recipe, "
         "or download it first with `hf download {id}`")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _looks_like_path(model: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else (absolute, ``./``, ``~``, deeper) is a path."""
    return (os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1
            or "\\" in model or model.endswith("/"))


def _check_model_available(model: str, offline: bool, folder: str = "stable-diffusion-v1-5") -> None:
    """Fail fast, with one line, when the weights cannot be found without a download."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ProbesError(f"model {model!r}: {path} is not a diffusers pipeline folder (no model_index.json); "
                              + _HINT.format(folder=folder, id="<hub id> --local-dir " + str(path)))
        return
    if _looks_like_path(model):
        raise ProbesError(f"model {model!r}: no such folder; "
                          + _HINT.format(folder=folder, id="<hub id> --local-dir " + model))
    if offline:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "model_index.json")
        if not isinstance(cached, str):
            raise ProbesError(f"model {model!r} is not in the local Hugging Face cache and the hub is offline "
                              f"(HF_HUB_OFFLINE / local_files_only); " + _HINT.format(folder=folder, id=model))


def load_pipeline(model: str, dtype: str = "float32", device: str | torch.device = "cpu",
                  local_files_only: bool | None = None, pipeline: str | tuple[str, ...] = "StableDiffusionPipeline"):
    """Load a diffusers pipeline (``StableDiffusionPipeline`` unless ``pipeline`` names the accepted
    classes; a local folder loads as the class it was saved from) from a hub id or a local folder.

    Args:
        model: hub id (``stable-diffusion-v1-5/stable-diffusion-v1-5``) or a folder in diffusers'
            layout (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ...).
        dtype: ``float32``, ``float16`` or ``bfloat16`` for every component.
        device: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``.
        local_files_only: never touch the network; defaults to ``HF_HUB_OFFLINE``.

    The safety checker is not loaded. A model that cannot be found raises a one-line
    :class:`ProbesError` before anything slow happens (offline, or a path that does not exist).
    """
    if dtype not in DTYPES:
        raise ProbesError(f"model dtype {dtype!r} is not one of {sorted(DTYPES)}")
    offline = hub_offline(local_files_only)
    folder = "stable-diffusion-v1-5" if pipeline == "StableDiffusionPipeline" else Path(str(model)).name
    _check_model_available(str(model), offline, folder)
    pipeline = _check_pipeline_class(Path(model).expanduser(), (pipeline,) if isinstance(pipeline, str) else pipeline)
    patch_torchvision()
    import diffusers

    source = str(Path(model).expanduser()) if Path(model).expanduser().exists() else str(model)
    extra = (dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
             if pipeline == "StableDiffusionPipeline" else {})
    try:
        with quiet_loading_bars():
            pipe = getattr(diffusers, pipeline).from_pretrained(source, dtype=DTYPES[dtype],
                                                                local_files_only=offline, **extra)
    except (OSError, ValueError) as err:  # hub errors are OSError subclasses
        raise ProbesError(f"model {model!r} could not be loaded ({quote_library_error(err)}); "
                          + _HINT.format(folder=folder, id=model)) from None
    pipe = pipe.to(resolve_device(device))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_pipeline_class(path: Path, accepted: tuple[str, ...]) -> str:
    """The class to load with; a local folder saved from another pipeline class fails here, in one
    line, not mid-run."""
    index = path / "model_index.json"
    if not index.is_file():
        return accepted[0]
    import json

    try:
        saved = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError):
        raise ProbesError(f"model {str(path)!r}: {index} is not valid JSON") from None
    if saved and saved not in accepted:
        raise ProbesError(f"model {str(path)!r} holds a {saved}, not a {' or '.join(accepted)}; use the recipe "
                          f"model.kind for {saved}")
    return saved or accepted[0]


class StableDiffusionDenoiser(Denoiser):
    """``D(z, sigma, prompts) -> z0_hat`` for a Stable Diffusion pipeline's UNet, on latents.

    Args:
        pipe: a ``StableDiffusionPipeline`` (or anything with ``unet``, ``scheduler``,
            ``encode_prompt`` and ``vae``).
        negative_prompt: the prompt used wherever ``cond`` has ``None`` (the unconditional branch
            of classifier-free guidance, or a fully unconditional call); ``None`` = empty prompt.
        clip_skip: passed to ``pipe.encode_prompt``.

    ``cond`` is ``None`` (every sample unconditional), one prompt for the whole batch, or a list
    with one ``str | None`` per sample. Prompt embeddings are computed once per distinct prompt
    and cached. The latent state stays in float32 whatever the UNet's dtype; the UNet input is cast.
    """

    def __init__(self, pipe, negative_prompt: str | None = None, clip_skip: int | None = None):
        super().__init__()
        self.pipe = pipe
        self.unet = pipe.unet
        self.negative_prompt = negative_prompt
        self.clip_skip = clip_skip
        config = pipe.scheduler.config
        self.prediction_type = getattr(config, "prediction_type", None) or "epsilon"
        self.inner = DiscreteScheduleDenoiser(self._model_fn, pipe.scheduler.alphas_cumprod, self.prediction_type)
        self.inner.to(pipe.unet.device)  # the schedule lives where the latents are
        self.sigma_min, self.sigma_max = self.inner.sigma_min, self.inner.sigma_max
        self._embeddings: dict[str, torch.Tensor] = {}
        self.encoder_calls = 0  # text-encoder batches run (for tests and profiling)

    # -- prompts -------------------------------------------------------------------------------

    def _prompt_text(self, prompt: str | None) -> str:
        if prompt is None:
            return self.negative_prompt if self.negative_prompt is not None else ""
        if not isinstance(prompt, str):
            raise TypeError(f"prompts must be str or None, got {type(prompt).__name__}")
        return prompt

    @torch.no_grad()
    def encode(self, prompts: Sequence[str | None]) -> torch.Tensor:
        """Text embeddings ``[len(prompts), tokens, width]`` (cached per prompt string)."""
        texts = [self._prompt_text(p) for p in prompts]
        missing = list(dict.fromkeys(t for t in texts if t not in self._embeddings))
        if missing:
            embeds, _ = self.pipe.encode_prompt(missing, self.unet.device, 1, False, clip_skip=self.clip_skip)
            self.encoder_calls += 1
            for text, emb in zip(missing, embeds):
                self._embeddings[text] = emb.to(self.unet.dtype)
        return torch.stack([self._embeddings[t] for t in texts])

    def clear_cache(self) -> None:
        self._embeddings.clear()

    def _batch_prompts(self, cond: Any, batch: int) -> list[str | None]:
        if cond is None:
            return [None] * batch
        if isinstance(cond, str):
            return [cond] * batch
        cond = list(cond)
        if len(cond) != batch:
            raise ValueError(f"got {len(cond)} prompts for a batch of {batch}")
        return cond

    # -- the network ---------------------------------------------------------------------------

    def _model_fn(self, x_in: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        emb = self.encode(self._batch_prompts(cond, x_in.shape[0]))
        dtype = self.unet.dtype
        return self.unet(x_in.to(dtype), t.to(x_in.device), encoder_hidden_states=emb, return_dict=False)[0]

    def forward(self, x: torch.Tensor, sigma, cond: Any = None) -> torch.Tensor:
        return self.inner(x, sigma, cond)

    # -- helpers -------------------------------------------------------------------------------

    @property
    def sigmas(self) -> torch.Tensor:
        """The training schedule's sigmas, ascending with the timestep (``sigma_min .. sigma_max``)."""
        return self.inner.sigmas

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """``(channels, h, w)`` of the latents for an image of ``height x width`` pixels."""
        factor = int(getattr(self.pipe, "vae_scale_factor", 8))
        size = self.unet.config.sample_size
        h = height // factor if height else (size if isinstance(size, int) else size[0])
        w = width // factor if width else (size if isinstance(size, int) else size[1])
        return (self.unet.config.in_channels, h, w)

    def init_noise(self, batch: int, generator: torch.Generator | None = None, *, sigma: float | None = None,
                   height: int | None = None, width: int | None = None) -> torch.Tensor:
        """Starting latents ``sigma * n`` (float32, on the UNet's device); ``sigma`` defaults to
        ``sigma_max`` (~14.6 for SD's schedule)."""
        sigma = self.sigma_max if sigma is None else float(sigma)
        device = self.unet.device
        gen_device = generator.device if generator is not None else device
        noise = torch.randn((batch, *self.latent_shape(height, width)), generator=generator, device=gen_device)
        return noise.to(device) * sigma


class LatentDecoder(torch.nn.Module):
    """VAE decoding of latent ``z0`` estimates to images in ``[-1, 1]`` (NCHW, float32).

    Args:
        vae: the pipeline's ``AutoencoderKL``.
        decode_size: if set, latents larger than this are resized (area-averaged) so that their
            shorter side is ``decode_size`` before decoding: SD 1.5's 64x64 latents at
            ``decode_size=32`` decode to 256x256 images at a quarter of the cost.
    """

    def __init__(self, vae, decode_size: int | None = None):
        super().__init__()
        self.vae = vae
        self.decode_size = decode_size
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.calls = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z / self.scaling_factor + self.shift_factor
        if self.decode_size is not None and min(z.shape[-2:]) > self.decode_size:
            h, w = z.shape[-2:]
            scale = self.decode_size / min(h, w)
            z = F.interpolate(z.float(), size=(round(h * scale), round(w * scale)), mode="area")
        self.calls += 1
        image = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
        return image.float().clamp(-1, 1)


class DecodedClassifier(Classifier):
    """An image classifier applied to decoded latents: ``classifier(decoder(z0))``.

    Leaves, groups and temperature are the image classifier's (setting ``temperature`` here sets
    it there), so estimators can treat latent-space models like any other.
    """

    def __init__(self, decoder: torch.nn.Module, classifier: Classifier):
        torch.nn.Module.__init__(self)
        self.decoder = decoder
        self.classifier = classifier
        self.leaves = list(classifier.leaves)
        self.group_index = None

    @property
    def temperature(self) -> float:  # type: ignore[override]
        return self.classifier.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.classifier.temperature = float(value)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.logits(self.decoder(x))

    def leaf_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return self.classifier.leaf_log_probs(logits)


def node_prompts(taxonomy, nodes: Sequence[str] | None = None, template: str = "a photo of a {}.") -> dict[str, str]:
    """One prompt per taxonomy node: the node's first ``prompts`` entry if it has one, else
    ``template`` filled with its label (or alias, or WordNet lemma, or its readable name)."""
    if nodes is None:
        nodes = list(taxonomy.graph.nodes) if hasattr(taxonomy, "graph") else list(taxonomy.leaves)
    out = {}
    for node in nodes:
        attrs = taxonomy.node_attrs(node) or {}
        prompts = attrs.get("prompts") or []
        out[node] = prompts[0] if prompts else template.format(node_names(node, attrs)[0])
    return out


def prompt_conditioner(taxonomy, template: str = "a photo of a {}.",
                       overrides: Mapping[str, str] | None = None) -> PromptConditioner:
    """A :class:`~probes.conditioning.PromptConditioner` over every node of ``taxonomy``
    (see :func:`node_prompts`); ``overrides`` replaces the prompts of the nodes it names."""
    prompts = node_prompts(taxonomy, template=template)
    prompts.update(overrides or {})
    return PromptConditioner(prompts)
