"""Gaussian mixtures: the exact posterior, denoisers and classifier against independent answers.

Every check states its tolerance. Exact identities are held to float64 rounding, relative to the
magnitude compared (1e-12 to 1e-10 of it, against a rounding unit of 2.2e-16, so that another CPU's
summation order or libm cannot matter); Monte Carlo checks to 4 standard errors (a false alarm
about once in 16,000 runs, and seeds are fixed, so a failure means a real discrepancy).
"""

import math

import networkx as nx
import numpy as np
import pytest
import torch
from scipy.integrate import quad
from tolerances import F32, magnitude

from probes.classifiers import Classifier
from probes.denoisers import Denoiser, GuidedDenoiser
from probes.errors import ProbesError, UnsupportedCondition
from probes.models.gmm import GaussianMixture
from probes.models.gmm_theory import (
    two_class_entropy,
    two_class_entropy_curve,
    two_class_rate,
    two_class_rate_peak,
)
from probes.taxonomy import Taxonomy


def tree(nested: dict, root: str = "root") -> Taxonomy:
    """A Taxonomy from nested dicts (``None`` marks a leaf); children keep their insertion order."""
    graph = nx.DiGraph()
    graph.add_node(root)

    def add(parent, sub):
        for child, grand in sub.items():
            graph.add_edge(parent, child)
            if grand is not None:
                add(child, grand)

    add(root, nested)
    return Taxonomy(graph, name="test")


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    """Row entropies in nats (0 log 0 = 0)."""
    return -(log_p.exp() * log_p.nan_to_num(neginf=0.0)).sum(-1)


def binary_entropy_of_logit(z: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(z)
    return -(p * torch.nn.functional.logsigmoid(z) + (1 - p) * torch.nn.functional.logsigmoid(-z))


def random_mixture(n_leaves=5, dim=3, seed=0, std=0.7) -> GaussianMixture:
    gen = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(n_leaves, dim, generator=gen, dtype=torch.float64)
    weights = torch.rand(n_leaves, generator=gen, dtype=torch.float64) + 0.2
    return GaussianMixture(means, std, weights)


def noisy(mixture, n, sigma, seed):
    gen = torch.Generator().manual_seed(seed)
    x0, y = mixture.sample(n, gen)
    return x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=torch.float64), y


# ---- theory ------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [0.05, 0.5, 1.0, 1.5, 2.5, 4.0])
def test_quadrature_matches_adaptive_integration(r):
    # Tolerance 1e-12 of the integrand's magnitude (h <= log 2, so magnitude 1): 801 Gauss-Hermite nodes
    # reach ~1e-15; scipy's adaptive quad on the unshifted formula is independent, good to ~1e-13.
    def integrand(xi):
        z = 2 * r * r + 2 * r * xi
        p = 0.5 * (1 + math.tanh(z / 2))
        h = p * np.logaddexp(0, -z) + (1 - p) * np.logaddexp(0, z)
        return h * math.exp(-xi * xi / 2) / math.sqrt(2 * math.pi)

    expected, _ = quad(integrand, -np.inf, np.inf, epsabs=1e-14, epsrel=1e-13, limit=500)
    assert abs(two_class_entropy(r) - expected) < 1e-12 * magnitude(expected)


def test_entropy_limits_and_rate_derivative():
    # r -> 0: no information, H = log 2 - O(r^2); r large: H ~ exp(-r^2 / 2) -> 0. Tolerances are
    # 1e-10 of H's range log 2: far above the quadrature's ~1e-15 and the O(r^2) = 1e-12 gap.
    assert abs(two_class_entropy(1e-6) - math.log(2)) < 1e-10 * math.log(2)
    assert two_class_entropy(10.0) < 1e-10 * math.log(2)
    # The analytic rate equals -dH/dlog r by central differences (step 1e-5: truncation ~1e-10 and
    # rounding ~1e-16 / step = 1e-11 of the rate's magnitude, so 1e-8 of it).
    r = np.array([0.3, 0.8, 1.23, 2.0, 3.5])
    eps = 1e-5
    fd = -(two_class_entropy(r * math.exp(eps)) - two_class_entropy(r * math.exp(-eps))) / (2 * eps)
    np.testing.assert_allclose(two_class_rate(r), fd, rtol=0, atol=1e-8 * magnitude(fd))


