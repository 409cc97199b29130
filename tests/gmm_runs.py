"""Recipes and runs on the four-leaf Gaussian mixture, shared by the tests of what is derived from
finished runs (``probes interval``, entropic grids, reports, compare)."""

from __future__ import annotations

from pathlib import Path

import yaml

TAXONOMY = Path(__file__).resolve().parents[1] / "taxonomies" / "gmm-two-by-two.yaml"


def gmm_recipe(folder: Path, name: str, seed: int = 4, samples: int = 64, batch_size: int = 32, n_boot: int = 0,
               **sampling) -> Path:
    """A leaf-conditional recipe on ``gmm-two-by-two`` in 2-D (coarse split 6, fine split 2, one axis
    per level), exact posteriors; ``sampling`` entries override the defaults (24 steps, sigma 40 to
    0.05). Written as ``folder/<name>.yaml``."""
    recipe = {
        "name": name, "seed": seed, "taxonomy": str(TAXONOMY),
        "model": {"kind": "gmm", "dim": 2, "std": 0.5,
                  "hierarchy": {"separations": [6.0, 2.0], "axis_aligned": True, "share_level_axes": True}},
        "classifier": {"kind": "exact"},
        "sampling": {"samples": samples, "batch_size": batch_size, "steps": 24, "sigma_max": 40.0, "sigma_min": 0.05,
                     "condition": "leaf", **sampling},
        "estimators": ["exact"], "analysis": {"n_boot": n_boot},
    }
    path = Path(folder) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def guidance_pair(folder: Path) -> Path:
    """``folder/w1`` and ``folder/w3``: the same recipe at guidance 1 and 3 (same seeds, so paired)."""
    import probes.runner as runner

    for name, scale in (("w1", 1.0), ("w3", 3.0)):
        runner.run(gmm_recipe(folder, name, n_boot=20, guidance={"scale": scale}), Path(folder) / name,
                   progress=False)
    return Path(folder)
