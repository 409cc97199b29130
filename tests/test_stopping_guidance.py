"""Per-sample stopping and feedback guidance (probes.denoisers.stopping) against exact posteriors of
Gaussian mixtures, and their bookkeeping against plain classifier-free guidance."""

import json
import math

import pytest
import torch
from gmm_runs import gmm_recipe

import probes.runner as runner
from probes.denoisers.base import GuidedDenoiser
from probes.denoisers.stopping import FeedbackGuidedDenoiser, StoppingGuidedDenoiser, fbg_parameters
from probes.errors import ProbesError
from probes.models.gmm import GaussianMixture
from probes.noise import geometric_grid
from probes.sampling import sample
from probes.taxonomy import load_taxonomy

pytestmark = pytest.mark.usefixtures("one_thread")  # many small tensor operations


@pytest.fixture(scope="module")
def mixture():
    tax = load_taxonomy("gmm-two-by-two")
    gmm = GaussianMixture.hierarchical(tax, 3, [6.0, 2.0], std=0.5, axis_aligned=True, share_level_axes=True)
    return tax, gmm


def _errors(gmm, every: int) -> tuple[float, float]:
    """Along the exact model's leaf-conditional ancestral paths (801 steps from sigma 1000, read at
    every ``every``-th state, so coarser grids see the same paths: common random numbers), the largest
    ``|q - p(target | x_i)|`` of the stopping filter (while it runs) and the largest
    ``|log r - log(p(target | x_i) / p(target))|`` of feedback guidance with ``tau = 1``, ``delta = 0``
    and clips that never bind (``pi = 1 - 1e-6``: the lower clip is ``log 1e-6``)."""
    sigmas = geometric_grid(1000.0, 0.05, 801)
    leaf = torch.arange(32) % gmm.n_components
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(32, gmm.dim, generator=g, dtype=torch.float64) * sigmas[0]
    traj = sample(gmm.denoiser(), noise, sigmas, method="ancestral", cond=leaf, generator=g, record="states")
    stop = StoppingGuidedDenoiser(gmm.denoiser(), 3.0, 1 - 1e-12, lambda cond: gmm.weights[cond])
    fbg = FeedbackGuidedDenoiser(gmm.denoiser(), pi=1 - 1e-6, max_scale=1e6, offset=0.0, temperature=1.0)
    rows = torch.arange(len(leaf))
    stop_error = fbg_error = 0.0
    for i in range(0, len(sigmas), every):  # replay the states in order: the filters follow them
        x, sigma = traj.states[i], float(sigmas[i])
        stop(x, sigma, leaf)
        fbg(x, sigma, leaf)
        log_post = gmm.log_posterior(x, sigma)[rows, leaf]
        going = ~stop.stopped  # a sample certain to float64 precision stops, its filter with it
        if going.any():
            stop_error = max(stop_error, float((stop.posterior - log_post.exp())[going].abs().max()))
        fbg_error = max(fbg_error, float((fbg.log_ratio - (log_post - gmm.weights[leaf].log())).abs().max()))
    return stop_error, fbg_error


