"""Test-wide setup: offline hubs, the torchvision import fix, and small shared fixtures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

from probes._compat import patch_torchvision  # noqa: E402

patch_torchvision()
