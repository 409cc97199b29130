"""Exact answers for Gaussian-mixture runs, written from the definitions alone (numpy/scipy only).

Nothing here imports probes: these are the references `tests/test_independent_oracles.py` holds
the toolkit's files against. Definitions (docs/outputs.md, DESIGN section 2):

* model: components k with weights w_k, means m_k in R^d, one isotropic std s0; on the VE axis
  `x_sigma | k ~ N(m_k, s^2 I)`, `s^2 = s0^2 + sigma^2`;
* the posterior over components depends on x only through its projection on span{m_k}
  (the orthogonal part is isotropic noise shared by every component), so every expectation is an
  integral over r = dim span <= 2 coordinates;
* taxonomy leaves are some of the components (the rest are the model's world outside T);
  `p(T|x)` is the leaves' total mass, `q = p(. | x, Y in T)` the renormalised leaf posterior;
* level l's cells: the nodes at depth l plus the leaves shallower than l; `H_l = H(cells)` under q;
* node n: `C_n = q(n) * H(q(children of n) / q(n))`;
* inside-weighted means: `E[p(T|x) f(x)] / E[p(T|x)]` over the model's whole law.

Integrals: for each component, `E_{z ~ N(0, I_r)}[f(m_k + s z)]` by the trapezoid rule on a uniform
z grid over [-10, 10]^r. The integrands are analytic in z; the nearest complex singularity of
`h(sigmoid(2 r z + c))` lies pi / (2 r) off the real axis, so the rule's error is about
`exp(-pi^2 / (r_sep h))` (r_sep the separation in units of s): below 1e-12 for h = 0.1 wherever
the transition carries Gaussian weight; the truncation at 10 costs < 1e-22.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import logsumexp


class Tree:
    """A rooted tree from the YAML nested form: mappings are internal nodes, lists hold leaves."""

    def __init__(self, nested, root: str = "root"):
        self.root = root
        self.children: dict[str, list[str]] = {}
        self.depth = {root: 0}
        self.leaves: list[str] = []
        self._add(root, nested)
        self.internal = [n for n in self._preorder(root) if self.children.get(n)]
        self.max_depth = max(self.depth[leaf] for leaf in self.leaves)

    def _add(self, node, spec):
        kids = []
        if isinstance(spec, dict):
            items = spec.items()
        else:
            items = [(x, None) if isinstance(x, str) else next(iter(x.items())) for x in spec]
        for name, sub in items:
            kids.append(name)
            self.depth[name] = self.depth[node] + 1
            if sub is None:
                self.children[name] = []
                self.leaves.append(name)
            else:
                self._add(name, sub)
        self.children[node] = kids

    def _preorder(self, node):
        yield node
        for c in self.children[node]:
            yield from self._preorder(c)

    def under(self, node) -> list[int]:
        """Indices (in leaf order) of the leaves under node."""
        return [self.leaves.index(n) for n in self._preorder(node) if not self.children[n]]

    def cells(self, level: int) -> list[str]:
        return [n for n in self._preorder(self.root)
                if self.depth[n] == level or (not self.children[n] and self.depth[n] < level)]


def _entropy(p):
    p = np.clip(p, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return t.sum(-1)


def quantities(log_post_components, tree: Tree, leaf_components):
    """Per-point quantities from the log posterior over all components [P, K].

    Returns a dict of [P] arrays: `inside`, `level_l` (l = 1..D), `node_<n>` for each internal n,
    all entropies of the posterior renormalised over the leaves.
    """
    leaf_lp = log_post_components[:, leaf_components]
    log_inside = logsumexp(leaf_lp, axis=1)
    q = np.exp(leaf_lp - log_inside[:, None])
    out = {"inside": np.exp(log_inside)}
    mass = {}
    for n in tree._preorder(tree.root):
        mass[n] = q[:, tree.under(n)].sum(1)
    for level in range(1, tree.max_depth + 1):
        out[f"level_{level}"] = _entropy(np.stack([mass[c] for c in tree.cells(level)], 1))
    for n in tree.internal:
        pn = mass[n]
        kids = np.stack([mass[c] for c in tree.children[n]], 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            cond = np.where(pn[:, None] > 0, kids / np.where(pn > 0, pn, 1.0)[:, None], 0.0)
        out[f"node_{n}"] = pn * _entropy(cond)
    return out


class Mixture:
    """Isotropic Gaussian mixture reduced to the span of its means."""

    def __init__(self, means, weights, std):
        means = np.asarray(means, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.std = float(std)
        _, sv, vt = np.linalg.svd(means, full_matrices=False)
        rank = int((sv > 1e-12 * max(sv.max(), 1.0)).sum())
        self.basis = vt[:rank]                      # [r, d], orthonormal rows
        self.means = means @ self.basis.T           # [K, r]

    def log_posterior(self, x, sigma):
        """x: [P, r] in the span coordinates; exact log p(k | x_sigma)."""
        s2 = self.std ** 2 + sigma ** 2
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        lp = np.log(self.weights)[None] - d2 / (2 * s2)
        return lp - logsumexp(lp, axis=1, keepdims=True)

    def expect(self, sigma, func, law=None, h=None, span=10.0):
        """E[func(x_sigma)] with x drawn from the components weighted by `law` (default: weights).

        func maps x [P, r] to a dict of [P] arrays; returns the dict of expectations.
        """
        law = self.weights if law is None else np.asarray(law, dtype=np.float64) / np.sum(law)
        h = (0.1 if self.means.shape[1] == 1 else 0.2) if h is None else h
        s = np.sqrt(self.std ** 2 + sigma ** 2)
        z1 = np.arange(-span, span + h / 2, h)
        r = self.means.shape[1]
        z = np.stack(np.meshgrid(*([z1] * r), indexing="ij"), -1).reshape(-1, r)
        wz = np.exp(-0.5 * (z ** 2).sum(1)) * (h / np.sqrt(2 * np.pi)) ** r
        total = None
        for k, lk in enumerate(law):
            if lk == 0:
                continue
            vals = func(self.means[k] + s * z)
            part = {key: lk * float(wz @ v) for key, v in vals.items()}
            total = part if total is None else {key: total[key] + part[key] for key in total}
        return total

    def plugin_log_posterior(self, x, sigma):
        """The plug-in reading: the clean posterior (sigma = 0) at the denoiser's output.

        `D(x) = E[x0 | x_sigma] = c x + (1 - c) sum_k p(k | x) m_k`, `c = s0^2 / s^2` (Tweedie);
        the part of x orthogonal to the means' span is shrunk by c and never reaches the clean
        posterior, which depends on x only through `x . m_k`.
        """
        c = self.std ** 2 / (self.std ** 2 + sigma ** 2)
        denoised = c * x + (1 - c) * np.exp(self.log_posterior(x, sigma)) @ self.means
        return self.log_posterior(denoised, 0.0)

    def tree_curves(self, sigmas, tree: Tree, leaf_components, law=None, inside_weighted=False,
                    reading="exact", h=None):
        """Level entropies, node contributions and inside mass along sigmas.

        reading: "exact" (the posterior p(k | x_sigma)) or "plugin" (the clean posterior of the
        denoised state). The plug-in integrand is much sharper than the posterior's (the clean
        posterior's logit changes by |dm|/s0^2 per unit of D): pass a smaller h for it.

        inside_weighted: report E[p(T|x) f] / E[p(T|x)] (samples of the model's whole world);
        otherwise the plain expectation under `law`.
        """
        rows = []
        for sigma in sigmas:
            def func(x, sigma=sigma):
                read = self.log_posterior if reading == "exact" else self.plugin_log_posterior
                qd = quantities(read(x, sigma), tree, leaf_components)
                if inside_weighted:
                    qd.update({f"w_{k}": qd["inside"] * v for k, v in qd.items() if k != "inside"})
                return qd
            e = self.expect(sigma, func, law, h=h)
            if inside_weighted:
                e = {**{k[2:]: v / e["inside"] for k, v in e.items() if k.startswith("w_")},
                     "inside": e["inside"]}
            rows.append(e)
        return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def binary_entropy_two_class(r, n=4001):
    """DESIGN section 2: H(Y|x) = E_xi[h(sigmoid(2 r^2 + 2 r xi))] for two equiprobable classes."""
    xi = np.linspace(-12, 12, n)
    wts = np.exp(-xi ** 2 / 2) * (xi[1] - xi[0]) / np.sqrt(2 * np.pi)
    u = 2 * r ** 2 + 2 * r * xi
    h = np.logaddexp(0, u) - u / (1 + np.exp(-u))       # h(sigmoid(u)) = log(1+e^u) - u sigmoid(u)
    return float(wts @ h)


def peak_on_dense_grid(x, y):
    """Peak position of y(x) sampled densely: argmax refined by a parabola through its neighbours."""
    i = int(np.argmax(y))
    if 0 < i < len(y) - 1:
        x0, x1, x2 = x[i - 1:i + 2]
        y0, y1, y2 = y[i - 1:i + 2]
        den = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
        b = (x2 ** 2 * (y0 - y1) + x1 ** 2 * (y2 - y0) + x0 ** 2 * (y1 - y2)) / den
        return float(-b / (2 * a))
    return float(x[i])


def guided_chain_curves(mu, std, prior, scale, sigmas, tree: Tree | None = None, n_grid=801, interval=None):
    """Level and node curves of a 1-D leaf-conditional ancestral chain under classifier-free guidance.

    Model: leaves y at mu_y (1-D, in the tree's leaf order), std s0, prior pi (leaves are drawn
    from it). Guided prediction for leaf y: `D_w(x; y) = D(x) + w (D(x; y) - D(x))`, with
    `D(x; y) = m_y + c (x - m_y)`, `c = s0^2 / s^2`, and the unconditional Tweedie mean
    `D(x) = sum_y' p(y'|x) D(x; y')`; with an interval (lo, hi], w applies for steps whose
    starting sigma s has lo < s <= hi, and w = 1 (the plain conditional) elsewhere.
    Chain (docs/estimators.md, `ancestral`): x_0 = sigma_0 n for every leaf; from s to t,
    a = t^2/s^2, `x' = a x + (1 - a) D_w(x; y) + sqrt(1 - a) t z`. The per-leaf densities
    p_i(x | y) are propagated on an x-grid (Riemann sum of the Gaussian kernel, renormalised per
    step); the guided law's posterior is `pi_y p_i(x|y) / sum`, and each curve is
    `int p_i(x) f(posterior(x)) dx` with f the per-point quantities of `quantities`.
    Keys: `level_l`, `node_n` (the guided law's own entropies) and `unguided_level_l`,
    `unguided_node_n` (the unguided model's posterior read at the guided states).
    """
    mu = np.asarray(mu, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64) / np.sum(prior)
    tree = tree or Tree([f"y{k}" for k in range(len(mu))])
    leaves = list(range(len(mu)))
    span = np.abs(mu).max()

    def grid(sig):
        half = span + 8 * std + 8 * sig
        return np.linspace(-half, half, n_grid)

    def model_log_post(x, sig):
        s2 = std ** 2 + sig ** 2
        lp = np.log(prior)[None] - (x[:, None] - mu[None]) ** 2 / (2 * s2)
        return lp - logsumexp(lp, axis=1, keepdims=True)

    x = grid(sigmas[0])
    dens = np.exp(-x ** 2 / (2 * sigmas[0] ** 2))[None].repeat(len(mu), 0)   # [Y, G], x_0 ~ N(0, sigma_0^2)
    dens /= dens.sum(1, keepdims=True) * (x[1] - x[0])
    rows = []

    def record(x, dens, sig):
        joint = prior[:, None] * dens                                 # [Y, G]
        px = joint.sum(0)
        with np.errstate(divide="ignore"):
            log_post = np.log(joint.T) - np.log(np.where(px > 0, px, 1.0))[:, None]
        keep = px > 0
        wx = px[keep] * (x[1] - x[0])
        own = quantities(log_post[keep], tree, leaves)
        plain = quantities(model_log_post(x[keep], sig), tree, leaves)
        row = {k: float(wx @ v) for k, v in own.items() if k != "inside"}
        row.update({f"unguided_{k}": float(wx @ v) for k, v in plain.items() if k != "inside"})
        rows.append(row)

    record(x, dens, sigmas[0])
    for s, t in itertools.pairwise(sigmas):
        w = scale if interval is None or interval[0] < s <= interval[1] else 1.0
        a = t ** 2 / s ** 2
        c = std ** 2 / (std ** 2 + s ** 2)
        post = np.exp(model_log_post(x, s))                           # [G, Y]
        d_y = mu[None] + c * (x[:, None] - mu[None])                  # [G, Y]
        d_u = (post * d_y).sum(1)                                     # [G]
        var = (1 - a) * t ** 2
        xn = grid(t)
        new = np.empty((len(mu), len(xn)))
        for y in range(len(mu)):
            mean = a * x + (1 - a) * (d_u + w * (d_y[:, y] - d_u))   # [G]
            kern = np.exp(-(xn[:, None] - mean[None]) ** 2 / (2 * var))  # [G', G]
            new[y] = kern @ (dens[y] * (x[1] - x[0])) / np.sqrt(2 * np.pi * var)
        new /= new.sum(1, keepdims=True) * (xn[1] - xn[0])
        x, dens = xn, new
        record(x, dens, t)
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def guided_chain_entropy(mu, std, prior, scale, sigmas, n_grid=801, uncond_reading=False):
    """H_w(Y | x_i) of the leaves (and, with uncond_reading, the unguided reading) along sigmas."""
    curves = guided_chain_curves(mu, std, prior, scale, sigmas, n_grid=n_grid)
    depth = max(int(k.split("_")[1]) for k in curves if k.startswith("level_"))
    h = curves[f"level_{depth}"]
    return (h, curves[f"unguided_level_{depth}"]) if uncond_reading else h
