"""``bayes``: the online Bayes filter for ``p(y | x_sigma)`` along an ancestral trajectory."""

from __future__ import annotations

import torch

from probes.errors import ProbesError, UnsupportedCondition
from probes.estimators.base import Counter, Estimator, EstimatorOutput, ProbeContext, chunks, needs_states

# Trajectories whose step i -> i+1 is (to first order) the Gaussian kernel N(mu_y, (1 - a) t^2 I).
KERNEL_METHODS = ("ancestral", "forward")
OUTSIDE_KERNELS = ("auto", "complement", "unconditional")
# Smallest filtered outside mass the complement kernel divides by (see BayesEstimator).
_MIN_OUTSIDE = 1e-4


class BayesEstimator(Estimator):
    """Filter ``log p(y | x_i)`` step by step with class-conditional denoisers.

    Start at the prior at ``sigmas[0]``. For a step from ``s`` to ``t`` with ``a = t^2 / s^2``, the
    kernel of ``x_{i+1}`` given ``x_i`` and class y is ``N(a x_i + (1 - a) D(x_i; s, y), (1 - a) t^2)``,
    so (``Y -> x_{i+1} -> x_i`` is Markov along the reverse chain)::

        log p(y | x_{i+1}) = log p(y | x_i) - |x_{i+1} - mu_y|^2 / (2 (1 - a) t^2) + const.

    Exact in the small-step limit; the error of a finite grid shrinks as the grid is refined.
    Valid only for trajectories made of such Gaussian steps: ``ancestral`` samples and ``forward``
    data paths. Cost: ``L`` denoiser calls per sample per step (no classifier); ``sigma_stride``
    thins the output only (the filter needs every step).

    **The model's world beyond the taxonomy.** When the samples may come from outside the taxonomy
    (``ctx.outside_mass > 0``: unconditional samples of a model with classes that are not leaves)
    the filter carries one more cell, *outside*, with prior ``ctx.outside_mass``; the leaves' output
    columns then sum to the inside mass ``p(T | x)``. Its kernel is the model conditioned on the
    outside classes when the conditioner can say so (mixtures: the complement mask, exact).
    Otherwise it is built from the unconditional model by the mixture identity
    ``D(x) = sum_y p(y | x) D(x; y) + p(out | x) D(x; out)``, solved for ``D(x; out)`` with the
    filter's current posterior (``complement``; along the reverse chain the filtered posterior *is*
    ``p(y | x_i)``, the sampled states before it carry no more information about the class).
    ``unconditional`` lets the unconditional model stand in for the outside as it is, the
    choice of the seed paper: its prediction averages inside and outside classes, and
    ``docs/estimators.md`` measures what that costs. Cost: one more call per step.

    Args:
        outside: ``auto`` (the exact outside kernel where the conditioner has one, else
            ``complement``), ``complement`` or ``unconditional``.

    Needs: ``ctx.cond_denoiser``, ``ctx.conditioner`` able to condition on every leaf, ``ctx.prior``.
    """

    name = "bayes"

    def __init__(self, outside: str = "auto", sigma_stride: int = 1):
        super().__init__(sigma_stride)
        if outside not in OUTSIDE_KERNELS:
            raise ProbesError(f"estimator 'bayes': outside must be one of {', '.join(OUTSIDE_KERNELS)}, "
                              f"got {outside!r}")
        self.outside = outside

    def estimate(self, traj, ctx: ProbeContext, generator=None) -> EstimatorOutput:
        if traj is not None and traj.method not in KERNEL_METHODS:
            raise ProbesError(
                f"estimator 'bayes' inverts the Gaussian kernel of ancestral steps (variance (1 - a) sigma_next^2); "
                f"a {traj.method!r} trajectory has "
                f"{'no' if traj.method in ('euler', 'heun', 'ddim') else 'a different'} "
                f"step noise: sample with method='ancestral' or use forward paths")
        denoiser = Counter(ctx.require("cond_denoiser", self.name, "it needs class-conditional predictions"))
        conditioner = ctx.require("conditioner", self.name, "it conditions the denoiser on every leaf")
        idx = self.grid_index(len(traj.sigmas))
        out = filter_log_posterior(traj, denoiser, conditioner, ctx, idx, self.name, outside=self.outside)
        return EstimatorOutput(self.name, traj.sigmas[idx], log_probs=out, denoiser_calls=denoiser.calls)


