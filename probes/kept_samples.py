"""What a probe keeps of its samples, so a surprising curve can be traced to the samples behind it.

:class:`KeptSamples` holds, per sample, where it came from (batch, the batch's seed, its place in
the batch), its conditioning leaf or prompt, the classifier's reading of it, a small picture of
the first :data:`MAX_PREVIEWS` samples, and for a few samples (two per conditioning leaf) the
model's predicted clean image ``D(x; sigma)`` at a few sigmas (x0 strips). A run fills it from its
batches (:func:`keep_batch` while sampling, :func:`kept_from_batches` at the end); ``probes.probe``
from the pipeline's own trajectory (:func:`kept_from_trajectory`). Pictures exist for image models
(pixels directly, latents through the family's decoder); vector data has none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

MAX_PREVIEWS = 512
STRIP_SIGMAS = 12  # predictions per strip
STRIPS_PER_LEAF = 2
MAX_STRIPS = 24
PREVIEW_SIDE = 64  # pixels; 8x8 digits are scaled up by repetition, large images down
SAMPLE_COLUMNS = ["index", "batch", "batch_seed", "index_in_batch", "condition", "classifier_leaf",
                  "classifier_prob", "preview"]


@dataclass
class Strip:
    """One sample's predictions along sigma: ``frames`` uint8 ``[K, H, W, 3]`` at the kept sigmas."""

    index: int
    condition: str
    frames: np.ndarray


@dataclass
class KeptSamples:
    """Per-sample rows (``SAMPLE_COLUMNS`` but ``preview``), previews of the first samples
    (uint8 ``[n, H, W, 3]``, or None), and strips at ``strip_sigmas``."""

    rows: list[dict]
    previews: np.ndarray | None = None
    strip_sigmas: list[float] = field(default_factory=list)
    strips: list[Strip] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


# --- pictures ------------------------------------------------------------------------------------


