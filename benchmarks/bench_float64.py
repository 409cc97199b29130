"""Does the ``bayes`` filter need float64? Its step adds ``-|x_{i+1} - mu_y|^2 / (2 var)`` per leaf,
summed over every latent dimension (16,384 for SD 1.5's 4x64x64 latents). Each term is ~d/2 nats
while the differences between leaves that move the posterior can be far smaller.

On a 16-leaf Gaussian mixture at SD 1.5's latent size (class means apart in a 64-dim subspace,
within-class std 1, so decisions fall inside SD's sigma range 14.6..0.03), with the exact
per-leaf denoisers and SD's 50-step Karras grid, this compares the filter's log-posteriors from
float32 states and predictions (what a float32 or float16 network hands it), against the same
filter run in float64 arithmetic on those same inputs:

* ``probes.estimators.bayes.filter_log_posterior`` as shipped: float32 arithmetic, centred on the
  mean over leaves (with ``e = x_{i+1} - mean_y mu_y`` and ``delta_y = D_y - mean_y D_y``, only
  ``-2 (1-a) <e, delta_y> + (1-a)^2 |delta_y|^2``; ``|e|^2`` is the same for every leaf and drops
  out of the softmax, so no large terms cancel);
* float32 arithmetic with the plain formula (``|x_{i+1} - mu_y|^2`` per leaf, summed);

and against the error the filter makes anyway: its distance from the exact posterior at the same
states (``GaussianMixture.log_posterior``), which a finite grid leaves.

    PYTHONPATH=. python benchmarks/bench_float64.py [--dim 16384] [--samples 32] [--steps 50]
"""

from __future__ import annotations

import argparse
import math

import torch

from probes.estimators import ProbeContext
from probes.estimators.bayes import filter_log_posterior
from probes.models.gmm import GaussianMixture
from probes.noise import karras_grid
from probes.sampling import forward_path
from probes.taxonomy import Taxonomy


def flat_taxonomy(n: int) -> Taxonomy:
    import networkx as nx

    g = nx.DiGraph()
    g.add_edges_from(("root", str(i)) for i in range(n))
    return Taxonomy(g, name=f"flat-{n}")


def filter_float32_summed(states, per_leaf, n_leaves: int, sigmas) -> torch.Tensor:
    """The filter's update in float32 with the plain summed squares: ``[B, S, L]`` log-posteriors
    from a uniform prior; ``per_leaf(i)`` gives the predictions ``[L * B, ...]`` (leaf-major)."""
    batch = states.shape[1]
    lp = torch.full((batch, n_leaves), -math.log(n_leaves), dtype=torch.float32)
    out = [lp]
    for i in range(len(sigmas) - 1):
        s, t = float(sigmas[i]), float(sigmas[i + 1])
        a, var = t**2 / s**2, (1 - t**2 / s**2) * t**2
        x, x_next = states[i].reshape(batch, -1), states[i + 1].reshape(batch, -1)
        d = per_leaf(i).reshape(n_leaves, batch, -1)  # [L, B, dim]
        mu = a * x[None] + (1 - a) * d
        sq = ((x_next[None] - mu) ** 2).sum(-1)
        lp = torch.log_softmax(lp - sq.T / (2 * var), dim=-1)
        out.append(lp)
    return torch.stack(out, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dim", type=int, default=4 * 64 * 64)
    p.add_argument("--leaves", type=int, default=16)
    p.add_argument("--subspace", type=int, default=64)
    p.add_argument("--separation", type=float, default=3.0, help="typical distance between class means")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    means = torch.zeros(args.leaves, args.dim, dtype=torch.float64)
    means[:, : args.subspace] = torch.randn(args.leaves, args.subspace, generator=g, dtype=torch.float64)
    means *= args.separation / math.sqrt(2 * args.subspace)  # |m_y - m_y'| ~ separation
    gmm = GaussianMixture(means, std=1.0)
    tax = flat_taxonomy(args.leaves)
    sigmas = karras_grid(14.6, 0.03, args.steps)
    x0, leaf = gmm.sample(args.samples, generator=g)
    traj = forward_path(x0, sigmas, g, leaf=leaf)  # the ideal reverse chain's law: the filter is exact up to the grid
    traj.method = "forward"
    traj.states = traj.states.float()  # what a float32 network run records

    conditioner = gmm.conditioner(tax)
    leaves = tax.leaves

    def denoiser_f32(x, s, cond):  # float32 predictions, as a float32 network gives
        return gmm.denoise(x.double(), s, cond).float()

    def denoiser_f64(x, s, cond):  # the same float32 predictions, handed on in float64
        return denoiser_f32(x, s, cond).double()

    ctx = ProbeContext(taxonomy=tax, cond_denoiser=denoiser_f32, conditioner=conditioner)
    shipped = filter_log_posterior(traj, denoiser_f32, conditioner, ctx, list(range(len(sigmas))), "bayes")
    float32_states = traj.states
    traj.states = float32_states.double()  # the same inputs, float64 arithmetic
    reference = filter_log_posterior(traj, denoiser_f64, conditioner, ctx, list(range(len(sigmas))), "bayes")
    traj.states = float32_states
    cond = conditioner([leaf for leaf in leaves for _ in range(args.samples)])

    def per_leaf(i):
        return denoiser_f32(traj.states[i].repeat(args.leaves, 1), float(sigmas[i]), cond)

    naive = filter_float32_summed(traj.states, per_leaf, args.leaves, sigmas)
    exact = torch.stack([gmm.log_posterior(traj.states[i].double(), float(sigmas[i])) for i in range(len(sigmas))], 1)

    def entropy(lp):
        return -(lp.double().exp() * lp.double().clamp_min(-1e30)).nansum(-1)  # [B, S]

    h_ref = entropy(reference)
    print(f"bayes filter, {args.leaves} leaves, dim {args.dim}, {args.samples} samples, {args.steps}-step Karras grid "
          f"14.6..0.03; float32 states and predictions")
    print(f"  mean leaf entropy at the grid's first/middle/last sigma (float64 filter): "
          f"{h_ref[:, 0].mean():.3f} / {h_ref[:, len(sigmas) // 2].mean():.3f} / {h_ref[:, -1].mean():.3f} nats")
    rows = [("float32, centred on the leaf mean (shipped)", shipped), ("float32, |x - mu_y|^2 summed", naive),
            ("exact posterior at the same states", exact)]
    print("  | against the float64 filter | max |d log p| (p > 1e-3) | max |d H| nats | mean |d H| nats |")
    print("  |---|---|---|---|")
    for name, lp in rows:
        keep = reference.exp() > 1e-3
        dlp = (lp.double() - reference.double()).abs()[keep].max()
        dh = (entropy(lp) - h_ref).abs()
        print(f"  | {name} | {dlp:.2e} | {dh.max():.2e} | {dh.mean():.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
