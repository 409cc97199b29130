"""Gaussian mixtures: a model whose every answer is exact.

Leaves ``y`` with weights ``w_y``, means ``m_y`` in ``R^d`` and a shared isotropic within-class std
``s0``. Noised on the variance-exploding axis, ``x_sigma | y ~ N(m_y, s^2 I)`` with
``s^2 = s0^2 + sigma^2``, so the posterior, the denoisers (unconditional, per class, per cell of
leaves), the clean classifier and the speciation time are all closed form. The toolkit's estimators
are checked against it; see ``docs/gmm.md`` for the formulas.

All arithmetic is float64. Methods accept tensors of any float dtype and return float64; the
:class:`GaussianMixtureDenoiser` wrapper returns the input's dtype, as samplers expect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from probes.classifiers.base import Classifier
from probes.conditioning import Conditioner
from probes.denoisers.base import Denoiser
from probes.errors import ProbesError, UnsupportedCondition
from probes.models.gmm_theory import (  # noqa: F401  (re-exported: the theory belongs with the model)
    two_class_entropy,
    two_class_entropy_curve,
    two_class_rate,
    two_class_rate_curve,
    two_class_rate_peak,
)
from probes.noise import sigma_from_vp_time

# Rows per chunk are chosen so one chunk's [rows, L] float64 block stays near this many elements
# (~32 MB): large batches then never materialise [B, L] temporaries beyond the output itself.
_CHUNK_ELEMENTS = 1 << 22


class GaussianMixture:
    """An isotropic Gaussian mixture over named leaves.

    Args:
        means: ``[L, d]`` component means, one per leaf.
        std: the within-class standard deviation ``s0`` (> 0).
        weights: ``[L]`` mixture weights (normalised here); uniform when ``None``.
        leaves: leaf names in order; ``"0" ... "L-1"`` when ``None``.
    """

    def __init__(self, means, std: float, weights=None, leaves: Sequence[str] | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2 or means.shape[0] < 1:
            raise ValueError(f"means must have shape [leaves, dim], got {tuple(means.shape)}")
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        n = means.shape[0]
        if weights is None:
            weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (n,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be {n} non-negative numbers with a positive sum")
        leaves = [str(i) for i in range(n)] if leaves is None else [str(leaf) for leaf in leaves]
        if len(leaves) != n or len(set(leaves)) != n:
            raise ValueError(f"leaves must be {n} distinct names, one per mean")
        self.means = means
        self.std = float(std)
        self._weights = weights / weights.sum()
        self._log_weights = self._weights.log()
        self._half_sq_norms = 0.5 * (means**2).sum(-1)
        self._leaves = leaves

    # ---- constructors -------------------------------------------------------------------------

    @classmethod
    def from_means(cls, leaves: Sequence[str], means, std: float, weights=None) -> GaussianMixture:
        """A mixture from explicit leaf names and means."""
        return cls(means, std, weights=weights, leaves=leaves)

    @classmethod
    def two_class(cls, dim: int, mean_norm_sq_per_dim: float = 1.0, std: float = 1.0,
                  axis_aligned: bool = True, seed: int = 0) -> GaussianMixture:
        """Two equiprobable classes at ``+-m`` with ``|m|^2 = dim * mean_norm_sq_per_dim``.

        ``m`` lies along ``e1``, or along a fixed random direction (``axis_aligned=False``, ``seed``).
        Leaves are ``["minus", "plus"]``.
        """
        if axis_aligned:
            direction = torch.zeros(dim, dtype=torch.float64)
            direction[0] = 1.0
        else:
            gen = torch.Generator().manual_seed(seed)
            direction = torch.randn(dim, generator=gen, dtype=torch.float64)
            direction /= direction.norm()
        m = math.sqrt(dim * mean_norm_sq_per_dim) * direction
        return cls(torch.stack([-m, m]), std, leaves=["minus", "plus"])

    @classmethod
    def hierarchical(cls, taxonomy, dim: int, separations: Sequence[float], std: float = 1.0,
                     seed: int = 0, axis_aligned: bool = False,
                     share_level_axes: bool = False) -> GaussianMixture:
        """Means laid out along a taxonomy: children sit around their parent's mean.

        A node's ``K`` children are the vertices of a regular simplex centred on the parent, at
        distance ``separations[depth(child) - 1]`` from it, spanned by ``K - 1`` directions.
        Directions are orthonormal to all earlier ones while ``dim`` allows (random, seeded; or
        coordinate axes with ``axis_aligned=True``); past that they are random unit vectors.
        For two children at separation ``a`` the split is the two-class problem with ``|m| = a``.

        By default every internal node gets its own directions: the decision among a node's
        children, ``p(c | x, Y in node)``, then depends on the node's own coordinates only. With
        ``share_level_axes=True`` all nodes at one depth reuse the same directions, so (for equal
        branching per depth) the mixture is a product over levels and the level entropies add
        exactly: ``H(leaf | x) = sum over levels of the level's own entropy``, per sample.
        """
        if len(separations) != taxonomy.max_depth:
            raise ProbesError(f"hierarchical mixture: need {taxonomy.max_depth} separations (one per depth "
                              f"1..{taxonomy.max_depth}), got {len(separations)}")
        # Which slice of the direction pool each internal node uses.
        slots, used = {}, 0
        if share_level_axes:
            width = {}
            for node in taxonomy.internal_nodes:
                d = taxonomy.depth(node)
                width[d] = max(width.get(d, 0), len(taxonomy.children(node)) - 1)
            start = {d: sum(width[e] for e in sorted(width) if e < d) for d in width}
            slots = {n: start[taxonomy.depth(n)] for n in taxonomy.internal_nodes}
            used = sum(width.values())
        else:
            for node in taxonomy.internal_nodes:
                slots[node] = used
                used += len(taxonomy.children(node)) - 1
        if axis_aligned and used > dim:
            raise ProbesError(f"hierarchical mixture: axis-aligned layout needs dim >= {used}, got {dim}")
        directions = _directions(dim, used, seed, axis_aligned)  # [used, dim]

        mean = {taxonomy.root: torch.zeros(dim, dtype=torch.float64)}
        for node in taxonomy.internal_nodes:  # pre-order: a parent is placed before its children
            children = list(taxonomy.children(node))
            basis = directions[slots[node]:slots[node] + len(children) - 1]
            offsets = _simplex(len(children)) @ basis  # [K, dim], unit norm each
            for child, offset in zip(children, offsets):
                mean[child] = mean[node] + float(separations[taxonomy.depth(child) - 1]) * offset
        leaves = list(taxonomy.leaves)
        return cls(torch.stack([mean[leaf] for leaf in leaves]), std, leaves=leaves)

    @classmethod
    def on_regions(cls, taxonomy, shape: Sequence[int], regions, separations: Sequence[float], std: float = 1.0,
                   seed: int = 0) -> GaussianMixture:
        """A mixture over images of ``shape`` ``[C, H, W]`` whose decisions sit in chosen regions.

        ``regions``: one bool mask per depth 1..max_depth (``[H, W]``, all channels, or ``[C, H, W]``).
        A node's ``K`` children are the vertices of a regular simplex around the node's mean at
        distance ``separations[depth(child) - 1]``, spanned by ``K - 1`` orthonormal directions that
        are zero outside the children's depth's region (random inside it, seeded; the same
        directions for every node of one depth). So children differ only inside their region,
        and (for equal branching per depth) every node's children carry the same lower
        structure: two groups differ only in the region of their own depth. Means are flattened
        to ``C H W`` (row-major), as :class:`GaussianMixtureDenoiser` flattens image-shaped inputs.
        """
        shape = tuple(int(v) for v in shape)
        depth = taxonomy.max_depth
        if len(shape) != 3 or min(shape) < 1:
            raise ProbesError(f"mixture on regions: shape must be [C, H, W], got {list(shape)}")
        if len(regions) != depth or len(separations) != depth:
            raise ProbesError(f"mixture on regions: need one region and one separation per depth 1..{depth}, "
                              f"got {len(regions)} and {len(separations)}")
        dim = math.prod(shape)
        gen = torch.Generator().manual_seed(seed)
        bases = []
        for k, region in enumerate(regions, start=1):
            inside = torch.as_tensor(region, dtype=torch.bool).expand(shape).reshape(-1).nonzero()[:, 0]
            width = max((len(taxonomy.children(n)) - 1 for n in taxonomy.internal_nodes
                         if taxonomy.depth(n) == k - 1), default=0)
            if width > len(inside):
                raise ProbesError(f"mixture on regions: the region of depth {k} has {len(inside)} values, "
                                  f"fewer than the {width} directions its nodes' children need")
            basis = torch.zeros(width, dim, dtype=torch.float64)
            if width:
                q, _ = torch.linalg.qr(torch.randn(len(inside), width, generator=gen, dtype=torch.float64))
                basis[:, inside] = q.T
            bases.append(basis)
        mean = {taxonomy.root: torch.zeros(dim, dtype=torch.float64)}
        for node in taxonomy.internal_nodes:  # pre-order: a parent is placed before its children
            children = list(taxonomy.children(node))
            k = taxonomy.depth(node)
            offsets = _simplex(len(children)) @ bases[k][:len(children) - 1]
            for child, offset in zip(children, offsets):
                mean[child] = mean[node] + float(separations[k]) * offset
        leaves = list(taxonomy.leaves)
        return cls(torch.stack([mean[leaf] for leaf in leaves]), std, leaves=leaves)

    # ---- basic properties ---------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def weights(self) -> torch.Tensor:
        return self._weights

    @property
    def leaves(self) -> list[str]:
        return list(self._leaves)

    def sample(self, n: int, generator: torch.Generator | None = None):
        """``(x0 [n, d], y [n])``: clean samples and their leaf indices."""
        y = torch.multinomial(self._weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[y] + self.std * noise, y

    # ---- exact posterior ----------------------------------------------------------------------

    def _s2(self, sigma, batch: int, device) -> torch.Tensor:
        """``s^2 = s0^2 + sigma^2`` as ``[batch, 1]``."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=device)
        if sigma.ndim == 0:
            sigma = sigma.expand(batch)
        if sigma.shape != (batch,):
            raise ValueError(f"sigma must be a scalar or have shape [{batch}], got {tuple(sigma.shape)}")
        return (self.std**2 + sigma**2)[:, None]

    def _check_x(self, x) -> torch.Tensor:
        """``x`` as ``[batch, dim]`` float64; image-shaped ``[batch, C, H, W]`` is flattened row-major."""
        x = torch.as_tensor(x).to(torch.float64)
        if x.ndim > 2 and math.prod(x.shape[1:]) == self.dim:
            x = x.reshape(x.shape[0], self.dim)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [batch, {self.dim}] (or [batch, *shape] of {self.dim} values), "
                             f"got {tuple(x.shape)}")
        return x

    def log_posterior(self, x, sigma, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Exact ``log p(y | x_sigma)`` ``[B, L]``; with a bool ``mask [B, L]``, conditioned on ``Y`` in it.

        Only ``x.m_y`` depends on both ``x`` and ``y`` (``|x|^2`` cancels in the softmax), so the
        logits are ``log w_y + (x.m_y - |m_y|^2 / 2) / s^2``: one matmul, done in row chunks.
        """
        x = self._check_x(x)
        s2 = self._s2(sigma, x.shape[0], x.device)
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.bool, device=x.device)
            if mask.shape != (x.shape[0], self.n_components):
                raise ValueError(f"mask must have shape [{x.shape[0]}, {self.n_components}], got {tuple(mask.shape)}")
            if not mask.any(-1).all():
                raise ValueError("every mask row must keep at least one leaf")
        means, log_w, half_sq = (t.to(x.device) for t in (self.means, self._log_weights, self._half_sq_norms))
        out = torch.empty(x.shape[0], self.n_components, dtype=torch.float64, device=x.device)
        step = max(1, _CHUNK_ELEMENTS // self.n_components)
        for i in range(0, x.shape[0], step):
            rows = slice(i, i + step)
            logits = torch.addmm(-half_sq, x[rows], means.T).div_(s2[rows]).add_(log_w)
            if mask is not None:
                logits.masked_fill_(~mask[rows], -math.inf)
            out[rows] = torch.log_softmax(logits, dim=-1)
        return out

    def log_posterior_path(self, x0, noise, sigmas, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``log p(y | x0 + sigma * noise)`` for every sigma: ``[N, S, L]`` (the forward path).

        Same numbers as :meth:`log_posterior` on each ``x0 + sigma_j * noise``, but ``x.m_y`` is
        linear in sigma: ``x0.m_y + sigma noise.m_y``, so two ``[N, L]`` matmuls serve all sigmas.
        """
        x0, noise = self._check_x(x0), self._check_x(noise)
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64, device=x0.device).reshape(-1)
        means, log_w, half_sq = (t.to(x0.device) for t in (self.means, self._log_weights, self._half_sq_norms))
        a = x0 @ means.T - half_sq  # [N, L]
        b = noise @ means.T
        inv_s2 = (1.0 / (self.std**2 + sigmas**2))[:, None]  # [S, 1]
        scaled_sigma = sigmas[:, None] * inv_s2
        out = torch.empty(x0.shape[0], sigmas.shape[0], self.n_components, dtype=dtype, device=x0.device)
        step = max(1, _CHUNK_ELEMENTS // (sigmas.shape[0] * self.n_components))
        for i in range(0, x0.shape[0], step):  # all sigmas per call: small calls are overhead-bound
            rows = slice(i, i + step)
            logits = torch.mul(a[rows, None], inv_s2)  # [rows, S, L]; in place from here (memory-bound)
            logits.addcmul_(b[rows, None], scaled_sigma).add_(log_w)
            out[rows] = torch.log_softmax(logits, dim=-1)
        return out

    def log_density(self, x, sigma) -> torch.Tensor:
        """``log p_sigma(x)`` ``[B]``, the exact log marginal density of ``x_sigma`` (differentiable)."""
        x = torch.as_tensor(x).to(torch.float64)
        s2 = self._s2(sigma, x.shape[0], x.device)
        sq = (x**2).sum(-1, keepdim=True) - 2 * x @ self.means.T.to(x.device) + 2 * self._half_sq_norms.to(x.device)
        logits = self._log_weights.to(x.device) - sq / (2 * s2)
        return torch.logsumexp(logits, -1) - 0.5 * self.dim * torch.log(2 * math.pi * s2[:, 0])

    # ---- exact denoisers ----------------------------------------------------------------------

    def cond_mask(self, cond, batch: int, device=None) -> torch.Tensor | None:
        """Normalise a denoiser ``cond`` to a leaf mask ``[B, L]`` (``None`` for unconditional).

        ``cond`` is ``None``, leaf indices (long ``[B]``, ``-1`` = unconditional) or a bool mask.
        """
        if cond is None:
            return None
        cond = torch.as_tensor(cond, device=device)
        if cond.dtype == torch.bool:
            if cond.shape != (batch, self.n_components):
                raise ValueError(f"a mask cond must have shape [{batch}, {self.n_components}], got {tuple(cond.shape)}")
            return cond
        if cond.dtype.is_floating_point or cond.shape != (batch,):
            raise ValueError(f"cond must be None, integer leaf indices [{batch}] or a bool mask "
                             f"[{batch}, {self.n_components}]")
        if ((cond < -1) | (cond >= self.n_components)).any():
            raise ValueError(f"leaf indices must be in [-1, {self.n_components - 1}]")
        leaf = torch.arange(self.n_components, device=cond.device)
        return (cond[:, None] == leaf) | (cond[:, None] < 0)

    def denoise(self, x, sigma, cond=None) -> torch.Tensor:
        """Exact ``E[x0 | x_sigma]``, ``E[x0 | x_sigma, Y = y]`` or ``E[x0 | x_sigma, Y in cell]``.

        Per class ``E[x0 | x, y] = m_y + (s0^2 / s^2)(x - m_y)``; averaging with ``p(y | x, cell)``
        gives ``c x + (1 - c) sum_y p(y | x, cell) m_y`` with ``c = s0^2 / s^2``.
        """
        x = self._check_x(x)
        s2 = self._s2(sigma, x.shape[0], x.device)
        post = self.log_posterior(x, sigma, self.cond_mask(cond, x.shape[0], x.device)).exp_()
        c = self.std**2 / s2
        return c * x + (1 - c) * (post @ self.means.to(x.device))

    # ---- covariance and speciation -------------------------------------------------------------

    def mean(self) -> torch.Tensor:
        return self._weights @ self.means

    def _centred_means(self) -> torch.Tensor:
        """``sqrt(w_y) (m_y - mbar)`` ``[L, d]``: the between-class covariance is ``C^T C``."""
        return self._weights.sqrt()[:, None] * (self.means - self.mean())

    def covariance(self) -> torch.Tensor:
        """``s0^2 I + sum_y w_y (m_y - mbar)(m_y - mbar)^T`` ``[d, d]``."""
        c = self._centred_means()
        return self.std**2 * torch.eye(self.dim, dtype=torch.float64) + c.T @ c

    def largest_eigenvalue(self) -> float:
        """``Lambda``, the top eigenvalue of the data covariance, via the smaller of the two Grams."""
        c = self._centred_means()
        gram = c @ c.T if self.n_components <= self.dim else c.T @ c  # same non-zero spectrum
        return self.std**2 + float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0))

    def speciation_time(self) -> float:
        """``t_S = 0.5 log Lambda`` in VP time ``t = 0.5 log(1 + sigma^2)`` (Biroli et al. 2024)."""
        return 0.5 * math.log(self.largest_eigenvalue())

    def speciation_sigma(self) -> float:
        """The sigma of :meth:`speciation_time`, ``sqrt(Lambda - 1)``; needs ``Lambda > 1``."""
        t = self.speciation_time()
        if t <= 0:
            raise ValueError(f"no speciation sigma: the covariance's top eigenvalue {math.exp(2 * t):.4g} is <= 1")
        return sigma_from_vp_time(t)

    # ---- toolkit adapters ---------------------------------------------------------------------

    def denoiser(self) -> GaussianMixtureDenoiser:
        return GaussianMixtureDenoiser(self)

    def classifier(self, leaves: Sequence[str] | None = None) -> GaussianMixtureClassifier:
        """The exact clean classifier over ``leaves`` (default: every component); components that
        are not among ``leaves`` are the outside of the taxonomy."""
        return GaussianMixtureClassifier(self, leaves=leaves)

    def conditioner(self, taxonomy) -> GaussianMixtureConditioner:
        return GaussianMixtureConditioner(self, taxonomy)

    def restricted(self, leaves: Sequence[str]) -> GaussianMixture:
        """The mixture of the components named ``leaves`` alone, weights renormalised: the law of
        ``x`` given that its class is among them."""
        rows = self.component_index(leaves)
        return GaussianMixture(self.means[rows], self.std, self._weights[rows], leaves=list(leaves))

    def component_index(self, leaves: Sequence[str]) -> list[int]:
        """Component indices of ``leaves`` (names), in their order."""
        index = {leaf: i for i, leaf in enumerate(self._leaves)}
        missing = [leaf for leaf in leaves if leaf not in index]
        if missing:
            raise ProbesError(f"gaussian mixture: no component named {missing[0]!r}")
        return [index[leaf] for leaf in leaves]

    def __repr__(self) -> str:
        return f"GaussianMixture(leaves={self.n_components}, dim={self.dim}, std={self.std:g})"


