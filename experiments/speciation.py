"""Speciation of two Gaussian classes: when does the entropy H(Y | x_sigma) fall, and how fast?

Two equiprobable classes at +-m with |m|^2 = d and unit within-class std. For each dimension d:

* the entropy curve H(Y | x_sigma), from the quadrature theory and by Monte Carlo from the exact
  posterior on forward-noised samples (x0 + sigma n, the same n along the whole curve);
* its rate dH/dt in VP time t = 0.5 log(1 + sigma^2) (with s0 = 1, t = log s exactly, so this is
  also the rate in log s), the rate's peak t_peak and its half-peak window width;
* the speciation time t_S = 0.5 log(Lambda), Lambda the top eigenvalue of the data covariance.

Theory says the rate peaks at r^2 = |m|^2 / s^2 ~ 1.508, i.e. t_peak = 0.5 log(d / 1.508), while
t_S = 0.5 log(1 + d): t_peak / t_S -> 1 slowly and t_S - t_peak -> 0.5 log 1.508 ~ 0.21, with a
window whose width in t does not depend on d.

    python experiments/speciation.py [--dims 256 1024 4096 16384] [--samples 4000] [--out runs/speciation]

Writes ``curves.csv`` (one row per d and t), ``summary.csv`` (one row per d) and ``rate.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch

from probes.models.gmm import GaussianMixture
from probes.models.gmm_theory import two_class_entropy_curve, two_class_rate_curve
from probes.noise import sigma_from_vp_time

OFFSETS = np.linspace(-2.0, 2.0, 401)  # t - t_S; the half-peak window spans about [-0.75, 0.55]


def peak_and_window(t: np.ndarray, rate: np.ndarray) -> tuple[float, float]:
    """The rate's peak (parabola through the top three grid points) and the half-peak window width
    (crossings of half the peak, linearly interpolated; the window must lie inside the grid)."""
    i = int(np.argmax(rate))
    if not 0 < i < len(t) - 1:
        raise ValueError("the rate peaks at the edge of the t grid")
    y0, y1, y2 = rate[i - 1:i + 2]
    shift = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)  # vertex offset in grid steps
    t_peak = t[i] + shift * (t[i + 1] - t[i])
    half = 0.5 * rate[i]
    above = np.flatnonzero(rate >= half)
    lo, hi = above[0], above[-1]
    if lo == 0 or hi == len(t) - 1:
        raise ValueError("the half-peak window reaches the edge of the t grid")
    t_lo = np.interp(half, [rate[lo - 1], rate[lo]], [t[lo - 1], t[lo]])
    t_hi = np.interp(half, [rate[hi + 1], rate[hi]], [t[hi + 1], t[hi]])
    return float(t_peak), float(t_hi - t_lo)


def monte_carlo_entropy(mixture: GaussianMixture, sigmas: torch.Tensor, n: int, seed: int,
                        chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over ``n`` samples of H(p(y | x0 + sigma n)) along ``sigmas``."""
    gen = torch.Generator().manual_seed(seed)
    per_sample = []
    for start in range(0, n, chunk):  # chunks bound memory at large d
        x0, _ = mixture.sample(min(chunk, n - start), gen)
        noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        log_p = mixture.log_posterior_path(x0, noise, sigmas)  # [chunk, S, 2]
        per_sample.append(-(log_p.exp() * log_p).sum(-1))
    h = torch.cat(per_sample).numpy()
    return h.mean(0), h.std(0, ddof=1) / math.sqrt(n)


def run(dims: list[int], samples: int, out: Path, seed: int = 0) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    curves, summary = [], []
    for d in dims:
        mixture = GaussianMixture.two_class(d, mean_norm_sq_per_dim=1.0, std=1.0)
        mean_norm = math.sqrt(d)
        t_s = mixture.speciation_time()
        t = t_s + OFFSETS
        sigmas = sigma_from_vp_time(torch.from_numpy(t))
        h_theory = two_class_entropy_curve(sigmas.numpy(), mean_norm, 1.0)
        rate_theory = two_class_rate_curve(sigmas.numpy(), mean_norm, 1.0)  # dH/dlog s = dH/dt here
        h_mc, h_se = monte_carlo_entropy(mixture, sigmas, samples, seed + d)
        rate_mc = np.gradient(h_mc, t)
        peak_th, width_th = peak_and_window(t, rate_theory)
        peak_mc, width_mc = peak_and_window(t, rate_mc)
        summary.append(dict(dim=d, Lambda=mixture.largest_eigenvalue(), t_S=t_s,
                            t_peak_theory=peak_th, t_peak_mc=peak_mc,
                            ratio_theory=peak_th / t_s, ratio_mc=peak_mc / t_s,
                            width_theory=width_th, width_mc=width_mc,
                            max_abs_H_error=float(np.abs(h_mc - h_theory).max()),
                            max_H_se=float(h_se.max())))
        for j in range(len(t)):
            curves.append(dict(dim=d, t=t[j], t_minus_tS=OFFSETS[j], sigma=float(sigmas[j]),
                               H_theory=h_theory[j], H_mc=h_mc[j], H_mc_se=h_se[j],
                               rate_theory=rate_theory[j], rate_mc=rate_mc[j]))
    _write_csv(out / "curves.csv", curves)
    _write_csv(out / "summary.csv", summary)
    _plot(out / "rate.png", curves, summary)
    return summary


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.10g}" if isinstance(v, float) else v) for k, v in row.items()})


def _plot(path: Path, curves: list[dict], summary: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_rel) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for row in summary:
        d = row["dim"]
        mine = [c for c in curves if c["dim"] == d]
        t = np.array([c["t"] for c in mine])
        rel = np.array([c["t_minus_tS"] for c in mine])
        th = np.array([c["rate_theory"] for c in mine])
        mc = np.array([c["rate_mc"] for c in mine])
        (line,) = ax_t.plot(t, th, label=f"d = {d}")
        ax_t.axvline(row["t_S"], color=line.get_color(), ls=":", lw=1)
        ax_rel.plot(rel, th, color=line.get_color(), label=f"d = {d} (theory)")
        ax_rel.plot(rel[::8], mc[::8], "o", ms=3, color=line.get_color())
    ax_t.set(xlabel="VP time t = 0.5 log(1 + sigma^2)", ylabel="dH(Y | x_t) / dt  (nats)",
             title="rate of the class entropy; dotted: t_S")
    ax_rel.axvline(0, color="k", ls=":", lw=1)
    ax_rel.set(xlabel="t - t_S", title="aligned on t_S = 0.5 log Lambda (dots: Monte Carlo)")
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--samples", type=int, default=4000, help="Monte Carlo samples per dimension")
    parser.add_argument("--out", type=Path, default=Path("runs/speciation"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    summary = run(args.dims, args.samples, args.out, args.seed)
    print(f"{'d':>6} | {'t_S':>6} | {'t_peak':>6} | {'t_peak/t_S':>10} | {'width':>6} || "
          f"{'t_peak MC':>9} | {'ratio MC':>8} | {'width MC':>8} | {'max|dH|':>8} | {'max SE':>7}")
    for r in summary:
        print(f"{r['dim']:>6} | {r['t_S']:6.3f} | {r['t_peak_theory']:6.3f} | {r['ratio_theory']:10.4f} | "
              f"{r['width_theory']:6.3f} || {r['t_peak_mc']:9.3f} | {r['ratio_mc']:8.4f} | "
              f"{r['width_mc']:8.3f} | {r['max_abs_H_error']:8.4f} | {r['max_H_se']:7.4f}")
    print(f"wrote {args.out}/curves.csv, summary.csv, rate.png in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
