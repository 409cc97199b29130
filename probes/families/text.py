"""Prompt conditioning shared by the text-to-image families (SDXL, SD 3, Flux, PixArt).

A text family's denoiser takes ``cond`` as ``None`` (the empty or negative prompt), one prompt for
the batch, a list with one ``str | None`` per sample, or a dict of already-encoded tensors with
one row per sample (what users of T5 pipelines often hold instead of the text encoders). Prompts
are encoded once with the pipeline's own ``encode_prompt`` and cached.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from probes.denoisers.base import Denoiser
from probes.errors import ProbesError

Embeddings = dict[str, torch.Tensor]


class TextDenoiser(Denoiser):
    """``D(x, sigma, cond)`` of a text-conditioned network.

    Args:
        inner: the parameterisation adapter (discrete or flow) whose ``model_fn`` is ``self.network``.
        encode: ``list[str] -> {name: tensor [n, ...]}`` with the pipeline's text encoders.
        network: ``(x_in, t, embeddings) -> native output``: the family's forward call.
        negative_prompt: the text for ``None`` entries; ``None`` means the empty prompt.
    """

    def __init__(self, make_inner: Callable[[Callable], Denoiser], encode: Callable[[list[str]], Embeddings],
                 network: Callable[[torch.Tensor, torch.Tensor, Embeddings], torch.Tensor],
                 negative_prompt: str | None = None):
        super().__init__()
        self.encode_fn, self.network = encode, network
        self.negative_prompt = negative_prompt
        self.inner = make_inner(self._model_fn)
        self.sigma_min, self.sigma_max = self.inner.sigma_min, self.inner.sigma_max
        self._cache: dict[str, Embeddings] = {}

    def _model_fn(self, x_in, t, embeddings):
        return self.network(x_in, t, embeddings)

    @torch.no_grad()
    def embeddings(self, cond: Any, batch: int) -> Embeddings:
        if isinstance(cond, Mapping):
            rows = {k: v.shape[0] for k, v in cond.items() if isinstance(v, torch.Tensor)}
            if any(n != batch for n in rows.values()):
                raise ProbesError(f"prompt embeddings have {rows} rows for a batch of {batch}")
            return dict(cond)
        if cond is None or isinstance(cond, str):
            cond = [cond] * batch
        cond = list(cond)
        if len(cond) != batch:
            raise ProbesError(f"got {len(cond)} prompts for a batch of {batch}")
        texts = [self.negative_prompt or "" if p is None else p for p in cond]
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            try:
                encoded = self.encode_fn(missing)
            except (AttributeError, TypeError) as err:
                raise ProbesError(f"cannot encode prompts with this pipeline ({type(err).__name__}: {err}); "
                                  f"pass prompt embeddings as cond, or load the pipeline with its text encoders"
                                  ) from None
            for i, text in enumerate(missing):
                self._cache[text] = {k: v[i] for k, v in encoded.items()}
        return {k: torch.stack([self._cache[t][k] for t in texts]) for k in self._cache[texts[0]]}

    def forward(self, x, sigma, cond=None):
        return self.inner(x, sigma, self.embeddings(cond, x.shape[0]))