class GaussianMixtureDenoiser(Denoiser):
    """The exact denoiser of a :class:`GaussianMixture`; ``cond`` as in :meth:`GaussianMixture.denoise`.

    ``sigma_max`` is 20 times the data's largest std (the posterior there is within ~1e-3 nats of
    the prior); ``sigma_min`` is ``0.002 s0``, well inside the clean regime.
    """

    def __init__(self, mixture: GaussianMixture):
        super().__init__()
        self.mixture = mixture
        self.sigma_max = 20.0 * math.sqrt(mixture.largest_eigenvalue())
        self.sigma_min = 0.002 * mixture.std

    def forward(self, x, sigma, cond=None):
        # image-shaped inputs [B, C, H, W] are the mixture's vectors, flattened row-major
        return self.mixture.denoise(x.reshape(x.shape[0], -1), sigma, cond).reshape(x.shape).to(x.dtype)


class GaussianMixtureClassifier(Classifier):
    """The exact clean classifier: ``logits(x0) = log p(y | x0)`` (within-class std ``s0``) over the
    components; with ``leaves`` a subset of them, the rest are outside the taxonomy."""

    def __init__(self, mixture: GaussianMixture, temperature: float = 1.0, leaves: Sequence[str] | None = None):
        if leaves is None or list(leaves) == mixture.leaves:
            super().__init__(mixture.leaves, temperature=temperature)
        else:
            super().__init__(leaves, [[i] for i in mixture.component_index(leaves)], temperature=temperature)
        self.mixture = mixture

    def logits(self, x):
        return self.mixture.log_posterior(x, 0.0)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """A mixture's samples are their own features (image-shaped ones flattened row-major)."""
        return x.reshape(x.shape[0], -1).double()


