"""The contract every adapter, classifier and estimator keeps (in the spirit of scikit-learn's
``check_estimator``), parametrised over the registries: a family added to
:data:`probes.families.FAMILIES` or an estimator added to :data:`probes.estimators.ESTIMATORS` is
checked here, and fails until it has a tiny instance below.

Denoiser contract (``D(x, sigma, cond) -> x0_hat`` on the sigma axis):
  shape and dtype kept, finite; deterministic (modules in eval mode); no cross-talk between rows
  (a batch equals its rows one by one, 1e-4 of scale: batched float32 kernels differ in summation
  order); a scalar sigma equals the same sigma per row; ``D(x, sigma -> 0) -> x`` (every
  parameterisation is a skip connection at zero noise: eps ``x - sigma eps``, v, flow
  ``x_t - t v``, EDM's ``c_skip -> 1``; at sigma = 1e-3 the gap is ~1e-3 of the output, tested at
  2e-2); ``sigma_min < sigma_max``; the family's conditioner feeds it.
Classifier contract: ``[B, L]`` log-probabilities over the taxonomy's leaves, rows summing to at
  most 1 (64 float32 units: a log-softmax over up to 1000 classes rounds each log-probability by a
  few units of log 1000 ~ 7; the rest is the classifier's mass outside the taxonomy, e.g. ImageNet
  classes under no leaf) and exactly 1 when the taxonomy covers all its classes, deterministic, no
  cross-talk (1e-4 of the log-probabilities' magnitude, as for denoisers).
Estimator contract: on a Gaussian mixture, output on a sub-grid of the trajectory's sigmas,
  normalised posteriors ``[B, S', L]`` (or level/node entropies ``[B, S', D]``/``[B, S', K]``),
  reproducible with the same seed, costs counted.
"""

import dataclasses
from pathlib import Path

import pytest
import tiny_pipelines as tp
import torch
from tolerances import F32, magnitude

from probes.estimators import ESTIMATORS, ProbeContext, build_estimator
from probes.families import FAMILIES
from probes.models.gmm import GaussianMixture
from probes.sampling import forward_path, sample
from probes.taxonomy import load_taxonomy

ROOT = Path(__file__).resolve().parents[1]
AV = str(ROOT / "taxonomies" / "animals-vehicles.yaml")


def _pipeline_instance(name):
    """A pipeline family's tiny instance from tests/tiny_pipelines.py's FAMILY_CASES."""
    pipe = tp.family_pipe(name)
    family = FAMILIES[name]
    return family.denoiser(pipe), family.latent_shape(pipe), tp.FAMILY_CASES[name].cond, pipe


def _edm2():
    from edm2_tiny import TinyPrecond

    net = TinyPrecond(img_resolution=8, img_channels=3, label_dim=1000).eval()
    uncond = TinyPrecond(img_resolution=8, img_channels=3, label_dim=0, seed=1).eval()
    return FAMILIES["edm2"].denoiser(net, uncond), (3, 8, 8), lambda b: None, net


def _digits():
    return FAMILIES["digits"].denoiser(), (1, 8, 8), lambda b: None, None


def _gmm():
    tax = load_taxonomy(str(ROOT / "taxonomies" / "gmm-two-by-two.yaml"))
    gmm = GaussianMixture.hierarchical(tax, dim=6, separations=[3.0, 1.5], std=0.7)
    return FAMILIES["gmm"].denoiser(gmm), (6,), lambda b: None, gmm


#: families that are not diffusers pipelines -> () -> (denoiser, one sample's shape, cond(batch), model);
#: pipeline families come from tests/tiny_pipelines.py's FAMILY_CASES.
INSTANCES = {"edm2": _edm2, "digits": _digits, "gmm": _gmm}

#: taxonomies the non-pipeline families' conditioners are checked on
CONDITIONER_TAXONOMY = {"edm2": AV, "digits": str(ROOT / "taxonomies" / "digits-shape.yaml"),
                        "gmm": str(ROOT / "taxonomies" / "gmm-two-by-two.yaml")}

_built = {}


def _instance(name):
    if name not in INSTANCES and name not in tp.FAMILY_CASES:
        pytest.fail(f"family {name!r} is in the registry but has no tiny instance (tests/tiny_pipelines.py "
                    "FAMILY_CASES for pipelines, INSTANCES here otherwise)")
    if name not in _built:
        _built[name] = INSTANCES[name]() if name in INSTANCES else _pipeline_instance(name)
    return _built[name]