def test_rate_peak_r2():
    # (g) The rate in log s peaks at r^2 ~ 1.508 (1.50833); 5e-4 is half a unit in the quoted value's
    # last place, the quoted rounding only (the optimiser and the quadrature are far tighter).
    assert abs(two_class_rate_peak() - 1.508) <= 5e-4


# ---- (a) Monte Carlo entropy of the exact posterior against the quadrature ------------------------


@pytest.mark.parametrize("dim,axis_aligned", [(1, True), (8, False), (64, True), (64, False)])
@pytest.mark.parametrize("r", [0.6, 1.228, 2.0])
def test_monte_carlo_entropy_matches_theory(dim, axis_aligned, r):
    # N = 20,000 samples of x_sigma; per-sample entropies are bounded by log 2, so SE <= 0.0049 nats
    # (observed 0.001-0.003). Pass if |mean - theory| < 4 SE. The same r in every dimension gives
    # the same H: dimension enters only through r = |m| / s.
    n, std = 20_000, 1.0
    mixture = GaussianMixture.two_class(dim, mean_norm_sq_per_dim=1.0, std=std, axis_aligned=axis_aligned, seed=3)
    sigma = math.sqrt(dim / r**2 - std**2) if dim / r**2 > std**2 else None
    if sigma is None:  # d = 1 cannot reach small s with |m| = 1: use a larger mean instead
        mixture = GaussianMixture.two_class(dim, mean_norm_sq_per_dim=4.0 * r**2, std=std)
        sigma = math.sqrt(4.0 - std**2)
    x, _ = noisy(mixture, n, sigma, seed=dim)
    h = entropy(mixture.log_posterior(x, sigma))
    se = h.std().item() / math.sqrt(n)
    assert abs(h.mean().item() - two_class_entropy(r)) < 4 * se
    assert se < 0.005


def test_entropy_curve_is_monotone_in_sigma():
    # Exactness of the curve helper: H grows with sigma and approaches log 2. At sigma = 1000,
    # r = 8 / 1000 and log 2 - H = r^2 / 2 + O(r^4) = 3.2e-5: within 1e-4 of log 2, relatively.
    sigmas = np.logspace(-2, 3, 50)
    curve = two_class_entropy_curve(sigmas, mean_norm=8.0, std=1.0)
    assert np.all(np.diff(curve) > 0) and abs(curve[-1] / math.log(2) - 1) < 1e-4


# ---- (b) axis-aligned hierarchy: entropies add exactly ----------------------------------------------


def test_product_hierarchy_entropies_add_per_sample():
    # Leaves (+-a) e1 + (+-b) e2: the leaf posterior is a product of a coarse (x1) and a fine (x2)
    # two-class posterior, so H_leaf = h(coarse) + h(fine) holds per sample, to float64 rounding
    # (1e-10 of the entropies' magnitude; their logits, up to ~20, round to ~1e-14). In expectation
    # it is H2(a/s) + H2(b/s), within 4 SE.
    a, b, std, sigma, n = 3.0, 1.0, 0.5, 1.3, 20_000
    signs = torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=torch.float64)
    means = torch.cat([signs * torch.tensor([a, b], dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)], 1)
    mixture = GaussianMixture.from_means(["A1", "A2", "B1", "B2"], means, std)
    x, _ = noisy(mixture, n, sigma, seed=1)
    s2 = std**2 + sigma**2
    h_leaf = entropy(mixture.log_posterior(x, sigma))
    h_coarse = binary_entropy_of_logit(2 * a * x[:, 0] / s2)
    h_fine = binary_entropy_of_logit(2 * b * x[:, 1] / s2)
    assert (h_leaf - h_coarse - h_fine).abs().max() < 1e-10 * magnitude(h_leaf)

    s = math.sqrt(s2)
    se = h_leaf.std().item() / math.sqrt(n)
    assert abs(h_leaf.mean().item() - (two_class_entropy(a / s) + two_class_entropy(b / s))) < 4 * se


