"""The kept samples as files: ``samples.csv``, ``previews/`` and ``strips/`` (see docs/outputs.md).

* ``samples.csv``: per sample its index, batch, the batch's seed and its place in the batch (the
  generator of batch b is seeded with ``batch_seed``; a sample is reproduced by rerunning that
  batch), its conditioning leaf or prompt, the classifier's top leaf and that leaf's probability,
  and its preview file;
* ``previews/sample_NNNNN.png``: a small picture of each of the first 512 samples;
* ``strips/strip_NNNNN.png`` and ``strips/strips.json``: x0 predictions along sigma.

:func:`read_samples` reads them back (``probes.load``).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from probes.fileio import atomic_write_bytes, atomic_write_text, read_text
from probes.kept_samples import SAMPLE_COLUMNS, KeptSamples, Strip
from probes.report.rundir import format_float, write_csv


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 ``[H, W, 3]`` picture as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="png", optimize=True)
    return buf.getvalue()


def strip_picture(frames: np.ndarray, gap: int = 4) -> np.ndarray:
    """A strip's frames ``[K, H, W, 3]`` side by side with white gaps, as one picture."""
    white = np.full((frames.shape[1], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([a for t in range(len(frames)) for a in (frames[t], white)][:-1], axis=1)


def write_samples(out: Path, kept: KeptSamples | None) -> list[str]:
    """Write the kept samples' files into ``out``; returns the names written (none without samples)."""
    if kept is None or not kept.rows:
        return []
    out = Path(out)
    rows = []
    for row in kept.rows:
        i = row["index"]
        preview = ""
        if kept.previews is not None and i < len(kept.previews):
            preview = f"previews/sample_{i:05d}.png"
            (out / "previews").mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(out / preview, png_bytes(kept.previews[i]))
        rows.append([i, row["batch"], row["batch_seed"], row["index_in_batch"], row["condition"],
                     row["classifier_leaf"], format_float(row["classifier_prob"]), preview])
    write_csv(out / "samples.csv", SAMPLE_COLUMNS, rows)
    written = ["samples.csv"] + (["previews"] if kept.previews is not None else [])
    if kept.strips:
        (out / "strips").mkdir(parents=True, exist_ok=True)
        listed = []
        for strip in kept.strips:
            name = f"strips/strip_{strip.index:05d}.png"
            atomic_write_bytes(out / name, png_bytes(strip_picture(strip.frames)))
            listed.append({"index": strip.index, "condition": strip.condition, "file": name})
        atomic_write_text(out / "strips" / "strips.json",
                          json.dumps({"sigmas": kept.strip_sigmas, "strips": listed}, indent=1))
        written.append("strips")
    return written


def read_samples(directory: Path) -> KeptSamples | None:
    """The kept samples of a run or result directory, or None when it lists none. Pictures that
    cannot be read are left out (they are illustrations; the numbers are in the other files)."""
    from PIL import Image

    directory = Path(directory)
    path = directory / "samples.csv"
    if not path.is_file():
        return None
    rows, previews = [], []
    for raw in csv.DictReader(io.StringIO(read_text(path, "samples.csv"))):
        try:
            prob = raw.get("classifier_prob") or ""
            rows.append({"index": int(raw["index"]), "batch": int(raw["batch"]),
                         "batch_seed": int(raw["batch_seed"]) if raw.get("batch_seed") else "",
                         "index_in_batch": int(raw["index_in_batch"]), "condition": raw.get("condition") or "",
                         "classifier_leaf": raw.get("classifier_leaf") or "",
                         "classifier_prob": float(prob) if prob else None})
        except (KeyError, TypeError, ValueError):
            return None  # not a samples table this version wrote: nothing is kept rather than half
        file = raw.get("preview")
        if file:
            previews.append(_picture(directory / file, Image))
    kept = KeptSamples(rows=rows)
    if previews and all(p is not None for p in previews) and len({p.shape for p in previews}) == 1:
        kept.previews = np.stack(previews)
    _read_strips(directory, kept, Image)
    return kept


def _picture(path: Path, image_module) -> np.ndarray | None:
    try:
        with image_module.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):
        return None


def _read_strips(directory: Path, kept: KeptSamples, image_module) -> None:
    try:
        info = json.loads(read_text(directory / "strips" / "strips.json", "strips.json"))
        sigmas = [float(s) for s in info["sigmas"]]
        listed = info["strips"]
    except Exception:  # no strips, or not a file this version wrote: none are kept
        return
    strips = []
    for entry in listed if isinstance(listed, list) else []:
        try:
            picture = _picture(directory / entry["file"], image_module)
            k = len(sigmas)
            width = (picture.shape[1] - 4 * (k - 1)) // k
            frames = np.stack([picture[:, t * (width + 4): t * (width + 4) + width] for t in range(k)])
            strips.append(Strip(index=int(entry["index"]), condition=str(entry["condition"]), frames=frames))
        except Exception:  # a damaged strip is left out
            continue
    kept.strip_sigmas, kept.strips = sigmas, strips