class GaussianMixtureConditioner(Conditioner):
    """Taxonomy node names (leaf or internal) -> bool masks ``[B, C]`` over the components under
    them. The taxonomy's leaves are components of the mixture; components that are not leaves are
    the outside of the taxonomy, which :meth:`outside` conditions on exactly."""

    def __init__(self, mixture: GaussianMixture, taxonomy):
        leaves = list(taxonomy.leaves)
        if not set(leaves) <= set(mixture.leaves):
            missing = next(leaf for leaf in leaves if leaf not in set(mixture.leaves))
            raise ProbesError(f"gaussian mixture conditioner: taxonomy leaf {missing!r} is not a component "
                              "of the mixture")
        index = {leaf: i for i, leaf in enumerate(mixture.leaves)}
        self.masks = {}
        for node in [*taxonomy.internal_nodes, *leaves]:
            row = torch.zeros(mixture.n_components, dtype=torch.bool)
            under = [node] if node in index else taxonomy.leaves_under(node)
            row[[index[leaf] for leaf in under]] = True
            self.masks[node] = row
        self.outside_mask = ~self.masks[taxonomy.root] if taxonomy.internal_nodes else None

    def __call__(self, nodes):
        try:
            return torch.stack([self.masks[n] for n in nodes])
        except KeyError as err:
            raise UnsupportedCondition(f"taxonomy node {err.args[0]!r} is not in the mixture's taxonomy") from None

    def outside(self, n: int):
        """Condition ``n`` samples on the components outside the taxonomy."""
        if self.outside_mask is None or not self.outside_mask.any():
            raise UnsupportedCondition("the mixture has no components outside the taxonomy")
        return self.outside_mask.expand(n, -1).clone()