def test_hierarchical_shared_level_axes_entropies_add_per_sample():
    # (b) through the constructor: axis-aligned, one axis per depth (coarse e1, fine e2), so the
    # leaf posterior is a product and H_leaf = h(coarse(x1)) + h(fine(x2)) per sample, to 1e-10 of
    # the entropies' magnitude (float64 rounding, as above).
    tax = tree({"A": {"A1": None, "A2": None}, "B": {"B1": None, "B2": None}})
    a, b, std, sigma = 2.0, 0.7, 0.4, 0.9
    mixture = GaussianMixture.hierarchical(tax, dim=5, separations=[a, b], std=std, axis_aligned=True,
                                           share_level_axes=True)
    assert mixture.leaves == ["A1", "A2", "B1", "B2"]
    assert (mixture.means[:, 2:] == 0).all()
    assert torch.equal(mixture.means[:, :2].abs(), torch.tensor([[a, b]] * 4, dtype=torch.float64))
    x, _ = noisy(mixture, 2000, sigma, seed=2)
    s2 = std**2 + sigma**2
    h_leaf = entropy(mixture.log_posterior(x, sigma))
    h_coarse = binary_entropy_of_logit(2 * a * x[:, 0] / s2)
    h_fine = binary_entropy_of_logit(2 * b * x[:, 1] / s2)
    assert (h_leaf - h_coarse - h_fine).abs().max() < 1e-10 * magnitude(h_leaf)


def test_hierarchical_own_axes_make_node_decisions_local():
    # Default layout, axis-aligned: A's children differ along e2 only and B's along e3 only, so
    # p(A1 | x, Y in A) is an exact logistic function of x2 (to 1e-10 of the probabilities'
    # magnitude 1: float64 rounding of logits of order 10), whatever x1 and x3 are.
    # (The coarse p(A | x) is *not* a function of x1 alone here: the fine coordinates carry
    # information about A vs B. Shared level axes, above, are the product case.)
    tax = tree({"A": {"A1": None, "A2": None}, "B": {"B1": None, "B2": None}})
    std, sigma = 0.4, 0.9
    mixture = GaussianMixture.hierarchical(tax, dim=5, separations=[2.0, 0.7], std=std, axis_aligned=True)
    got = mixture.means
    assert (got[:2, 2] == 0).all() and (got[2:, 1] == 0).all() and (got[:, 3:] == 0).all()
    assert torch.equal(got[:, 0].abs(), torch.full((4,), 2.0, dtype=torch.float64))
    # the fine offset is the separation scaled through the centred simplex: float64 rounding, 1e-12 of it
    assert torch.allclose(got[:2, 1].abs(), torch.tensor([0.7, 0.7], dtype=torch.float64), rtol=1e-12, atol=0)

    x, _ = noisy(mixture, 2000, sigma, seed=2)
    s2 = std**2 + sigma**2
    in_a = torch.tensor([[True, True, False, False]]).expand(len(x), 4)
    fine = mixture.log_posterior(x, sigma, in_a).exp()
    p_a1 = torch.sigmoid(2 * got[0, 1] * x[:, 1] / s2)  # A1 at A + got[0,1] e2, A2 at A - got[0,1] e2
    assert (fine[:, 0] - p_a1).abs().max() < 1e-10 * magnitude(p_a1)
    assert (fine[:, 2:] == 0).all()


def test_hierarchical_geometry():
    # Random orthogonal layout with a 3-way node: every child sits at its level's separation from
    # its parent, siblings sum to the parent (simplex centred), and the nodes' offset subspaces are
    # mutually orthogonal. Exact up to float64 rounding: 1e-10 of the lengths compared (the
    # separations; for dot products their product), against ~1e-15 from a QR and a few sums.
    tax = tree({"A": {"A1": None, "A2": None, "A3": None}, "B": {"B1": None, "B2": None}, "C": None})
    seps = [3.0, 1.0]
    mixture = GaussianMixture.hierarchical(tax, dim=10, separations=seps, seed=4)
    mean = dict(zip(mixture.leaves, mixture.means))
    for node in ("A", "B"):
        kids = tax.children(node)
        parent = torch.stack([mean[k] for k in kids]).mean(0)
        for k in kids:
            assert abs((mean[k] - parent).norm().item() - seps[1]) < 1e-10 * magnitude(seps)
        mean[node] = parent
    root_offsets = torch.stack([mean[c] for c in ("A", "B", "C")])
    assert root_offsets.sum(0).abs().max() < 1e-10 * magnitude(root_offsets)
    assert ((root_offsets.norm(dim=1) - seps[0]).abs() < 1e-10 * magnitude(seps)).all()
    off_a = torch.stack([mean[k] - mean["A"] for k in ("A1", "A2", "A3")])
    off_b = torch.stack([mean[k] - mean["B"] for k in ("B1", "B2")])
    dot_tol = 1e-10 * magnitude(root_offsets) * magnitude(off_a, off_b)
    assert (off_a @ off_b.T).abs().max() < dot_tol
    assert (off_a @ root_offsets.T).abs().max() < dot_tol and (off_b @ root_offsets.T).abs().max() < dot_tol


