"""``guided``: the entropy of the run's own (guided, leaf-conditional) process, with a band around it.

A guided run samples from a law ``p_w(x, y)`` that is not the model's: classifier-free guidance
changes the chain itself. The quantity that says how much the state reveals the conditioning leaf
is ``H_w(Y | x_sigma)`` under that law; the unguided model's posterior read at guided states
measures something else (tenths of a nat away). No estimator is exact for it, but two bounds are
always available in leaf-conditional runs:

* **lower**: ``H_w(Y | x_0..x_i) <= H_w(Y | x_i)`` (conditioning on more reduces entropy; the
  guided chain is not the reversal of a noising process, so the path knows more than the state).
  ``p_w(y | path)`` is exact: the Bayes filter with the run's *guided* per-leaf kernels
  (``a x + (1 - a) D_w(x; s, y)``, variance ``(1 - a) t^2``), the chain's own transition.
* **upper**: for any ``q``, ``H_w(Y | x) <= E[-log q(Y | x)]``, Y the conditioning leaf.
  ``q`` is fitted per sigma, a temperature and a bias on a reference posterior of the state
  (the mixture's exact posterior, else the plug-in classifier posterior), on one half of the batch
  with the true leaves and scored on the other (two-fold cross-fitting, so the fit cannot overfit
  the scored samples). Each sample is scored by the expectation of ``-log q(Y | x_i)`` given its
  path, ``sum_y p_w(y | path) (-log q(y | x_i))`` (Y given the path has the filter's law): the same
  mean as scoring the drawn leaf, without the rare large scores of misclassified samples, and per
  sample the lower bound plus ``KL(p_w(. | path) || q(. | x_i)) >= 0``.

Both bounds hold for every level cut and, per node n with children c, for ``C_n``: the lower one
because ``C_n = H(Z_n | x, [Y in n])`` with ``Z_n`` the child on Y's path; the upper one because
``E[[Y in n] (-log q(c(Y) | n, x))] >= C_n`` (the cross-entropy chain rule along Y's path). The
point estimate is the middle of the two bounds; the band reported around it
(:meth:`probes.entropy.EntropyCurves.level_bounds`) widens each bound's mean for its own sampling
error.
"""

from __future__ import annotations

import torch

from probes.entropy.engine import tree_entropy
from probes.errors import ProbesError
from probes.estimators.base import Counter, Estimator, EstimatorOutput, ProbeContext, chunks, needs_states
from probes.estimators.bayes import KERNEL_METHODS, filter_log_posterior

REFERENCES = ("auto", "exact", "plugin")
RIDGE = 1e-3  # per-sigma L2 penalty on q's (temperature - 1, bias): negligible unless separable