@torch.no_grad()
def to_pictures(decode: Callable | None, x: torch.Tensor, device=None) -> np.ndarray | None:
    """Samples as ``uint8 [N, H, W, 3]`` pictures (``decode``: states -> images in ``[-1, 1]``), or
    ``None`` for states that are not images."""
    if decode is None or x.ndim not in (3, 4) or len(x) == 0:
        return None
    x = torch.cat([decode(c.to(device) if device is not None else c).float().cpu() for c in x.split(16)])
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        return None
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    side = x.shape[-1]
    if side < PREVIEW_SIDE:
        x = x.repeat_interleave(PREVIEW_SIDE // side, -1).repeat_interleave(PREVIEW_SIDE // side, -2)
    elif side > PREVIEW_SIDE:
        x = torch.nn.functional.interpolate(x.float(), size=(PREVIEW_SIDE, PREVIEW_SIDE), mode="area",
                                            antialias=False).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


# --- a run's batches -------------------------------------------------------------------------------


def keep_batch(record: dict, traj, idx: torch.Tensor, cond, b: int, guided_calls: int) -> None:
    """Store in a batch's ``record`` what is kept of it: the final samples, the guidance calls spent,
    the conditions as text and (first batch only) x0 predictions at a few sigmas for a few samples."""
    record["x0"] = traj.x0.detach().cpu()
    record["guided_calls"] = int(guided_calls)
    record["condition_text"] = [str(c) for c in cond] if isinstance(cond, (list, tuple)) else None
    if b == 0 and traj.denoised is not None:
        at = strip_steps(len(traj.sigmas))
        chosen = strip_samples(traj.leaf, traj.x0.shape[0])
        record["strip"] = {
            "sigmas": [float(traj.sigmas[i]) for i in at],
            "samples": [int(idx[j]) for j in chosen],
            "x0_hat": traj.denoised[torch.as_tensor(at)][:, chosen].detach().cpu(),  # [K, n, ...]
        }


def strip_steps(n_sigmas: int) -> list[int]:
    """Grid indices of a strip's columns: at most :data:`STRIP_SIGMAS`, spread evenly."""
    return np.unique(np.linspace(0, n_sigmas - 1, min(STRIP_SIGMAS, n_sigmas)).round().astype(int)).tolist()


def strip_samples(leaf: torch.Tensor | None, n: int) -> list[int]:
    """A few samples per conditioning leaf (or the first few when the leaf is unknown)."""
    if leaf is None:
        return list(range(min(n, MAX_STRIPS // 3)))
    chosen, seen = [], {}
    for j, y in enumerate(leaf.tolist()):
        if seen.get(y, 0) < STRIPS_PER_LEAF and len(chosen) < MAX_STRIPS:
            chosen.append(j)
            seen[y] = seen.get(y, 0) + 1
    return chosen


@torch.no_grad()
def _readings(classifier, x0: torch.Tensor, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The classifier's top leaf and its probability per sample (None without a classifier)."""
    if classifier is None:
        return None, None
    lp = torch.cat([classifier(c.to(device)).float().cpu() for c in x0.split(256)])
    prob, top = lp.exp().max(1)
    return top, prob


def kept_from_batches(batches: list[dict], leaves: Sequence[str], classifier, decode, device) -> KeptSamples | None:
    """What a run keeps, from its batch records (None when they hold no final samples)."""
    if not batches or any("x0" not in b for b in batches):
        return None
    x0 = torch.cat([b["x0"] for b in batches])
    top, prob = _readings(classifier, x0, device)
    rows, i = [], 0
    for b in batches:
        texts = b.get("condition_text")
        for j in range(b["n"]):
            condition = texts[j] if texts else (leaves[int(b["leaf"][j])] if b.get("leaf") is not None else "")
            rows.append({"index": i, "batch": b["batch"], "batch_seed": b.get("batch_seed", ""), "index_in_batch": j,
                         "condition": condition, "classifier_leaf": leaves[int(top[i])] if top is not None else "",
                         "classifier_prob": float(prob[i]) if prob is not None else None})
            i += 1
    kept = KeptSamples(rows=rows, previews=to_pictures(decode, x0[:MAX_PREVIEWS], device))
    strip = batches[0].get("strip")
    if strip is not None:
        _add_strips(kept, strip["x0_hat"], strip["sigmas"], strip["samples"], decode, device)
    return kept


def _add_strips(kept: KeptSamples, x0_hat: torch.Tensor, sigmas: list[float], samples: list[int], decode,
                device) -> None:
    k, n = x0_hat.shape[:2]
    frames = to_pictures(decode, x0_hat.reshape(k * n, *x0_hat.shape[2:]), device)
    if frames is None:
        return
    frames = frames.reshape(k, n, *frames.shape[1:])
    kept.strip_sigmas = [float(s) for s in sigmas]
    kept.strips = [Strip(index=int(index), condition=str(kept.rows[index]["condition"]), frames=frames[:, col])
                   for col, index in enumerate(samples)]


def kept_from_trajectory(traj, leaves: Sequence[str], classifier, decode, device, conditions=None,
                         seeds: Sequence[int] | None = None) -> KeptSamples:
    """What ``probes.probe`` keeps of a pipeline call: its final samples (read from the last
    prediction), the classifier's readings of them, and strips of a few samples' predictions
    (``conditions``: the prompts or class of each sample, when known; ``seeds``: each sample's
    generator seed, when known)."""
    x0 = traj.denoised[-1]
    top, prob = _readings(classifier, x0, device)
    rows = []
    for i in range(x0.shape[0]):
        rows.append({"index": i, "batch": 0, "batch_seed": "" if seeds is None else seeds[i], "index_in_batch": i,
                     "condition": "" if conditions is None else str(conditions[i]),
                     "classifier_leaf": leaves[int(top[i])] if top is not None else "",
                     "classifier_prob": float(prob[i]) if prob is not None else None})
    kept = KeptSamples(rows=rows, previews=to_pictures(decode, x0[:MAX_PREVIEWS], device))
    at = strip_steps(len(traj.sigmas))
    chosen = strip_samples(None, x0.shape[0])
    x0_hat = traj.denoised[torch.as_tensor(at)][:, chosen].detach()
    _add_strips(kept, x0_hat, [float(traj.sigmas[i]) for i in at], chosen, decode, device)
    return kept