def test_hierarchical_errors():
    tax = tree({"A": {"A1": None, "A2": None}, "B": None})
    with pytest.raises(ProbesError, match="separations"):
        GaussianMixture.hierarchical(tax, dim=4, separations=[1.0])
    with pytest.raises(ProbesError, match="dim"):
        GaussianMixture.hierarchical(tax, dim=1, separations=[1.0, 1.0], axis_aligned=True)


# ---- the posterior itself ----------------------------------------------------------------------


def test_log_posterior_matches_bayes_rule_in_numpy():
    # Independent evaluation: log w_y + log N(x; m_y, s^2 I), normalised, in numpy. Tolerance 1e-10
    # of the log-posteriors' magnitude (down to ~-100 here): float64 rounding of the squared distances.
    mixture = random_mixture()
    x, _ = noisy(mixture, 64, 0.8, seed=5)
    sig = torch.linspace(0.1, 3.0, 64, dtype=torch.float64)
    got = mixture.log_posterior(x, sig).numpy()
    s2 = mixture.std**2 + sig.numpy()[:, None] ** 2
    sq = ((x.numpy()[:, None, :] - mixture.means.numpy()[None]) ** 2).sum(-1)
    logits = np.log(mixture.weights.numpy()) - sq / (2 * s2)
    expected = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10 * magnitude(expected))


def test_log_posterior_chunks_and_path_agree():
    # More rows than one chunk (L = 1000 -> 4194 rows per chunk) and the forward-path shortcut:
    # both must give the same numbers as a single direct evaluation, to 1e-10 of the log-posteriors'
    # magnitude (float64 rounding in another order; the path adds s * noise before squaring).
    gen = torch.Generator().manual_seed(6)
    mixture = GaussianMixture(torch.randn(1000, 4, generator=gen, dtype=torch.float64), 0.5)
    x = torch.randn(5000, 4, generator=gen, dtype=torch.float64)
    logits = (x @ mixture.means.T - 0.5 * (mixture.means**2).sum(-1)) / (0.25 + 0.49) + mixture.weights.log()
    direct = torch.log_softmax(logits, -1)
    assert (mixture.log_posterior(x, 0.7) - direct).abs().max() < 1e-10 * magnitude(direct)

    x0, noise = x[:50], torch.randn(50, 4, generator=gen, dtype=torch.float64)
    sigmas = torch.tensor([3.0, 1.0, 0.1], dtype=torch.float64)
    path = mixture.log_posterior_path(x0, noise, sigmas)
    assert path.shape == (50, 3, 1000)
    for j, s in enumerate(sigmas):
        assert (path[:, j] - mixture.log_posterior(x0 + s * noise, s)).abs().max() < 1e-10 * magnitude(path[:, j])


def test_log_posterior_mask_is_conditioning():
    # p(y | x, Y in cell) = p(y | x) / p(cell | x) on the cell, 0 elsewhere; to 1e-12 of the
    # probabilities' magnitude 1 (a few float64 roundings of 5 terms).
    mixture = random_mixture()
    x, _ = noisy(mixture, 32, 1.0, seed=7)
    mask = torch.rand(32, 5, generator=torch.Generator().manual_seed(0)) < 0.5
    mask[:, 0] = True
    full = mixture.log_posterior(x, 1.0).exp()
    cell = mixture.log_posterior(x, 1.0, mask).exp()
    expected = full * mask / (full * mask).sum(1, keepdim=True)
    assert (cell - expected).abs().max() < 1e-12 * magnitude(expected)
    with pytest.raises(ValueError, match="at least one leaf"):
        mixture.log_posterior(x, 1.0, torch.zeros(32, 5, dtype=torch.bool))


# ---- (c, d) exact denoisers ----------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.05, 0.7, 4.0, 30.0])
def test_denoiser_is_tweedie(sigma):
    # (c) E[x0 | x] = x + sigma^2 grad log p_sigma(x), the gradient by autograd on the exact log
    # density. Tolerance 1e-10 of the magnitude of x (up to ~100 at sigma = 30), from which both sides
    # are computed: float64 rounding of sigma^2 * grad, amplified by sigma^2 / s^2 <= 900 / 0.49.
    mixture = random_mixture()
    x, _ = noisy(mixture, 50, sigma, seed=8)
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mixture.log_density(x, sigma).sum(), x)
    tweedie = x.detach() + sigma**2 * grad
    assert (mixture.denoise(x.detach(), sigma) - tweedie).abs().max() < 1e-10 * magnitude(x.detach(), tweedie)