@pytest.fixture(scope="module")
def two_class():
    return GaussianMixture(torch.tensor([[-2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]), 0.5)


def test_the_target_vs_rest_filter_converges_to_the_exact_posterior_of_the_target(two_class):
    # Two cells, the target and the rest, the rest's kernel from D_u by the mixture identity. With two
    # classes the rest is one Gaussian class and the filter is exact in the small-step limit (its
    # errors: the ancestral kernel, O(step), and the prior start at sigma 1000, ~1e-3).
    coarse, fine = _errors(two_class, 4)[0], _errors(two_class, 1)[0]
    # Tolerances: 6e-2 in probability at 800 steps (measured 3.4e-2, the largest over 32 paths and
    # all steps), and 4 times fewer steps give at least 4 times the error (measured 6 times).
    assert fine < 6e-2 and fine < 0.25 * coarse, (coarse, fine)
    # With more classes the rest is a mixture drawn as one Gaussian at its mean, a bias that does not
    # vanish with the step (on the four-leaf mixture, up to 0.3 in probability along these paths at
    # 200 and at 800 steps): the stopping rule reads a filter that is exact only for two classes.


def test_feedback_guidance_converges_to_the_exact_posterior_ratio_without_temperature_or_offset(two_class):
    # FBG adds the log-likelihood ratio of the conditional and unconditional kernels: with tau = 1 and
    # delta = 0 that is Bayes' rule for log p(c | x) / p(c), the unconditional kernel (one Gaussian at
    # D_u) standing for the mixture's; that stand-in makes the error shrink slowly with the step
    # (measured 1.07 nats at 200 steps, 0.46 at 800, 0.24 at 3200).
    coarse, fine = _errors(two_class, 4)[1], _errors(two_class, 1)[1]
    # Tolerance: 4 times fewer steps give at least 1.6 times the error (measured 2.3 times).
    assert fine < coarse / 1.6, (coarse, fine)


def test_stopping_is_cfg_until_the_stop_and_the_conditional_model_after(mixture):
    _, gmm = mixture
    sigmas = geometric_grid(40.0, 0.05, 24)
    leaf = torch.arange(32) % 4
    runs = {}
    for name, den in (("stop", StoppingGuidedDenoiser(gmm.denoiser(), 3.0, 0.9, lambda c: gmm.weights[c])),
                      ("cfg", GuidedDenoiser(gmm.denoiser(), 3.0))):
        g = torch.Generator().manual_seed(7)
        noise = torch.randn(32, gmm.dim, generator=g, dtype=torch.float64) * sigmas[0]
        runs[name] = (den, sample(den, noise, sigmas, method="ancestral", cond=leaf, generator=g))
    den, stop = runs["stop"]
    cfg = runs["cfg"][1]
    assert den.stopped.any()
    for row in range(32):
        k = int(den.guided_steps[row])  # steps 0..k-1 guided; the step from state k is the first unguided
        # Before the stop the same noise gives the same path as guidance everywhere (bitwise).
        assert torch.equal(stop.states[: k + 1, row], cfg.states[: k + 1, row])
        if k + 1 < len(sigmas):
            # From state k: the ancestral step with D_c instead of the guided prediction, same noise, so
            # the two next states differ by (1 - a)(D_c - D_cfg) at state k (exact mixture denoisers).
            s, t = float(sigmas[k]), float(sigmas[k + 1])
            x = stop.states[k, row: row + 1]
            d_c = gmm.denoise(x, s, leaf[row: row + 1])
            d_cfg = gmm.denoise(x, s, None) + 3.0 * (d_c - gmm.denoise(x, s, None))
            # Tolerance: float64 rounding of the two steps' sums (values of size ~10).
            torch.testing.assert_close(stop.states[k + 1, row] - cfg.states[k + 1, row],
                                       ((1 - t**2 / s**2) * (d_c - d_cfg))[0], rtol=1e-9, atol=1e-9)
            assert float(den.stop_sigma[row]) == pytest.approx(s)
    # One unconditional call per guided sample and step, and nothing else.
    assert den.extra_evaluations == int(den.guided_steps.sum())
    assert stop.denoiser_calls == 32 * len(sigmas) + den.extra_evaluations


def test_stopping_inside_an_interval_guides_and_filters_only_there(mixture):
    _, gmm = mixture
    sigmas = geometric_grid(40.0, 0.05, 24)
    inside = int(((sigmas > 1.0) & (sigmas <= 8.0)).sum())
    unconditional_at = []

    def model(x, sigma, cond):  # the exact denoiser, noting the sigmas of unconditional rows
        unconditional_at.extend(torch.as_tensor(sigma).expand(len(x))[cond < 0].tolist())
        return gmm.denoise(x, sigma, cond).to(x.dtype)

    model.sigma_min, model.sigma_max = 0.001, 40.0
    den = StoppingGuidedDenoiser(model, 3.0, 0.999, lambda c: gmm.weights[c], interval=(1.0, 8.0))
    g = torch.Generator().manual_seed(1)
    sample(den, torch.randn(16, gmm.dim, generator=g, dtype=torch.float64) * 40, sigmas, method="ancestral",
           cond=torch.arange(16) % 4, generator=g, record=False)
    assert unconditional_at and all(1.0 < s <= 8.0 for s in unconditional_at)
    assert den.extra_evaluations == len(unconditional_at) == int(den.guided_steps.sum())
    assert bool((den.guided_steps[~den.stopped] == inside).all()) and bool((den.guided_steps <= inside).all())


def test_feedback_guidance_scale_and_parameters_follow_the_paper():
    den = FeedbackGuidedDenoiser(GaussianMixture.two_class(2).denoiser(), pi=0.95, max_scale=10.0, offset=-0.1,
                                 temperature=0.5)
    # lambda = r / (r - (1 - pi)): 1/pi at r = 1; max_scale exactly at the lower clip.
    assert float(den.scale_of(torch.tensor(0.0, dtype=torch.float64))) == pytest.approx(1 / 0.95, rel=1e-12)
    assert float(den.scale_of(torch.tensor(den.min_log_ratio, dtype=torch.float64))) == pytest.approx(10.0, rel=1e-12)
    sigmas = geometric_grid(80.0, 0.02, 40)
    delta, tau = fbg_parameters(sigmas, pi=0.999, t0=0.5, t1=0.25)
    # The drift alone reaches the reference scale 3 after (1 - t0) N = 20 steps.
    assert float(den.scale_of(torch.tensor(20 * delta, dtype=torch.float64)).item()) == pytest.approx(
        (math.exp(20 * delta)) / (math.exp(20 * delta) - 0.05), rel=1e-12)
    r = math.exp(20 * delta)
    assert r / (r - (1 - 0.999)) == pytest.approx(3.0, rel=1e-12)
    # t1 N = 10 falls on a step: the 10th transition from the clean end, from sigmas[29] to sigmas[30].
    s, t = float(sigmas[29]), float(sigmas[30])
    assert tau == pytest.approx(abs(2 * (1 - t**2 / s**2) * t**2 * delta / 10), rel=1e-12)


def test_a_stopping_run_spends_fewer_guided_calls(tmp_path, guidance_runs):
    runner.run(gmm_recipe(tmp_path, "stop", guidance={"scale": 3.0, "stop": {"threshold": 0.9}}), tmp_path / "stop",
               progress=False)
    calls = json.loads((tmp_path / "stop" / "run.json").read_text())["calls"]["guided_denoiser"]
    everywhere = json.loads((guidance_runs / "w3" / "run.json").read_text())["calls"]["guided_denoiser"]
    assert 0 < calls < everywhere


def test_stopping_needs_ancestral_steps(tmp_path):
    path = gmm_recipe(tmp_path, "bad", method="euler", guidance={"scale": 3.0, "stop": {"threshold": 0.9}})
    with pytest.raises(ProbesError) as err:
        runner.run(path, tmp_path / "bad", progress=False)
    assert str(err.value).startswith("sampling.guidance.stop: the stopping filter reads ancestral steps")
    assert not (tmp_path / "bad").exists()