def _simplex(k: int) -> torch.Tensor:
    """``[k, k-1]``: vertices of a regular simplex, centred at 0, each of unit norm."""
    if k < 2:
        raise ProbesError("hierarchical mixture: every internal node needs at least two children")
    centred = torch.eye(k, dtype=torch.float64) - 1.0 / k
    # Rows span the (k-1)-dim subspace orthogonal to the all-ones vector; express them in a basis of it.
    basis = torch.linalg.svd(centred).Vh[: k - 1]  # [k-1, k], orthonormal
    vertices = centred @ basis.T
    return vertices / vertices.norm(dim=1, keepdim=True)


def _directions(dim: int, n: int, seed: int, axis_aligned: bool) -> torch.Tensor:
    """``[n, dim]`` unit directions, mutually orthogonal as far as ``dim`` allows."""
    if axis_aligned:
        return torch.eye(n, dim, dtype=torch.float64)  # not eye(dim)[:n]: dim may be large
    gen = torch.Generator().manual_seed(seed)
    k = min(n, dim)
    q, _ = torch.linalg.qr(torch.randn(dim, k, generator=gen, dtype=torch.float64))
    extra = torch.randn(n - k, dim, generator=gen, dtype=torch.float64)
    extra = extra / extra.norm(dim=1, keepdim=True)
    return torch.cat([q.T, extra])


def speciation_by_node(gmm: GaussianMixture, taxonomy) -> dict[str, dict]:
    """Theory per internal node: ``t_S = 0.5 log Lambda`` of the mixture restricted to its leaves.

    Restricting to the leaves under a node gives the data distribution conditioned on that node,
    whose covariance's largest eigenvalue sets when its children separate (the root's entry is
    the whole mixture's speciation time). ``sigma_S`` is None where ``Lambda <= 1`` (no
    speciation on the VP clock).
    """
    index = {leaf: i for i, leaf in enumerate(gmm.leaves)}
    table = {}
    for node in taxonomy.internal_nodes:
        rows = [index[leaf] for leaf in taxonomy.leaves_under(node)]
        sub = GaussianMixture(gmm.means[rows], gmm.std, gmm.weights[rows] / gmm.weights[rows].sum())
        lam = sub.largest_eigenvalue()
        table[node] = {
            "lambda": lam,
            "speciation_time": 0.5 * math.log(lam),
            "speciation_sigma": math.sqrt(lam - 1) if lam > 1 else None,
        }
    return table