class GuidedEstimator(Estimator):
    """Lower and upper bounds on ``H_w(level | x_sigma)`` of the run's own sampling law.

    Args:
        reference: the state's reference posterior that ``q`` rescales: ``exact`` (Gaussian
            mixtures), ``plugin`` (classifier on the plain denoiser's prediction) or ``auto``
            (exact when the model is a mixture, else plugin).
        folds: cross-fitting folds (>= 2).

    Needs: ``ctx.guided_denoiser`` (the run's generation denoiser, called with each leaf's
    conditioning), ``ctx.conditioner``, ``ctx.prior``, an ``ancestral`` trajectory with recorded
    states and known leaves (``traj.leaf``: leaf-conditional sampling), and for the reference
    ``ctx.exact_model`` or ``ctx.classifier`` + ``ctx.denoiser``. Cost: ``L`` guided denoiser calls
    per sample per step (twice the model evaluations under guidance) plus the reference's.
    """

    name = "guided"
    gives_bounds = True

    def __init__(self, reference: str = "auto", folds: int = 2, sigma_stride: int = 1):
        super().__init__(sigma_stride)
        if reference not in REFERENCES:
            raise ProbesError(f"estimator 'guided': reference must be one of {', '.join(REFERENCES)}, "
                              f"got {reference!r}")
        if int(folds) != folds or folds < 2:
            raise ProbesError(f"estimator 'guided': folds must be an integer >= 2, got {folds}")
        self.reference, self.folds = reference, int(folds)

    def estimate(self, traj, ctx: ProbeContext, generator=None) -> EstimatorOutput:
        states = needs_states(traj, self.name)
        if getattr(traj, "leaf", None) is None:
            raise ProbesError("estimator 'guided' needs the conditioning leaf of every sample: sample with "
                              "sampling.condition: leaf (the bounds score the true label)")
        if traj.method not in KERNEL_METHODS:
            raise ProbesError(f"estimator 'guided' filters with the ancestral kernel; a {traj.method!r} trajectory "
                              "has none: sample with method='ancestral'")
        guided = Counter(ctx.require("guided_denoiser", self.name, "its filter uses the run's own guided kernels"))
        conditioner = ctx.require("conditioner", self.name, "it conditions the guided denoiser on every leaf")
        idx = self.grid_index(len(traj.sigmas))
        sigmas = traj.sigmas[idx]
        lo_lp = filter_log_posterior(traj, guided, conditioner, ctx, idx, self.name)
        lo = tree_entropy(lo_lp, ctx.taxonomy, sigmas, prior=ctx.prior)

        ref, calls, classifier_calls = self._reference(states, traj.sigmas, idx, ctx)
        leaf = torch.as_tensor(traj.leaf).long().cpu()
        log_q = cross_fitted_log_q(ref, leaf, self.folds, generator)
        hi_levels, hi_nodes = expected_cross_entropy_terms(log_q, lo_lp, ctx.taxonomy)

        lo_levels, lo_nodes = torch.as_tensor(lo.levels), torch.as_tensor(lo.nodes)
        bounds = {"levels_lo": lo_levels, "levels_hi": hi_levels, "nodes_lo": lo_nodes, "nodes_hi": hi_nodes}
        return EstimatorOutput(self.name, sigmas, levels=0.5 * (lo_levels + hi_levels),
                               nodes=0.5 * (lo_nodes + hi_nodes), bounds=bounds,
                               denoiser_calls=guided.calls + calls, classifier_calls=classifier_calls)

    def _reference(self, states, sigmas, idx, ctx: ProbeContext):
        """Reference log-posteriors of the states ``[B, S', L]`` and their (denoiser, classifier) calls."""
        kind = self.reference
        if kind == "auto":
            kind = "exact" if ctx.exact_model is not None else "plugin"
        if kind == "exact":
            model = ctx.require("exact_model", self.name, "reference 'exact' needs the mixture's posterior")
            return torch.stack([model.log_posterior(states[i], float(sigmas[i])).double().cpu() for i in idx], 1), 0, 0
        denoiser = Counter(ctx.require("denoiser", self.name, "reference 'plugin' reads the plain denoiser"))
        classifier = Counter(ctx.require("classifier", self.name, "reference 'plugin' classifies the prediction"))
        batch = states.shape[1]
        out = torch.empty(batch, len(idx), len(ctx.taxonomy.leaves), dtype=torch.float64)
        for j, i in enumerate(idx):
            for rows in chunks(batch, ctx.batch_size):
                with torch.no_grad():
                    out[rows, j] = classifier(denoiser(states[i, rows], float(sigmas[i]), None)).double().cpu()
        return out, denoiser.calls, classifier.calls


def cross_fitted_log_q(ref: torch.Tensor, leaf: torch.Tensor, folds: int, generator=None) -> torch.Tensor:
    """``log q(y | x)`` ``[B, S, L]``: per sigma, ``log_softmax(alpha * ref + beta)`` with the
    temperature ``alpha`` and bias ``beta [L]`` fitted (maximum likelihood of the true leaf) on the
    other folds of the batch, so each sample is scored by a q that never saw it."""
    B, S, L = ref.shape
    z = ref.clamp(min=-60.0)  # log 0 -> a finite, negligible logit
    perm = torch.randperm(B, generator=generator)
    fold = torch.empty(B, dtype=torch.long)
    fold[perm] = torch.arange(B) % folds
    out = torch.empty(B, S, L, dtype=torch.float64)
    for f in range(folds):
        train, test = fold != f, fold == f
        if not train.any() or not test.any():
            out[test] = torch.log_softmax(z[test], -1)
            continue
        alpha, beta = _fit(z[train], leaf[train])
        out[test] = torch.log_softmax(alpha[None, :, None] * z[test] + beta[None], -1)
    return out


