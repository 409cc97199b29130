"""Test-wide setup: offline hubs, the torchvision import fix, and small shared fixtures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch

from probes._compat import patch_torchvision

patch_torchvision()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for modules of many small tensor operations: intra-op threads only add
    contention there (measured 100x slower per call with 2 threads on a loaded 2-core machine)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def guidance_runs(tmp_path_factory):
    """Two finished runs of one leaf-conditional mixture recipe, ``w1`` (guidance 1) and ``w3``
    (guidance 3), in one folder (see ``tests/gmm_runs.py``)."""
    from gmm_runs import guidance_pair

    return guidance_pair(tmp_path_factory.mktemp("guidance"))
