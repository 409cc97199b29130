"""The ``guided`` estimator's band against exact density propagation of the guided chain.

Five 1-D leaf-conditional cases (classes at +-1.5 with guidance 1, 2.5 and 3; four leaves on a line,
-4.5 / -1.5 | 1.5 / 4.5 with a 0.1 / 0.2 / 0.3 / 0.4 prior, guidance 2 everywhere or 3 only for
steps starting in (1, 5]; std 0.5, 64 ancestral steps to sigma 0.05), each over several seeds.
The oracle is ``tests/exact_oracles.py``'s grid propagation. Per case, over every sigma and every
level and node of every seed:

* crossings: points where the plain mean of the lower bound exceeds that of the upper bound, for
  the upper bound scored on the drawn leaf (``-log q(y | x)``, the former estimator) and for the
  shipped one (its expectation given the path);
* misses: points where the oracle lies outside the plain means, outside the means widened by 3
  standard errors, and outside the shipped band (``EntropyCurves.level_bounds``: 4 standard errors
  plus Bernstein's range term, see ``probes/entropy/engine.py``), with the worst shortfall;
* the shipped band's mean and largest width.

    python benchmarks/bench_guided_band.py [--samples 4096] [--seeds 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

from exact_oracles import Tree, guided_chain_curves  # noqa: E402

from probes.build import leaves_from_prior  # noqa: E402
from probes.denoisers.base import GuidedDenoiser  # noqa: E402
from probes.estimators import ProbeContext, build_estimator  # noqa: E402
from probes.estimators.guided import cross_fitted_log_q, expected_cross_entropy_terms  # noqa: E402
from probes.models.gmm import GaussianMixture  # noqa: E402
from probes.noise import geometric_grid  # noqa: E402
from probes.sampling import sample  # noqa: E402
from probes.taxonomy import from_nested  # noqa: E402

TWO = (["minus", "plus"], [-1.5, 1.5], [0.5, 0.5], 30.0)  # (tree, means, prior, sigma_max)
LINE = ({"left": ["left-a", "left-b"], "right": ["right-a", "right-b"]}, [-4.5, -1.5, 1.5, 4.5],
        [0.1, 0.2, 0.3, 0.4], 40.0)
CASES = [  # (label, (tree, means, prior, sigma_max), guidance, interval)
    ("two classes, guidance 1", TWO, 1.0, None),
    ("two classes, guidance 2.5", TWO, 2.5, None),
    ("two classes, guidance 3", TWO, 3.0, None),
    ("four leaves, guidance 2", LINE, 2.0, None),
    ("four leaves, guidance 3 in (1, 5]", LINE, 3.0, (1.0, 5.0)),
]


class Interval:
    """Guidance only for steps whose starting sigma lies in ``(lo, hi]`` (the recipes' interval)."""

    def __init__(self, guided, plain, lo: float, hi: float):
        self.guided, self.plain, self.lo, self.hi = guided, plain, lo, hi

    def __call__(self, x, sigma, cond=None):
        return (self.guided if self.lo < float(sigma) <= self.hi else self.plain)(x, sigma, cond)


def flat(levels, nodes) -> np.ndarray:
    """Levels ``[..., S, D]`` and nodes ``[..., S, K]`` as one array ``[..., S * (D + K)]``."""
    both = np.concatenate([np.asarray(levels), np.asarray(nodes)], -1)
    return both.reshape(*both.shape[:-2], -1)


def outside(truth: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> int:
    """Points where the truth lies outside ``[lower, upper]`` beyond float64 rounding near log L."""
    return int(np.sum((truth < lower - 1e-9) | (truth > upper + 1e-9)))


def one_run(spec, scale, interval, samples, seed):
    """Per-sample bounds (shipped and former upper), the shipped curves and the oracle, flattened
    over (sigma, curve): a dict of arrays ``[N, P]`` or ``[P]``."""
    nested, means, prior, sigma_max = spec
    tax = from_nested(nested, name="line")
    gmm = GaussianMixture.from_means(tax.leaves, torch.tensor([[m] for m in means], dtype=torch.float64), 0.5,
                                     weights=torch.tensor(prior, dtype=torch.float64))
    grid = geometric_grid(sigma_max, 0.05, 64)
    cond = gmm.conditioner(tax)
    denoiser = GuidedDenoiser(gmm.denoiser(), scale) if scale != 1.0 else gmm.denoiser()
    if interval:
        denoiser = Interval(denoiser, gmm.denoiser(), *interval)
    gen = torch.Generator().manual_seed(seed)
    leaf = leaves_from_prior(torch.arange(samples), gmm.weights)
    traj = sample(denoiser, float(grid[0]) * torch.randn(samples, 1, generator=gen, dtype=torch.float64), grid,
                  "ancestral", cond=cond([tax.leaves[i] for i in leaf.tolist()]), generator=gen, leaf=leaf)
    ctx = ProbeContext(tax, sigmas=grid, denoiser=gmm.denoiser(), conditioner=cond, guided_denoiser=denoiser,
                       classifier=gmm.classifier(), exact_model=gmm, prior=gmm.weights)
    out = build_estimator("guided").estimate(traj, ctx, torch.Generator().manual_seed(seed + 1))
    curves = out.curves(tax, prior=ctx.prior)
    # the former upper bound: the same cross-fitted q, scored on the drawn leaf
    ref = torch.stack([gmm.log_posterior(traj.states[i], float(grid[i])) for i in range(len(grid))], 1)
    log_q = cross_fitted_log_q(ref, leaf, 2, torch.Generator().manual_seed(seed + 1))
    drawn = torch.log(torch.nn.functional.one_hot(leaf, len(tax.leaves)).double())[:, None].expand_as(log_q)
    former_levels, former_nodes = expected_cross_entropy_terms(log_q, drawn, tax)
    oracle = guided_chain_curves(means, 0.5, prior, scale, grid.numpy(), Tree(nested), interval=interval)
    truth = flat(np.stack([oracle[f"level_{n}"] for n in curves.level_names], -1),
                 np.stack([oracle[f"node_{n}"] for n in curves.node_names], -1))
    (lo_l, hi_l), (lo_n, hi_n) = curves.level_bounds(), curves.node_bounds()
    return {"lo": flat(curves.bounds["levels_lo"], curves.bounds["nodes_lo"]),
            "hi": flat(curves.bounds["levels_hi"], curves.bounds["nodes_hi"]),
            "former_hi": flat(former_levels.numpy(), former_nodes.numpy()),
            "band_lo": flat(lo_l, lo_n), "band_hi": flat(hi_l, hi_n),
            "point": flat(curves.level_mean(), curves.node_mean()), "truth": truth}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"\n### guided band: {args.samples} samples, {args.seeds} seeds per case, 64 ancestral steps\n")
    print("| case | points | crossings, drawn-leaf upper | crossings, shipped | misses, plain means | "
          "misses, 3 stderr | misses, shipped band | worst shortfall (nats) | band width mean / max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for label, spec, scale, interval in CASES:
        counts = np.zeros(6, dtype=int)
        worst, widths = -np.inf, []
        for seed in range(args.seeds):
            r = one_run(spec, scale, interval, args.samples, seed)
            n = r["lo"].shape[0]
            lo, hi, former = r["lo"].mean(0), r["hi"].mean(0), r["former_hi"].mean(0)
            se_lo, se_hi = r["lo"].std(0, ddof=1) / np.sqrt(n), r["hi"].std(0, ddof=1) / np.sqrt(n)
            truth = r["truth"]
            counts += [truth.size, int(np.sum(lo > former)), int(np.sum(lo > hi)), outside(truth, lo, hi),
                       outside(truth, lo - 3 * se_lo, hi + 3 * se_hi), outside(truth, r["band_lo"], r["band_hi"])]
            assert np.all(r["band_lo"] <= r["point"]) and np.all(r["point"] <= r["band_hi"])
            worst = max(worst, float(np.max(np.maximum(r["band_lo"] - truth, truth - r["band_hi"]))))
            widths.append(r["band_hi"] - r["band_lo"])
        widths = np.concatenate(widths)
        print(f"| {label} | {counts[0]} | {counts[1]} | {counts[2]} | {counts[3]} | {counts[4]} | {counts[5]} | "
              f"{worst:+.4f} | {widths.mean():.4f} / {widths.max():.4f} |")


if __name__ == "__main__":
    main()
