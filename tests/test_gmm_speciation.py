"""The speciation experiment (experiments/speciation.py) runs and agrees with the closed forms."""

import csv
import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "speciation.py"


@pytest.fixture(scope="module")
def speciation():
    spec = importlib.util.spec_from_file_location("speciation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speciation_experiment_small(speciation, tmp_path):
    summary = speciation.run([64, 1024], samples=1000, out=tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"curves.csv", "summary.csv", "rate.png"}
    with open(tmp_path / "curves.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 * len(speciation.OFFSETS)
    r2_peak = 1.50833  # test_gmm.py::test_rate_peak_r2 pins this number
    for row in summary:
        d = row["dim"]
        # Closed forms with |m|^2 = d, s0 = 1: t_S = 0.5 log(1 + d); t = log s, so the peak is at
        # s^2 = d / 1.508. The grid step is 0.01 in t and the peak is refined by a parabola: 2e-3.
        assert abs(row["t_S"] - 0.5 * math.log1p(d)) < 1e-12 * row["t_S"]  # float64: relative 1e-12
        assert abs(row["t_peak_theory"] - 0.5 * math.log(d / r2_peak)) < 2e-3
        # Monte Carlo (1000 samples, common noise along each curve) tracks the theory: the curve to
        # 5 SE at every grid point (401 correlated points), the peak to 0.15 in t.
        assert row["max_abs_H_error"] < 5 * row["max_H_se"]
        assert abs(row["t_peak_mc"] - row["t_peak_theory"]) < 0.15
    # The window width in t does not depend on d (it is a function of r alone): equal to 1e-3.
    assert abs(summary[0]["width_theory"] - summary[1]["width_theory"]) < 1e-3
