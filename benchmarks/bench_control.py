"""Control derived from measurements, checked on sample quality.

1. Guidance interval. Two runs of ``recipes/digits-guidance.yaml`` (guidance 3 and 1) give the
   interval by ``probes interval RUN_W3 --against RUN_W1`` (leaf level); the decision window of the
   unguided run's leaf level is the single-run alternative. Then fresh leaf-conditional samples with
   guidance 3 everywhere, only inside each interval, and without guidance are scored: conditional
   accuracy (leaf), Frechet distance to the held-out digits in the classifier's feature space, and
   the guided denoiser calls. A coarse grid of intervals shows where the derived one sits. The same
   comparison runs on a Gaussian mixture (exact posterior and exact reference samples).
2. Entropic grid. At equal numbers of steps, ``grid: {from_run: RUN_W1}`` against ``geometric``
   and ``karras``, on the digits model's Frechet distance (guidance 1).

All settings share their starting noise and sampler noise (common random numbers), so differences
between rows are differences of the settings, not of the draws.

    python benchmarks/bench_control.py [--runs DIR]   # measuring runs are kept in DIR and reused
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import probes  # noqa: E402,F401  (the torchvision fix before anything imports it)
import probes.runner as runner  # noqa: E402
from probes.components import build_components  # noqa: E402
from probes.denoisers import GuidedDenoiser  # noqa: E402
from probes.errors import ProbesError  # noqa: E402
from probes.interval import derive_interval  # noqa: E402
from probes.noise import grid_from_run, karras_grid, make_grid  # noqa: E402
from probes.quality import measure_quality, reference_features  # noqa: E402
from probes.recipe import load_recipe  # noqa: E402
from probes.sampling import sample  # noqa: E402

GRID_LO = [None, 0.5, 1.5]  # None: down to sigma = 0
GRID_HI = [3.0, 8.0, None]  # None: from sigma_max


def ensure_run(recipe, out: Path) -> None:
    """Run ``recipe`` into ``out``, reusing the batches ``out`` already holds of this very recipe
    (``--resume`` refuses a run of another recipe; that one is replaced)."""
    try:
        runner.run(recipe, out, resume=out.exists(), progress=False)
    except ProbesError:
        runner.run(recipe, out, overwrite=True, progress=False)


def draw(parts, sigmas, scale, interval, n, seed, batch=250):
    """``n`` leaf-conditional samples (leaves cycling) with guidance ``scale`` inside ``interval``."""
    leaves = parts.taxonomy.leaves
    gen = parts.denoiser if scale == 1.0 else GuidedDenoiser(parts.denoiser, scale, interval)
    xs, ys = [], []
    for start in range(0, n, batch):
        idx = torch.arange(start, min(n, start + batch))
        g = torch.Generator().manual_seed(seed + start)
        dtype = torch.float64 if parts.exact_model is not None else torch.float32
        noise = torch.randn((len(idx), *parts.shape), generator=g, dtype=dtype) * sigmas[0]
        leaf = idx % len(leaves)
        with torch.no_grad():
            traj = sample(gen, noise, sigmas, method="ancestral", cond=parts.conditioner([leaves[i] for i in leaf]),
                          generator=g, record=False)
        xs.append(traj.x0)
        ys.append(leaf)
    return torch.cat(xs), torch.cat(ys), int(getattr(gen, "extra_evaluations", 0))


def score(parts, reference, sigmas, scale, interval, n, seed):
    x0, leaf, guided = draw(parts, sigmas, scale, interval, n, seed)
    q = measure_quality(x0, leaf, parts, reference)
    return q["conditional_accuracy_leaf"], q["frechet_distance"], guided


def fmt_interval(iv):
    if iv is None:
        return "everywhere"
    return f"({iv[0]:.3g}, {iv[1]:.3g}]"


def interval_table(title, parts, reference, sigmas, scale, derived: dict, n, seed):
    rows = [("no guidance (scale 1)", None, score(parts, reference, sigmas, 1.0, None, n, seed))]
    rows.append((f"guidance {scale:g} everywhere", None, score(parts, reference, sigmas, scale, None, n, seed)))
    for name, iv in derived.items():
        rows.append((f"guidance {scale:g} in {name}", iv, score(parts, reference, sigmas, scale, iv, n, seed)))
    everywhere = rows[1][2][2]
    print(f"\n{title} ({n} samples, {len(sigmas)} ancestral steps, same noise in every row)")
    print("| setting | interval | accuracy (leaf) | Frechet distance | guided calls | saved |")
    print("|---|---|---|---|---|---|")
    for name, iv, (acc, fd, calls) in rows:
        saved = f"{1 - calls / everywhere:.0%}" if everywhere and calls else "–"
        print(f"| {name} | {fmt_interval(iv) if 'scale 1' not in name else '–'} | {acc:.3f} | {fd:.4g} | {calls} "
              f"| {saved} |")
    return rows


def grid_search(parts, reference, sigmas, scale, n, seed, derived):
    smax, smin = float(sigmas[0]), 0.0
    print(f"\ngrid search over guidance intervals (lo, hi] at scale {scale:g}, {n} samples: accuracy / Frechet "
          "distance (fewer samples than above, so every distance is larger: compare within this table)")
    print("| lo \\ hi | " + " | ".join(f"{h if h is not None else smax:g}" for h in GRID_HI) + " |")
    print("|---" * (len(GRID_HI) + 1) + "|")
    for lo in GRID_LO:
        cells = []
        for hi in GRID_HI:
            a, b = smin if lo is None else lo, smax if hi is None else hi
            if a >= b:
                cells.append("–")
                continue
            acc, fd, _ = score(parts, reference, sigmas, scale, (a, b), n, seed)
            cells.append(f"{acc:.3f} / {fd:.3g}")
        print(f"| {lo if lo is not None else 0:g} | " + " | ".join(cells) + " |")
    same_n = [f"{k} {fmt_interval(v)}: " + "{:.3f} / {:.3g}".format(*score(parts, reference, sigmas, scale, v, n, seed))
              for k, v in derived.items()]
    print(f"at the same {n} samples: " + "; ".join(same_n))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=500, help="samples per scored setting")
    p.add_argument("--probe-samples", type=int, default=200, help="samples of each measuring run")
    p.add_argument("--runs", help="folder for the measuring runs (default: a temporary one)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # small batches: extra threads only contend on a shared machine
    t0 = time.perf_counter()
    work = Path(args.runs) if args.runs else Path(tempfile.mkdtemp(prefix="bench-control-"))
    work.mkdir(parents=True, exist_ok=True)

    # --- digits ------------------------------------------------------------------------------------------
    recipe_path = "digits-guidance"  # a shipped recipe, by name
    n_probe = f"sampling.samples={args.probe_samples}"
    for name, scale in (("digits-w1", 1.0), ("digits-w3", 3.0)):
        ensure_run(load_recipe(recipe_path, overrides=[n_probe, f"sampling.guidance.scale={scale}"]), work / name)
    pair = derive_interval(work / "digits-w3", against=work / "digits-w1")
    window = derive_interval(work / "digits-w1")
    print(f"measuring runs: {args.probe_samples} samples each, bayes estimator, in {work}")
    print("derived from the guided/unguided pair:\n" + "\n".join(pair["text"].splitlines()[:-1]))
    print("derived from the decision window:\n" + "\n".join(window["text"].splitlines()[:-1]))
    recipe = load_recipe(recipe_path)
    parts = build_components(recipe)
    reference = reference_features(recipe, parts)
    s = recipe.sampling
    sigmas = make_grid(s.grid, s.sigma_max, s.sigma_min, s.steps)
    derived = {"the pair interval": pair["interval"], "the decision window": window["interval"]}
    interval_table("digits: guidance interval", parts, reference, sigmas, s.guidance.scale, derived, args.samples,
                   seed=11)
    grid_search(parts, reference, sigmas, s.guidance.scale, args.samples // 2, 11, derived)

    # --- entropic grid on digits ---------------------------------------------------------------------------
    print(f"\ndigits: step grids at equal steps, guidance 1, Frechet distance ({args.samples} samples; "
          "entropic: grid from_run the unguided run, half the steps log-uniform)")
    print("| steps | geometric | karras | from_run |")
    print("|---|---|---|---|")
    for steps in (12, 24):
        grids = {"geometric": make_grid("geometric", s.sigma_max, s.sigma_min, steps),
                 "karras": karras_grid(s.sigma_max, s.sigma_min, steps),
                 "from_run": grid_from_run(work / "digits-w1", s.sigma_max, s.sigma_min, steps)}
        fds = {k: score(parts, reference, g, 1.0, None, args.samples, 23)[1] for k, g in grids.items()}
        print(f"| {steps} | " + " | ".join(f"{fds[k]:.4g}" for k in ("geometric", "karras", "from_run")) + " |")

    # --- a Gaussian mixture ------------------------------------------------------------------------------
    gmm_path = "gmm-hierarchy"
    # Within-class std 1 (not the recipe's 0.5), so that the fine split is not trivially separable
    # and accuracy has room to move.
    common = ["sampling.condition=leaf", "estimators=[exact]", f"sampling.samples={args.probe_samples * 2}",
              "analysis.n_boot=0", "model.std=1.0"]
    for name, scale in (("gmm-w1", 1.0), ("gmm-w3", 3.0)):
        ensure_run(load_recipe(gmm_path, overrides=common + [f"sampling.guidance.scale={scale}"]), work / name)
    g_pair = derive_interval(work / "gmm-w3", against=work / "gmm-w1")
    g_window = derive_interval(work / "gmm-w1")
    print("\nderived on the mixture from the pair:\n" + "\n".join(g_pair["text"].splitlines()[:-1]))
    g_recipe = load_recipe(gmm_path, overrides=common)
    g_parts = build_components(g_recipe)
    g_ref = reference_features(g_recipe, g_parts)
    gs = g_recipe.sampling
    g_sigmas = make_grid(gs.grid, gs.sigma_max, gs.sigma_min, gs.steps)
    interval_table("Gaussian mixture (gmm-hierarchy with std 1, exact classifier, exact reference samples)", g_parts,
                   g_ref, g_sigmas, 3.0,
                   {"the pair interval": g_pair["interval"], "the decision window": g_window["interval"]},
                   args.samples, seed=5)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