def _row(cond, i):
    """Row i of a batch's conditioning, in the same form."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: v[i:i + 1] for k, v in cond.items()}
    return cond[i:i + 1]


def _scale(t):
    return float(t.abs().max()) + 1.0


@pytest.mark.parametrize("name", list(FAMILIES))
def test_denoiser_contract(name):
    denoiser, shape, cond, _model = _instance(name)
    assert 0 < denoiser.sigma_min < denoiser.sigma_max
    g = torch.Generator().manual_seed(0)
    b = 3
    x0 = torch.randn(b, *shape, generator=g)
    for sigma in (0.5, 5.0):
        x = x0 + sigma * torch.randn(b, *shape, generator=g)
        with torch.no_grad():
            d = denoiser(x, sigma, cond(b))
            again = denoiser(x, sigma, cond(b))
            per_row = denoiser(x, torch.full((b,), sigma), cond(b))
            rows = torch.cat([denoiser(x[i:i + 1], sigma, _row(cond(b), i)) for i in range(b)])
        assert d.shape == x.shape and d.dtype == x.dtype and torch.isfinite(d).all()
        assert torch.equal(d, again), "not deterministic: a module left in training mode?"
        # the same float32 arithmetic with sigma broadcast: 1e-5 of the magnitude (84 float32 units);
        # rows one by one: 1e-4 of it (batched kernels sum in another order; measured 34 units)
        assert torch.allclose(d, per_row, atol=1e-5 * _scale(d))
        assert torch.allclose(rows, d, atol=1e-4 * _scale(d)), "rows of a batch influence each other"
    with torch.no_grad():
        small = denoiser(x0, 1e-3, cond(b))
    assert torch.allclose(small, x0, atol=2e-2 * _scale(x0)), "D(x, sigma -> 0) must tend to x"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_conditioner_feeds_the_denoiser(name):
    if name in tp.FAMILY_CASES:
        source = tp.FAMILY_CASES[name].conditioner_taxonomy
        if source is None:
            pytest.skip("the tiny instance has no T5 encoder: prompts cannot be encoded offline")
    elif name in CONDITIONER_TAXONOMY:
        source = CONDITIONER_TAXONOMY[name]
    else:
        pytest.fail(f"family {name!r} needs a taxonomy in CONDITIONER_TAXONOMY")
    denoiser, shape, _, model = _instance(name)
    tax = load_taxonomy(source)
    leaves = tax.leaves[:2]
    cond = FAMILIES[name].conditioner(model, tax)(leaves)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1)) * 2.0
    with torch.no_grad():
        d = denoiser(x, 2.0, cond)
    assert d.shape == x.shape and torch.isfinite(d).all()


# -- classifiers -----------------------------------------------------------------------------------


def _linear_logits(n_leaves):
    w = torch.randn(3 * 16, n_leaves, generator=torch.Generator().manual_seed(0))
    return lambda images: torch.nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1) @ w


def _clip(tax):
    from probes.classifiers.clip import TINY_CLIP, ClipZeroShotClassifier, register_tiny_clip

    register_tiny_clip()
    return ClipZeroShotClassifier.create(tax, TINY_CLIP, pretrained=None, templates="simple")


CLASSIFIERS = {
    "digits": (str(ROOT / "taxonomies" / "digits-shape.yaml"), (1, 8, 8),
               lambda tax: __import__("probes.models.digits", fromlist=["x"]).load_digits_classifier(tax)),
    "gmm-exact": (str(ROOT / "taxonomies" / "gmm-two-by-two.yaml"), (6,),
                  lambda tax: GaussianMixture.hierarchical(tax, dim=6, separations=[3.0, 1.5]).classifier()),
    "clip-zero-shot": (AV, (3, 32, 32), _clip),
    "imagenet": (AV, (3, 64, 64), lambda tax: __import__("probes.classifiers.imagenet", fromlist=["x"])
                 .ImageNetClassifier.create(tax, source="efficientnet_lite0")),
    "any-callable-on-latents": (AV, (4, 8, 8), lambda tax: __import__("probes.probing", fromlist=["x"])
                                .LatentClassifier(FAMILIES["dit"].decoder(_instance("dit")[3]),
                                                  _linear_logits(len(tax.leaves)), tax.leaves)),
}


# Classifiers whose native classes all belong to a leaf of the test taxonomy.
CLOSED_WORLD = ("digits", "gmm-exact", "clip-zero-shot", "any-callable-on-latents")


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifier_contract(name):
    source, shape, make = CLASSIFIERS[name]
    tax = load_taxonomy(source)
    clf = make(tax)
    if hasattr(clf, "eval"):
        clf.eval()
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        lp, again = clf(x), clf(x)
        rows = torch.cat([clf(x[i:i + 1]) for i in range(3)])
    assert lp.shape == (3, len(tax.leaves)) and torch.isfinite(lp).all()
    total = lp.exp().sum(-1)
    assert (total <= 1 + 64 * F32).all()  # float32 rounding of log-softmaxes over up to 1000 classes
    if name in CLOSED_WORLD:
        assert torch.allclose(total, torch.ones(3), rtol=0, atol=64 * F32)
    assert torch.equal(lp, again)
    # rows one by one against the batch: 1e-4 of the log-probabilities' magnitude (measured 2 float32 units)
    assert torch.allclose(rows, lp, rtol=0, atol=1e-4 * magnitude(lp))
    assert list(getattr(clf, "leaves", tax.leaves)) == tax.leaves


# -- estimators ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gmm_setup():
    tax = load_taxonomy(str(ROOT / "taxonomies" / "gmm-two-by-two.yaml"))
    gmm = GaussianMixture.hierarchical(tax, dim=6, separations=[3.0, 1.5], std=0.7)
    grid = torch.logspace(1, -1.5, 10, dtype=torch.float64)

    def pairs(n, g):
        return gmm.sample(n, generator=g)

    ctx = ProbeContext(tax, sigmas=grid, denoiser=gmm.denoiser(), conditioner=gmm.conditioner(tax),
                       classifier=gmm.classifier(), sample_pairs=pairs, exact_model=gmm)
    return tax, gmm, grid, ctx


OPTIONS = {"rollout": {"k": 2}, "immse": {"n_pairs": 64}}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimator_contract(name, gmm_setup):
    tax, gmm, grid, ctx = gmm_setup
    x = gmm.sample(4, generator=torch.Generator().manual_seed(0))[0] if name != "bayes" else None
    noise = torch.randn(4, gmm.dim, generator=torch.Generator().manual_seed(1)) * float(grid[0])
    traj = sample(gmm.denoiser(), noise, grid, method="ancestral", generator=torch.Generator().manual_seed(2))
    if x is not None and name == "exact":
        traj = forward_path(x, grid, torch.Generator().manual_seed(3))
    if name == "guided":  # scores each sample's conditioning leaf: a leaf-conditional trajectory
        leaf = torch.arange(4) % len(tax.leaves)
        cond = gmm.conditioner(tax)([tax.leaves[i] for i in leaf.tolist()])
        traj = sample(gmm.denoiser(), noise, grid, method="ancestral", cond=cond,
                      generator=torch.Generator().manual_seed(2))
        traj.leaf = leaf
        ctx = dataclasses.replace(ctx, guided_denoiser=gmm.denoiser())
    options = {k: v for k, v in OPTIONS.get(name, {}).items() if k in
               __import__("probes.estimators.base", fromlist=["x"]).options_of(ESTIMATORS[name])}
    est = build_estimator(name, sigma_stride=2, **options)
    out = est.estimate(traj, ctx, generator=torch.Generator().manual_seed(4))
    again = est.estimate(traj, ctx, generator=torch.Generator().manual_seed(4))
    # a sub-grid holds the grid's own float64 values: relative 1e-12
    assert all(any(abs(float(s) - float(t)) < 1e-12 * float(t) for t in grid) for s in out.sigmas)
    S = len(out.sigmas)
    if out.log_probs is not None:
        assert out.log_probs.shape == (4, S, len(tax.leaves))
        # normalised posteriors over 4 leaves, float32 at worst: 32 float32 units
        assert torch.allclose(out.log_probs.exp().sum(-1), torch.ones(4, S), rtol=0, atol=32 * F32)
        assert torch.equal(out.log_probs, again.log_probs)
    else:
        assert out.levels.shape == (out.levels.shape[0], S, tax.max_depth)
        assert out.nodes.shape[-1] == len(tax.internal_nodes)
        assert torch.equal(torch.nan_to_num(torch.as_tensor(out.levels)),
                           torch.nan_to_num(torch.as_tensor(again.levels)))
    if name != "exact":
        assert out.denoiser_calls + out.classifier_calls > 0
