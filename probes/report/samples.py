"""What a run keeps of its samples, so a surprising curve can be traced to the samples behind it.

While sampling, :func:`keep_samples` puts into each batch record the final samples, the guidance
calls spent, and (first batch only) the denoiser's x0 predictions at a few sigmas for a few samples.
At the end :func:`write_sample_files` writes

* ``samples.csv``: per sample its index, batch, the batch's seed and its place in the batch (the
  generator of batch b is seeded with ``batch_seed``; a sample is reproduced by rerunning that
  batch), its conditioning leaf or prompt, the classifier's top leaf and that leaf's probability,
  and its preview file;
* ``previews/sample_NNNNN.png``: a small picture of each final sample (the first 512);
* ``strips/strip_NNNNN.png`` and ``strips/strips.json``: x0 predictions along sigma.

Pictures exist for image models (pixels directly, latents through the classifier's decoder);
vector data (Gaussian mixtures) has none.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from probes.report.rundir import format_float, write_csv

MAX_PREVIEWS = 512
STRIP_SIGMAS = 12  # predictions per strip
STRIPS_PER_LEAF = 2
MAX_STRIPS = 24
PREVIEW_SIDE = 64  # pixels; 8x8 digits are scaled up by repetition, large images down


def keep_samples(record: dict, traj, idx: torch.Tensor, cond, b: int, guided_calls: int) -> None:
    """Store what the run directory keeps of a sampled batch in its ``record``."""
    record["x0"] = traj.x0.detach().cpu()
    record["guided_calls"] = int(guided_calls)
    record["condition_text"] = [str(c) for c in cond] if isinstance(cond, (list, tuple)) else None
    if b == 0 and traj.denoised is not None:
        steps = len(traj.sigmas)
        at = np.unique(np.linspace(0, steps - 1, min(STRIP_SIGMAS, steps)).round().astype(int))
        chosen = _strip_samples(traj.leaf, traj.x0.shape[0])
        record["strip"] = {
            "sigmas": [float(traj.sigmas[i]) for i in at],
            "samples": [int(idx[j]) for j in chosen],
            "x0_hat": traj.denoised[torch.as_tensor(at)][:, chosen].detach().cpu(),  # [K, n, ...]
        }


def _strip_samples(leaf: torch.Tensor | None, n: int) -> list[int]:
    """A few samples per conditioning leaf (or the first few when the leaf is unknown)."""
    if leaf is None:
        return list(range(min(n, MAX_STRIPS // 3)))
    chosen, seen = [], {}
    for j, y in enumerate(leaf.tolist()):
        if seen.get(y, 0) < STRIPS_PER_LEAF and len(chosen) < MAX_STRIPS:
            chosen.append(j)
            seen[y] = seen.get(y, 0) + 1
    return chosen


# --- pictures ------------------------------------------------------------------------------------


@torch.no_grad()
def to_pictures(parts, x: torch.Tensor) -> np.ndarray | None:
    """Samples as ``uint8 [N, H, W, 3]`` pictures, or ``None`` for data that is not an image."""
    if x.ndim != 4:
        return None
    decoder = getattr(parts.classifier, "decoder", None)
    if decoder is not None:
        x = torch.cat([decoder(c.to(parts.device)).float().cpu() for c in x.split(16)])
    elif x.shape[1] not in (1, 3):
        return None  # latents without a decoder
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    side = x.shape[-1]
    if side < PREVIEW_SIDE:
        x = x.repeat_interleave(PREVIEW_SIDE // side, -1).repeat_interleave(PREVIEW_SIDE // side, -2)
    elif side > PREVIEW_SIDE:
        x = torch.nn.functional.interpolate(x.float(), size=(PREVIEW_SIDE, PREVIEW_SIDE), mode="area",
                                            antialias=False).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _save_png(array: np.ndarray, path: Path) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, optimize=True)
    return path.as_posix()


def write_sample_files(out: Path, batches: list[dict], parts, recipe) -> int:
    """samples.csv, previews/ and strips/ from a run's batches; returns the number of samples listed."""
    if not batches or any("x0" not in b for b in batches):
        return 0
    leaves = parts.taxonomy.leaves
    x0 = torch.cat([b["x0"] for b in batches])
    pictures = to_pictures(parts, x0[:MAX_PREVIEWS])
    top = top_prob = None
    if parts.classifier is not None:
        with torch.no_grad():
            lp = torch.cat([parts.classifier(c.to(parts.device)).float().cpu() for c in x0.split(256)])
        top_prob, top = lp.exp().max(1)
    rows, i = [], 0
    for b in batches:
        texts = b.get("condition_text")
        for j in range(b["n"]):
            condition = texts[j] if texts else (leaves[int(b["leaf"][j])] if b.get("leaf") is not None else "")
            preview = ""
            if pictures is not None and i < len(pictures):
                preview = f"previews/sample_{i:05d}.png"
                _save_png(pictures[i], out / preview)
            rows.append([i, b["batch"], b.get("batch_seed", ""), j, condition,
                         leaves[int(top[i])] if top is not None else "",
                         format_float(top_prob[i]) if top_prob is not None else "", preview])
            i += 1
    write_csv(out / "samples.csv", ["index", "batch", "batch_seed", "index_in_batch", "condition", "classifier_leaf",
                                     "classifier_prob", "preview"], rows)
    strip = batches[0].get("strip")
    if strip is not None:
        k, n = strip["x0_hat"].shape[:2]
        frames = to_pictures(parts, strip["x0_hat"].reshape(k * n, *strip["x0_hat"].shape[2:]))
        if frames is not None:
            frames = frames.reshape(k, n, *frames.shape[1:])
            listed = []
            for col, index in enumerate(strip["samples"]):
                gap = np.full((frames.shape[2], 4, 3), 255, dtype=np.uint8)
                row = np.concatenate([a for t in range(k) for a in (frames[t, col], gap)][:-1], axis=1)
                name = f"strips/strip_{index:05d}.png"
                _save_png(row, out / name)
                listed.append({"index": index, "condition": rows[index][4], "file": name})
            (out / "strips").mkdir(exist_ok=True)
            (out / "strips" / "strips.json").write_text(json.dumps({"sigmas": strip["sigmas"], "strips": listed},
                                                                   indent=1))
    return len(rows)
