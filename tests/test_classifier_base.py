"""The classifier base: native classes gathered onto leaves, temperature, calibration."""

import torch
from tolerances import F32

from probes.classifiers.base import Classifier
from probes.models.gmm import GaussianMixture


class Fixed(Classifier):
    def __init__(self, logits, **kw):
        super().__init__(**kw)
        self._logits = logits

    def logits(self, x):
        return self._logits


def test_groups_gather_mass_and_leave_uncovered_classes_outside():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    clf = Fixed(logits, leaves=["a", "b"], groups=[[0, 1], [3]])  # class 2 belongs to no leaf
    p = clf(torch.zeros(1)).exp()
    # exact: leaf mass is the sum of its classes' probabilities; 0.3 stays outside the taxonomy
    # float32 logs, softmax and sums of probabilities: 8 float32 units
    torch.testing.assert_close(p, torch.tensor([[0.3, 0.4]]), rtol=0, atol=8 * F32)


def test_calibration_recovers_the_temperature_of_an_exact_posterior():
    """The mixture's clean posterior is calibrated by construction: after spoiling it with
    temperature 3, fitting on 4000 labelled samples brings it back to 1 within 0.1 (the NLL's
    curvature at this sample size gives a standard error of a few hundredths)."""
    gmm = GaussianMixture.two_class(dim=4, mean_norm_sq_per_dim=0.25, std=1.0)
    x, y = gmm.sample(4000, generator=torch.Generator().manual_seed(0))
    clf = gmm.classifier()
    clf.temperature = 3.0
    assert abs(clf.calibrate(x, y) - 1.0) < 0.1
    assert abs(clf.temperature - 1.0) < 0.1