def _fit(z: torch.Tensor, y: torch.Tensor, iterations: int = 30,
         ridge: float = RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sigma temperature ``[S]`` and bias ``[S, L]`` minimising the mean cross-entropy of ``y``
    plus ``ridge / 2 * ((alpha - 1)^2 + |beta|^2)``.

    A multinomial logistic regression with L + 1 parameters per sigma (logits ``alpha z + beta``),
    convex in them: damped Newton steps with the exact gradient and Hessian, batched over sigmas.
    The ridge keeps the fit finite where the classes are separable (small sigma; the MLE's
    temperature would diverge) and fixes the bias's free additive constant.
    """
    N, S, L = z.shape
    onehot = torch.nn.functional.one_hot(y, L).double()[:, None, :].expand(N, S, L)
    index = y[:, None, None].expand(N, S, 1)
    alpha = torch.ones(S, dtype=torch.float64)
    beta = torch.zeros(S, L, dtype=torch.float64)

    def loss_of(a, b):
        lq = torch.log_softmax(a[None, :, None] * z + b[None], -1)
        penalty = 0.5 * ridge * ((a - 1) ** 2 + (b**2).sum(-1))
        return -lq.gather(-1, index)[..., 0].mean(0) + penalty, lq  # [S]

    loss, lq = loss_of(alpha, beta)
    eye = ridge * torch.eye(L + 1, dtype=torch.float64)
    for _ in range(iterations):
        q = lq.exp()
        r = q - onehot
        qz = (q * z).sum(-1)  # [N, S]
        grad = torch.cat([(r * z).sum(-1).mean(0)[:, None], r.mean(0)], 1)  # [S, L + 1]
        grad = grad + ridge * torch.cat([(alpha - 1)[:, None], beta], 1)
        if float(grad.abs().max()) < 1e-9:
            break
        hess = torch.empty(S, L + 1, L + 1, dtype=torch.float64)
        hess[:, 0, 0] = ((q * z * z).sum(-1) - qz**2).mean(0)
        cross = (q * z - q * qz[..., None]).mean(0)  # [S, L]
        hess[:, 0, 1:], hess[:, 1:, 0] = cross, cross
        hess[:, 1:, 1:] = torch.diag_embed(q.mean(0)) - torch.einsum("nsk,nsl->skl", q, q) / N
        step = torch.linalg.solve(hess + eye, grad[..., None])[..., 0]
        scale = torch.ones(S, dtype=torch.float64)
        for _ in range(30):  # halve each sigma's step until its loss does not increase
            new_loss, _new_lq = loss_of(alpha - scale * step[:, 0], beta - scale[:, None] * step[:, 1:])
            worse = new_loss > loss + 1e-12
            if not worse.any():
                break
            scale = torch.where(worse, scale / 2, scale)
        alpha, beta = alpha - scale * step[:, 0], beta - scale[:, None] * step[:, 1:]
        loss, lq = loss_of(alpha, beta)
    return alpha, beta


def expected_cross_entropy_terms(log_q: torch.Tensor, log_post: torch.Tensor,
                                 taxonomy) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropies of ``q`` under the posterior given the path, ``p = p(y | x_0..x_i)``:
    levels ``[B, S, D]`` (``-sum_cells p(cell) log q(cell | x)``) and nodes ``[B, S, K]``
    (``sum_{c child of n} p(c) (log q(n | x) - log q(c | x))``).

    Each is the expectation, given the path, of the term the true leaf y would score
    (``-log q(cell_l(y) | x)``; ``[y in n] * -log q(c(y) | n, x)``), since y given the path has law
    p: the same mean as scoring y, without the rare large scores of misclassified samples. Per
    sample it is the entropy of p plus ``KL(p || q) >= 0``, so it never falls below the lower bound.
    """
    leaves = list(taxonomy.leaves)
    names = [*taxonomy.internal_nodes, *leaves]
    row = {n: r for r, n in enumerate(names)}
    member = torch.zeros(len(names), len(leaves), dtype=torch.float64)
    for n in names:
        for leaf_name in ([n] if n in leaves else taxonomy.leaves_under(n)):
            member[row[n], leaves.index(leaf_name)] = 1.0
    top = log_q.amax(-1, keepdim=True)
    log_q_mass = torch.log(torch.exp(log_q - top) @ member.T) + top  # [B, S, V]: log q(node | x)
    log_post = log_post.double()
    p_mass = torch.softmax(log_post, -1) @ member.T  # [B, S, V]: p(node | path), renormalised
    B, S = log_q.shape[:2]
    levels = torch.empty(B, S, taxonomy.max_depth, dtype=torch.float64)
    for level in range(1, taxonomy.max_depth + 1):
        cells = [row[n] for n in names
                 if taxonomy.depth(n) == level or (n in leaves and taxonomy.depth(n) < level)]
        levels[..., level - 1] = -(p_mass[..., cells] * log_q_mass[..., cells]).sum(-1)
    nodes = torch.empty(B, S, len(taxonomy.internal_nodes), dtype=torch.float64)
    for k, n in enumerate(taxonomy.internal_nodes):
        children = [row[c] for c in taxonomy.children(n)]
        nodes[..., k] = (p_mass[..., children] * (log_q_mass[..., row[n], None] - log_q_mass[..., children])).sum(-1)
    return levels, nodes