def test_log_density_is_normalised_in_one_dimension():
    # The exact marginal integrates to 1: to 1e-8 of that total (quad's requested relative accuracy
    # is 1.5e-8; on this smooth integrand it reaches ~1e-14).
    mixture = GaussianMixture(torch.tensor([[-2.0], [0.5], [3.0]]), 0.6, torch.tensor([0.2, 0.5, 0.3]))
    total, _ = quad(lambda v: math.exp(mixture.log_density(torch.tensor([[v]]), 1.1).item()), -40, 40, limit=200)
    assert abs(total - 1) < 1e-8


def test_conditional_denoisers_are_consistent():
    # (d) E[x0 | x] = sum_y p(y | x) E[x0 | x, y], and the same inside a cell with p(y | x, cell);
    # class-conditional means are m_y + (s0^2 / s^2)(x - m_y). All exact identities: 1e-12 of the
    # means' magnitude (sums of 5 float64 products, ~1e-15 of it).
    mixture = random_mixture()
    sigma, n, L = 1.3, 40, 5
    x, _ = noisy(mixture, n, sigma, seed=9)
    per_class = torch.stack([mixture.denoise(x, sigma, torch.full((n,), y)) for y in range(L)], 1)  # [n, L, d]
    c = mixture.std**2 / (mixture.std**2 + sigma**2)
    tol = 1e-12 * magnitude(x, per_class)
    assert (per_class - (mixture.means + c * (x[:, None] - mixture.means))).abs().max() < tol

    post = mixture.log_posterior(x, sigma).exp()
    uncond = mixture.denoise(x, sigma)
    assert (uncond - (post[..., None] * per_class).sum(1)).abs().max() < tol
    assert (mixture.denoise(x, sigma, torch.full((n,), -1)) - uncond).abs().max() == 0
    assert (mixture.denoise(x, sigma, torch.ones(n, L, dtype=torch.bool)) - uncond).abs().max() < tol

    cell = torch.zeros(n, L, dtype=torch.bool)
    cell[:, [1, 3]] = True
    p_cell = post * cell / (post * cell).sum(1, keepdim=True)
    assert (mixture.denoise(x, sigma, cell) - (p_cell[..., None] * per_class).sum(1)).abs().max() < tol
    # Mixed batch: some rows conditioned, some not.
    ids = torch.tensor([2, -1] * (n // 2))
    mixed = mixture.denoise(x, sigma, ids)
    assert torch.equal(mixed[0::2], per_class[0::2, 2]) and (mixed[1::2] - uncond[1::2]).abs().max() < tol


def test_denoiser_wrapper():
    # The Denoiser adapter keeps the input dtype and composes with classifier-free guidance.
    mixture = random_mixture()
    den = mixture.denoiser()
    assert isinstance(den, Denoiser) and 0 < den.sigma_min < 1 < den.sigma_max
    x, _ = noisy(mixture, 8, 2.0, seed=10)
    out = den(x.float(), 2.0)
    # float64 arithmetic rounded once to float32: within half a float32 unit of each element
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), mixture.denoise(x.float(), 2.0), rtol=F32, atol=0)
    mask = torch.zeros(8, 5, dtype=torch.bool)
    mask[:, :2] = True
    guided = GuidedDenoiser(den, scale=3.0)(x, torch.full((8,), 2.0, dtype=torch.float64), mask)
    d_u, d_c = mixture.denoise(x, 2.0), mixture.denoise(x, 2.0, mask)
    # float64 rounding, 1e-12 of the magnitudes combined (the guided difference is 3 times larger)
    assert (guided - (d_u + 3.0 * (d_c - d_u))).abs().max() < 1e-12 * 3 * magnitude(d_u, d_c)


# ---- (e) classifier and conditioner ---------------------------------------------------------------


def test_classifier_is_clean_posterior():
    # (e) Rows of exp(log_probs) sum to 1 and equal p(y | x0) at sigma = 0 (std s0). The Classifier
    # base returns float32, so the tolerance is float32 rounding of probabilities of magnitude 1:
    # 8 units (5 terms each rounded once through exp of a rounded log-probability).
    mixture = random_mixture()
    clf = mixture.classifier()
    assert isinstance(clf, Classifier) and clf.leaves == mixture.leaves
    x0, _ = mixture.sample(100, torch.Generator().manual_seed(11))
    lp = clf(x0)
    assert lp.shape == (100, 5)
    assert (lp.exp().sum(1) - 1).abs().max() < 8 * F32
    assert (lp.exp().double() - mixture.log_posterior(x0, 0.0).exp()).abs().max() < 8 * F32