def filter_log_posterior(traj, denoiser, conditioner, ctx: ProbeContext, idx: list[int], name: str,
                         outside: str = "auto") -> torch.Tensor:
    """``log p(leaf | x_0..x_i)`` ``[B, len(idx), L]`` along the trajectory, from ``ctx.prior`` at
    ``sigmas[0]``, with the per-leaf Gaussian kernels of ``denoiser(x, s, conditioner(leaf))``
    (plus an outside cell when ``ctx.outside_mass > 0``, see :class:`BayesEstimator`).

    With the plain conditional denoiser this is :class:`BayesEstimator`; with the guided denoiser
    of a guided run it is the exact posterior given the whole path of that run's own chain.
    """
    states = needs_states(traj, name)
    leaves = list(ctx.taxonomy.leaves)
    n_leaves, n_sigmas, batch = len(leaves), len(traj.sigmas), states.shape[1]
    with_outside = ctx.outside_mass > 0
    n_cells = n_leaves + int(with_outside)
    sig = traj.sigmas.tolist()
    col = {i: j for j, i in enumerate(idx)}
    out = torch.empty(batch, len(idx), n_leaves, dtype=torch.float32)
    prior = ctx.prior
    if with_outside:
        prior = torch.cat([(1 - ctx.outside_mass) * prior, prior.new_tensor([ctx.outside_mass])])
    log_prior = prior.log().to(states.device)
    # The states' own precision (float32 for networks): the centred kernel scores below lose
    # nothing to it; the running log-posterior [b, cells] is float64.
    work = states.dtype if states.dtype in (torch.float32, torch.float64) else torch.float32
    for rows in chunks(batch, ctx.batch_size // n_cells):
        b = rows.stop - rows.start
        cond = conditioner([leaf for leaf in leaves for _ in range(b)])  # leaf-major, matches repeat
        cond_outside = _outside_cond(conditioner, b, outside) if with_outside else None
        complement = with_outside and cond_outside is None and outside != "unconditional"
        lp = log_prior.expand(b, n_cells).clone()
        if 0 in col:
            out[rows, col[0]] = lp[:, :n_leaves].float().cpu()
        for i in range(n_sigmas - 1):
            s, t = sig[i], sig[i + 1]
            a, var = t**2 / s**2, (1 - t**2 / s**2) * t**2
            x = states[i, rows]
            with torch.no_grad():
                d = denoiser(x.repeat(n_leaves, *([1] * (x.ndim - 1))), s, cond)
                d = d.to(work).reshape(n_leaves, b, -1)
                if with_outside:
                    d_out = denoiser(x, s, cond_outside).reshape(b, -1)
                    if complement:  # D(x; out) from D(x) = sum_y p(y|x) D(x; y) + p(out|x) D(x; out)
                        q = lp.exp()  # [b, cells]; a division by q_out: float64
                        inside = torch.einsum("lb,lbd->bd", q[:, :n_leaves].T, d.double())
                        d_out = (d_out.double() - inside) / q[:, n_leaves:].clamp_min(_MIN_OUTSIDE)
                    d = torch.cat([d, d_out.to(work).reshape(1, b, -1)])
            score = _kernel_scores(x.to(work).reshape(b, -1), states[i + 1, rows].to(work).reshape(b, -1), d, a)
            lp = torch.log_softmax(lp - score.double().T / (2 * var), dim=-1)
            if i + 1 in col:
                out[rows, col[i + 1]] = lp[:, :n_leaves].float().cpu()
    return out


def _kernel_scores(x: torch.Tensor, x_next: torch.Tensor, d: torch.Tensor, a: float) -> torch.Tensor:
    """``|x_next - mu_y|^2`` up to a term shared by every cell, ``[cells, b]``, with
    ``mu_y = a x + (1 - a) d_y`` (``x``, ``x_next`` ``[b, D]``, ``d`` ``[cells, b, D]``).

    Centred on the cells' mean prediction: with ``e = x_next - mean_y mu_y`` and
    ``delta_y = d_y - mean_y d_y``, ``|x_next - mu_y|^2 = |e|^2 - 2 (1 - a) <e, delta_y> +
    (1 - a)^2 |delta_y|^2``, and ``|e|^2`` cancels in the softmax. Summing the full squares of a
    16k-dimensional latent in float32 loses the small differences between cells (0.016 in
    ``log p`` at SD 1.5 size, ``benchmarks/bench_float64.py``); the centred terms keep them
    (within 3e-6 of float64 arithmetic), so no float64 is needed in the loop.
    """
    d_bar = d.mean(0)
    delta = d - d_bar
    e = x_next - (a * x + (1 - a) * d_bar)
    return -2 * (1 - a) * (e * delta).sum(-1) + (1 - a) ** 2 * (delta * delta).sum(-1)


def _outside_cond(conditioner, n: int, outside: str):
    """The outside cell's ``cond``: the model conditioned on the classes outside the taxonomy, or
    ``None`` (the unconditional model, as it is or solved for the complement)."""
    if outside != "auto":
        return None
    try:
        return conditioner.outside(n)
    except (UnsupportedCondition, AttributeError):
        return None
