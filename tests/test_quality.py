"""Sample quality: the Frechet distance against closed forms, accuracy on known cases, guidance calls."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import yaml
from tolerances import F32, magnitude

import probes.runner as runner
from probes.denoisers import Denoiser, GuidedDenoiser
from probes.quality import conditional_accuracy, frechet_distance, frechet_distance_of_features
from probes.taxonomy import load_taxonomy

ROOT = Path(__file__).resolve().parents[1]


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_distance_matches_the_sqrtm_formula_for_random_gaussians():
    rng = np.random.default_rng(0)
    for d in (1, 3, 7):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        c1, c2 = _spd(rng, d), _spd(rng, d)
        # Independent reference: the textbook form with the (non-symmetric) root of C1 C2.
        cross = scipy.linalg.sqrtm(c1 @ c2).real
        expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * cross)
        # Tolerance: both are double-precision eigen/Schur computations of well-conditioned matrices:
        # relative 1e-8, and 1e-9 of the traces the distance is a difference of
        assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-8,
                                                                   abs=1e-9 * magnitude(np.trace(c1 + c2)))


def test_frechet_distance_of_diagonal_gaussians_is_the_sum_of_root_variance_gaps():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1.0 + 4.0 + (1 - 3) ** 2 + (2 - 1) ** 2  # |dmu|^2 + sum (sqrt a - sqrt b)^2
    # float64 eigen-decompositions of diagonal matrices: relative 1e-12, and for a distance of 0, 1e-12
    # of the traces it is a difference of
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-12 * magnitude(2 * a.sum()))


def test_frechet_distance_of_samples_converges_to_the_gaussians_distance():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    a = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0])
    b = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0]) + torch.tensor([1.0, 0.0])
    exact = 1.0 + (1 - 3) ** 2 + (2 - 1) ** 2
    # Tolerance: 4 standard errors of the estimate, by the delta method on the independent coordinates
    # (each mean to sqrt(v / n), each root variance to sqrt(v / 2n)): about 0.1 here, 1.7% of the distance.
    va, vb, dmu = a.var(0), b.var(0), a.mean(0) - b.mean(0)
    se = float(((4 * dmu**2 + 2 * (va.sqrt() - vb.sqrt()) ** 2) * (va + vb) / n).sum().sqrt())
    assert frechet_distance_of_features(a, b) == pytest.approx(exact, abs=4 * se)


def test_conditional_accuracy_per_level_on_a_known_case():
    tax = load_taxonomy(str(ROOT / "taxonomies" / "digits-shape.yaml"))
    leaves = tax.leaves
    idx = {leaf: i for i, leaf in enumerate(leaves)}
    # Conditioned on 0, 0, 6, 1; the classifier says 0 (right), 8 (same 'closed' cell), 2 (another
    # top-level cell), 1 (right).
    cond = torch.tensor([idx["0"], idx["0"], idx["6"], idx["1"]])
    said = ["0", "8", "2", "1"]
    log_probs = torch.full((4, len(leaves)), -20.0)
    for row, leaf in enumerate(said):
        log_probs[row, idx[leaf]] = 0.0
    log_probs = log_probs.log_softmax(-1)
    acc = conditional_accuracy(log_probs, cond, tax)
    assert acc == {1: 0.75, 2: 0.75, 3: 0.5}


def test_cell_accuracy_sums_leaf_mass_before_the_argmax():
    tax = load_taxonomy(str(ROOT / "taxonomies" / "digits-shape.yaml"))
    idx = {leaf: i for i, leaf in enumerate(tax.leaves)}
    p = torch.zeros(len(tax.leaves))
    p[idx["1"]] = 0.4  # the top leaf is straight, but the three curvy leaves together outweigh it
    p[[idx["2"], idx["3"], idx["5"]]] = 0.2
    acc = conditional_accuracy(p.log()[None], torch.tensor([idx["3"]]), tax)
    assert acc[1] == 1.0 and acc[3] == 0.0


class Counting(Denoiser):
    def __init__(self):
        super().__init__()
        self.evaluations = 0

    def forward(self, x, sigma, cond=None):
        self.evaluations += x.shape[0]
        if cond is None:
            return torch.zeros_like(x)
        # Per-sample conditioning (a list): None rows are the unconditional branch.
        return torch.tensor([0.0 if c is None else 1.0 for c in cond])[:, None].expand_as(x).clone()


def test_guidance_outside_its_interval_costs_no_extra_call():
    inner = Counting()
    guided = GuidedDenoiser(inner, scale=3.0, interval=(0.5, 2.0))
    x = torch.zeros(4, 2)
    cond = [1, 1, 1, 1]  # prompt-like list conditioning
    out_in = guided(x, 1.0, cond)
    assert inner.evaluations == 8 and guided.extra_evaluations == 4
    # 0 + 3 (1 - 0): small integers, exact in float32 up to a rounding of the magnitude 3
    assert torch.allclose(out_in, torch.full_like(x, 3.0), rtol=0, atol=4 * F32 * 3.0)
    out_out = guided(x, 5.0, cond)
    assert inner.evaluations == 12 and guided.extra_evaluations == 4
    assert torch.allclose(out_out, torch.ones_like(x), rtol=0, atol=4 * F32)  # the conditional model alone


def test_a_guided_mixture_run_reports_quality_and_guided_calls(tmp_path):
    recipe = {
        "name": "gmm-quality", "seed": 1, "taxonomy": str(ROOT / "taxonomies" / "gmm-two-by-two.yaml"),
        "model": {"kind": "gmm", "dim": 2, "std": 0.5, "hierarchy": {"separations": [6.0, 2.0], "axis_aligned": True,
                                                                      "share_level_axes": True}},
        "classifier": {"kind": "exact"},
        "sampling": {"samples": 64, "batch_size": 32, "steps": 16, "sigma_max": 40.0, "sigma_min": 0.05,
                     "condition": "leaf", "guidance": {"scale": 2.0, "interval": [0.3, 3.0]}},
        "estimators": ["exact"], "analysis": {"n_boot": 0},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    runner.run(path, tmp_path / "run", progress=False)
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    sigmas = torch.tensor(state["sigmas"])
    inside = int(((sigmas > 0.3) & (sigmas <= 3.0)).sum())
    assert state["calls"]["guided_denoiser"] == 64 * inside  # ancestral: one evaluation per step
    assert state["calls"]["sampling_denoiser"] == 64 * 16 + 64 * inside
    q = state["quality"]
    assert set(q["conditional_accuracy"]) == {"1", "2"}
    assert q["conditional_accuracy_leaf"] == q["conditional_accuracy"]["2"]
    assert 0.9 <= q["conditional_accuracy"]["1"] <= 1.0  # coarse means 6 apart, std 0.5: separable
    assert q["frechet_distance"] >= 0 and q["frechet_reference_n"] == 4096
    assert (tmp_path / "run" / "samples.csv").read_text().count("\n") == 65


def test_a_reference_folder_gives_the_features_of_its_images(tmp_path):
    from PIL import Image

    from probes.build import build
    from probes.models.digits import load_digits_split
    from probes.plan import resolve
    from probes.recipe import recipe_from_dict
    from probes.runner import reference_features

    x, _ = load_digits_split("test")
    folder = tmp_path / "reference"
    folder.mkdir()
    for i, img in enumerate(x[:120]):
        grey = ((img[0].numpy() + 1) * 127.5).round().astype("uint8")
        Image.fromarray(grey).convert("RGB").save(folder / f"{i:03d}.png")
    data = {"taxonomy": str(ROOT / "taxonomies" / "digits-shape.yaml"), "model": {"kind": "digits"},
            "classifier": {"kind": "digits"}, "quality": {"reference": str(folder)}, "device": "cpu"}
    plan = resolve(recipe_from_dict(data))
    parts = build(plan)
    from_folder = reference_features(plan, parts)
    direct = reference_features(resolve(recipe_from_dict({**data, "quality": {}})), parts)[:120]
    # The PNGs hold the same digits up to 8-bit rounding (at most 0.004 in [-1, 1] units, 0.2% of the
    # range): the features move by a like fraction of their magnitude (measured 2e-3; allowed 5e-3),
    # and the distance between the sets, a square, by ~1e-6 of the features' total variance (measured
    # 8e-7; allowed 1e-5).
    assert from_folder.shape == direct.shape
    assert torch.allclose(from_folder, direct, rtol=0, atol=5e-3 * magnitude(direct))
    total_variance = float(torch.cov(direct.T.double()).trace())
    assert frechet_distance_of_features(from_folder, direct) < 1e-5 * total_variance


def test_a_reference_that_is_not_a_folder_is_one_line(tmp_path):
    from probes.errors import ProbesError
    from probes.quality import load_image_folder

    with pytest.raises(ProbesError, match="quality.reference"):
        load_image_folder(tmp_path / "missing")