def test_conditioner_masks_nodes():
    tax = tree({"A": {"A1": None, "A2": None}, "B": {"B1": None, "B2": None}})
    mixture = GaussianMixture.hierarchical(tax, dim=4, separations=[2.0, 1.0])
    cond = mixture.conditioner(tax)
    masks = cond(["root", "A", "B2"])
    assert masks.tolist() == [[True] * 4, [True, True, False, False], [False, False, False, True]]
    assert cond.supports("A1") and not cond.supports("nope")
    with pytest.raises(UnsupportedCondition):
        cond(["nope"])
    other = GaussianMixture.from_means(["x", "y", "z", "w"], mixture.means, 1.0)
    with pytest.raises(ProbesError, match="taxonomy leaf 'A1' is not a component"):
        other.conditioner(tax)
    with pytest.raises(UnsupportedCondition, match="no components outside"):
        cond.outside(2)


def test_conditioner_of_a_mixture_larger_than_the_taxonomy():
    """Components that are not leaves are the outside: no node's mask covers them, and the
    outside mask is exactly their complement."""
    tax = tree({"A": {"A1": None, "A2": None}, "B": {"B1": None, "B2": None}})
    means = torch.arange(12, dtype=torch.float64).reshape(6, 2)
    mixture = GaussianMixture.from_means(["A1", "Z", "A2", "B1", "B2", "Y"], means, 1.0)
    cond = mixture.conditioner(tax)
    assert cond(["root"]).tolist() == [[True, False, True, True, True, False]]
    assert cond(["A"]).tolist() == [[True, False, True, False, False, False]]
    assert cond.outside(2).tolist() == [[False, True, False, False, False, True]] * 2


# ---- (f) covariance and speciation ----------------------------------------------------------------


@pytest.mark.parametrize("n_leaves,dim", [(5, 3), (4, 12), (1, 3)])
def test_largest_eigenvalue_matches_dense(n_leaves, dim):
    # (f) Lambda from the small Gram equals numpy's eigvalsh of the dense covariance; relative 1e-10.
    mixture = random_mixture(n_leaves, dim)
    cov = mixture.covariance().numpy()
    # symmetric up to float64 rounding of the Gram's sums (1e-12 of its magnitude)
    np.testing.assert_allclose(cov, cov.T, rtol=0, atol=1e-12 * magnitude(cov))
    n = 200_000
    x0, _ = mixture.sample(n, torch.Generator().manual_seed(12))
    # The formula itself, by Monte Carlo: each sample covariance within 5 of its own standard errors,
    # sqrt(var((x_i - m_i)(x_j - m_j)) / n), estimated from the same samples.
    centred = x0.numpy() - x0.numpy().mean(0)
    second = centred.T @ centred / n
    se = np.sqrt(np.maximum((centred**2).T @ centred**2 / n - second**2, 0) / n)
    assert (np.abs(np.cov(x0.numpy().T).reshape(dim, dim) - cov) < 5 * se).all()
    expected = np.linalg.eigvalsh(cov)[-1]
    assert abs(mixture.largest_eigenvalue() - expected) < 1e-10 * expected


def test_two_class_speciation_time():
    # |m|^2 = d mu^2, s0 = 1: Lambda = 1 + d mu^2 exactly, t_S = 0.5 log(1 + d mu^2); sigma_S = sqrt(d mu^2).
    # Relative 1e-12 (Lambda sums 256 squares: ~1e-15 of it) and 4e-13 for t_S (its log, ~2.4).
    mixture = GaussianMixture.two_class(256, mean_norm_sq_per_dim=0.5, axis_aligned=False)
    assert abs(mixture.largest_eigenvalue() - 129.0) < 1e-12 * 129.0
    t_s = 0.5 * math.log(129.0)
    assert abs(mixture.speciation_time() - t_s) < 4e-13 * t_s
    assert abs(mixture.speciation_sigma() - math.sqrt(128.0)) < 1e-12 * math.sqrt(128.0)
    with pytest.raises(ValueError, match="<= 1"):
        GaussianMixture.two_class(4, mean_norm_sq_per_dim=0.01, std=0.5).speciation_sigma()
