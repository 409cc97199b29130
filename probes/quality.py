"""Sample quality of a run's final samples: conditional accuracy per level and a Frechet distance.

* **Conditional accuracy** (leaf-conditional runs): the fraction of samples whose classifier
  posterior, summed into the cells of a level cut, puts most mass on the cell of the leaf the
  sample was conditioned on. Level ``max_depth`` is the leaf level.
* **Frechet distance** between Gaussians fitted to features of the samples and of reference data,
  ``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2)`` (the FID formula, in the feature space
  of the run's own classifier: the digits CNN's hidden layer, CLIP's image embedding, an ImageNet
  network's logits; vectors of a Gaussian mixture are their own features). References: the
  held-out digits, exact samples of a mixture, or a folder of images (``quality.reference``).

Both need only the final samples, which every model-sampled run keeps in its batches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from probes.errors import ProbesError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# --- the two measures -------------------------------------------------------------------------


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Frechet (2-Wasserstein squared) distance between two Gaussians.

    The matrix square root uses the symmetric form ``(C1^1/2 C2 C1^1/2)^1/2``, whose trace equals
    that of ``(C1 C2)^1/2`` and which ``eigh`` handles stably (no complex parts to discard).
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    w, v = np.linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ cov2 @ root1
    middle = 0.5 * (middle + middle.T)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def frechet_distance_of_features(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted (mean, unbiased covariance) to two feature sets."""
    a, b = a.double().cpu().numpy(), b.double().cpu().numpy()
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least two samples on each side")
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def conditional_accuracy(log_probs: torch.Tensor, leaf: torch.Tensor, taxonomy) -> dict[int, float]:
    """``{level: accuracy}``: the most probable cell of each level cut is the conditioning leaf's.

    ``log_probs`` ``[N, L]`` in ``taxonomy.leaves`` order; ``leaf`` ``[N]`` leaf indices.
    """
    probs = log_probs.double().exp()
    leaves = taxonomy.leaves
    out = {}
    for level in range(1, taxonomy.max_depth + 1):
        cut = taxonomy.level_cut(level)
        cells = sorted(set(cut.values()), key=lambda c: [cut[x] for x in leaves].index(c))
        member = torch.tensor([[cut[x] == c for x in leaves] for c in cells], dtype=torch.float64)  # [C, L]
        cell_of_leaf = member.argmax(0)  # [L]
        predicted = (probs @ member.T).argmax(1)
        out[level] = float((predicted == cell_of_leaf[leaf.long()]).double().mean())
    return out


# --- features and references -------------------------------------------------------------------


@torch.no_grad()
def classifier_features(classifier, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Features of clean samples in the classifier's own feature space (see the module note)."""
    if x.ndim == 2:  # vectors (Gaussian mixtures) are their own features
        return x.double().cpu()
    out = []
    for chunk in x.split(batch):
        out.append(_features(classifier, chunk).double().cpu())
    return torch.cat(out)


def _features(classifier, x: torch.Tensor) -> torch.Tensor:
    inner = getattr(classifier, "classifier", None)
    decoder = getattr(classifier, "decoder", None)
    if inner is not None and decoder is not None:  # latent models: decode, then the image classifier
        return _features(inner, decoder(x))
    if hasattr(classifier, "features"):
        return classifier.features(x)
    if hasattr(classifier, "image_features"):
        return classifier.image_features(x)
    return classifier.logits(x)


def reference_files(folder: str | Path) -> list[Path]:
    """The image files of a reference folder, checked (a run calls this before it starts)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ProbesError(f"quality.reference: {folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(files) < 2:
        raise ProbesError(f"quality.reference: {folder} holds fewer than two images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def load_image_folder(folder: str | Path, limit: int = 2048) -> torch.Tensor:
    """Images of a folder as NCHW floats in ``[-1, 1]`` (RGB, resized to the first image's size)."""
    from PIL import Image

    files = reference_files(folder)[:limit]
    size = Image.open(files[0]).convert("RGB").size
    arrays = [np.asarray(Image.open(p).convert("RGB").resize(size), dtype=np.float32) for p in files]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1


# --- a run's quality ----------------------------------------------------------------------------


def measure_quality(x0: torch.Tensor, leaf: torch.Tensor | None, parts, reference: torch.Tensor | None) -> dict:
    """The ``quality`` block of run.json for final samples ``x0`` (``leaf``: conditioning leaves;
    ``parts``: anything with the run's ``classifier``, ``taxonomy`` and ``device``, e.g. its
    :class:`~probes.estimators.base.ProbeContext`)."""
    out: dict = {"n_samples": int(x0.shape[0])}
    classifier = parts.classifier
    if classifier is not None and leaf is not None:
        with torch.no_grad():
            log_probs = torch.cat([classifier(c.to(parts.device)).cpu() for c in x0.split(256)])
        per_level = conditional_accuracy(log_probs, leaf, parts.taxonomy)
        out["conditional_accuracy"] = {str(k): v for k, v in per_level.items()}
        out["conditional_accuracy_leaf"] = per_level[parts.taxonomy.max_depth]
    if reference is not None and (classifier is not None or x0.ndim == 2):
        feats = classifier_features(classifier, x0.to(parts.device))
        out["frechet_distance"] = frechet_distance_of_features(feats, reference)
        out["frechet_reference_n"] = int(reference.shape[0])
    return out
