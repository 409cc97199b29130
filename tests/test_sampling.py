"""Samplers and forward paths against a single Gaussian, where every answer is closed form.

Data ``x0 ~ N(m, s0^2 I)``: ``D(x; sigma) = m + s0^2 / (s0^2 + sigma^2) (x - m)`` and the
probability-flow ODE maps ``x_T`` at ``sigma_max`` to ``m + s0 / sqrt(s0^2 + sigma_max^2) (x_T - m)``.
"""

import itertools
import math

import pytest
import torch
from tolerances import magnitude

from probes.errors import ProbesError
from probes.models.gmm import GaussianMixture
from probes.noise import geometric_grid, karras_grid
from probes.sampling import METHODS, forward_path, sample, sample_from

M = torch.tensor([1.0, -2.0], dtype=torch.float64)
S0 = 0.5
SIGMA_MAX = 80.0


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gauss():
    return GaussianMixture(M[None], S0).denoiser()


def start(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return SIGMA_MAX * torch.randn(n, 2, generator=gen, dtype=torch.float64)


def ode_solution(x_t):
    return M + S0 / math.sqrt(S0**2 + SIGMA_MAX**2) * (x_t - M)


def ode_error(gauss, method, steps):
    x_t = start(64)
    traj = sample(gauss, x_t, karras_grid(SIGMA_MAX, 0.002, steps), method=method)
    return float((traj.x0 - ode_solution(x_t)).abs().max())


def test_euler_and_heun_converge_to_the_ode_solution(gauss):
    # Euler is first order, Heun second: doubling the steps halves / quarters the error. The
    # bounds leave 25% slack on the measured factors (1.97-1.99 and 4.2-4.6); measured errors at
    # 64 Karras steps: Euler 0.070, Heun 0.0058 (12x smaller).
    euler = [ode_error(gauss, "euler", n) for n in (16, 32, 64)]
    heun = [ode_error(gauss, "heun", n) for n in (16, 32, 64)]
    assert euler[0] > 1.5 * euler[1] > 2.25 * euler[2]
    assert heun[0] > 3 * heun[1] > 9 * heun[2]
    assert heun[2] < 0.15 * euler[2]
    assert heun[2] < 0.01  # s0 = 0.5: 2% of the data scale


def test_ddim_equals_euler(gauss):
    grid = geometric_grid(SIGMA_MAX, 0.01, 20)
    a = sample(gauss, start(16), grid, method="euler")
    b = sample(gauss, start(16), grid, method="ddim")
    # two float64 forms of one step, 20 times: 1e-12 of the states' magnitude (up to ~300 here)
    tol = 1e-12 * magnitude(a.states)
    torch.testing.assert_close(a.states, b.states, rtol=1e-12, atol=tol)
    torch.testing.assert_close(a.x0, b.x0, rtol=1e-12, atol=tol)
    # and both are the Euler step of dx/dsigma = (x - D) / sigma
    s, t = float(grid[0]), float(grid[1])
    x = a.states[0]
    torch.testing.assert_close(a.states[1], x + (t - s) * (x - gauss(x, s)) / s, rtol=0, atol=tol)


def discrete_variance(method, grid):
    """Per-coordinate variance of x0 after sampling the Gaussian on ``grid``: the samplers are
    linear here, so the variance follows a scalar recursion (``ancestral`` misses the posterior
    variance term and under-disperses; ``euler_maruyama`` over-disperses; both converge)."""
    v = SIGMA_MAX**2
    sig = grid.tolist() + [0.0]
    for s, t in itertools.pairwise(sig):
        c = S0**2 / (S0**2 + s**2)  # D - m = c (x - m)
        if t == 0:
            v *= c**2
        elif method == "ancestral":
            a = t**2 / s**2
            v = (a + (1 - a) * c) ** 2 * v + (1 - a) * t**2
        else:
            v = (1 + (1 - t**2 / s**2) * (c - 1)) ** 2 * v + (s**2 - t**2)
    return v


@pytest.mark.parametrize("method", ["ancestral", "euler_maruyama"])
def test_stochastic_samplers_hit_mean_and_variance(gauss, method):
    # The discrete chain's variance is known exactly (recursion above); at 100 geometric steps it is
    # 0.90 s0^2 (ancestral) / 1.12 s0^2 (euler_maruyama), and it tends to s0^2 as steps grow.
    # n = 20000 in 2-D: the sample variance has relative stderr sqrt(2/n) = 1%; bound at 4%.
    n = 20000
    grid = geometric_grid(SIGMA_MAX, 0.002, 100)
    traj = sample(gauss, start(n), grid, method=method, generator=torch.Generator().manual_seed(1), record=False)
    assert traj.states is None and traj.denoised is None
    # the mean within 4 of its standard errors, std / sqrt(n), from the samples themselves
    torch.testing.assert_close(traj.x0.mean(0), M, rtol=0, atol=4 * float(traj.x0.std(0).max()) / math.sqrt(n))
    var = traj.x0.var(0)
    assert ((var / discrete_variance(method, grid) - 1).abs() < 0.04).all(), var
    errors = [abs(discrete_variance(method, geometric_grid(SIGMA_MAX, 0.002, k)) / S0**2 - 1) for k in (100, 400, 1600)]
    assert errors[0] > 3 * errors[1] > 9 * errors[2] and errors[2] < 0.01


@pytest.mark.parametrize("method", ["ancestral", "euler_maruyama"])
def test_stochastic_samplers_reproduce_with_a_seed(gauss, method):
    grid = geometric_grid(SIGMA_MAX, 0.01, 10)

    def run(seed):
        return sample(gauss, start(8), grid, method=method, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a.states, b.states) and torch.equal(a.x0, b.x0)
    assert not torch.equal(a.x0, c.x0)


def test_trajectory_records_denoised_states_and_counts_calls(gauss):
    grid = geometric_grid(SIGMA_MAX, 0.01, 12)
    for method in METHODS:
        traj = sample(gauss, start(5), grid, method=method, generator=torch.Generator().manual_seed(0))
        assert traj.states.shape == traj.denoised.shape == (12, 5, 2)
        assert torch.equal(traj.states[0], start(5))
        # the same float64 call again, and the same numbers: 1e-12 of the states' magnitude
        tol = 1e-12 * magnitude(traj.states)
        torch.testing.assert_close(traj.denoised[4], gauss(traj.states[4], float(grid[4])), rtol=0, atol=tol)
        # heun: one extra call per step except the Euler step to sigma = 0
        assert traj.denoiser_calls == (2 * 12 - 1 if method == "heun" else 12) * 5
        assert traj.method == method
        # the last step of every method lands on D(x_last)
        torch.testing.assert_close(traj.x0, traj.denoised[-1], rtol=0, atol=tol)


def test_recording_states_only_keeps_the_same_states(gauss):
    grid = geometric_grid(SIGMA_MAX, 0.01, 12)
    full = sample(gauss, start(5), grid, method="ancestral", generator=torch.Generator().manual_seed(0))
    lean = sample(gauss, start(5), grid, method="ancestral", generator=torch.Generator().manual_seed(0),
                  record="states")
    assert lean.denoised is None and torch.equal(lean.states, full.states) and torch.equal(lean.x0, full.x0)
    with pytest.raises(ProbesError, match="record must be"):
        sample(gauss, start(5), grid, record="denoised")


def test_sample_from_completes_a_trajectory(gauss):
    grid = geometric_grid(SIGMA_MAX, 0.01, 15)
    traj = sample(gauss, start(6), grid, method="heun")
    # the same float64 steps from the same state: 1e-12 of the states' magnitude
    torch.testing.assert_close(sample_from(gauss, traj.states[7], grid[7:], "heun"), traj.x0, rtol=0,
                               atol=1e-12 * magnitude(traj.states))


def test_progress_callable_and_cond_are_passed(gauss):
    seen = []
    sample(gauss, start(2), geometric_grid(SIGMA_MAX, 0.01, 5), progress=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(1, 6)]

    calls = []

    def spy(x, sigma, cond=None):
        calls.append(cond)
        return gauss(x, sigma)

    leaf = torch.tensor([0, 0])
    traj = sample(spy, start(2), geometric_grid(SIGMA_MAX, 0.01, 3), cond="c", leaf=leaf)
    assert calls == ["c"] * 3 and traj.cond == "c" and torch.equal(traj.leaf, leaf)


def test_unknown_method_names_the_valid_ones(gauss):
    with pytest.raises(ProbesError, match="'bogus'.*euler, heun, ddim, ancestral, euler_maruyama"):
        sample(gauss, start(2), geometric_grid(SIGMA_MAX, 0.01, 5), method="bogus")


def test_forward_path_marginals_and_brownian_increments():
    # n = 20000: variance stderr ~1% relative, correlation stderr ~0.007; bounds at ~4-5 stderr.
    n = 20000
    gen = torch.Generator().manual_seed(0)
    x0 = M + S0 * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    grid = geometric_grid(20.0, 0.02, 8)
    path = forward_path(x0, grid, gen, leaf=torch.zeros(n, dtype=torch.long))
    assert path.method == "forward" and path.denoised is None and path.denoiser_calls == 0
    assert torch.equal(path.x0, x0) and path.states.shape == (8, n, 2)
    expected = S0**2 + grid**2
    var = path.states.var(1)  # [S, 2]
    assert ((var / expected[:, None] - 1).abs() < 0.05).all()
    torch.testing.assert_close((path.states[-1] - x0).std(), torch.tensor(0.02, dtype=torch.float64), rtol=0.05, atol=0)
    # increments going up are independent of the state below them
    inc, below = path.states[2] - path.states[3], path.states[3]
    corr = torch.corrcoef(torch.stack([inc[:, 0], below[:, 0]]))[0, 1]
    assert abs(corr) < 0.03
    torch.testing.assert_close(inc.var(0), (grid[2] ** 2 - grid[3] ** 2).expand(2), rtol=0.05, atol=0)


def test_forward_path_rejects_ascending_grid():
    with pytest.raises(ProbesError, match="descending"):
        forward_path(torch.zeros(3, 2), torch.tensor([0.1, 1.0]))


def test_a_guided_step_costs_two_denoiser_calls():
    from probes.denoisers.base import Denoiser, GuidedDenoiser

    class Calls(Denoiser):
        """Counts the samples it is evaluated on (the truth the sampler's count must match)."""

        def __init__(self):
            super().__init__()
            self.seen = 0

        def forward(self, x, sigma, cond=None):
            self.seen += x.shape[0]
            return 0.5 * x

    sigmas = geometric_grid(10.0, 0.1, 12)
    cond = torch.zeros(5, dtype=torch.long)
    for interval, guided_steps in [(None, 12), ((0.5, 3.0), int(((sigmas > 0.5) & (sigmas <= 3.0)).sum()))]:
        inner = Calls()
        guided = GuidedDenoiser(inner, scale=3.0, interval=interval)
        traj = sample(guided, torch.randn(5, 2) * 10, sigmas, method="euler", cond=cond)
        assert 0 < guided_steps <= 12
        assert traj.denoiser_calls == inner.seen == 5 * (12 + guided_steps)
        assert guided.extra_evaluations == 5 * guided_steps
