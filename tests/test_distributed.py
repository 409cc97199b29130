"""Sharded runs: torchrun with several CPU processes (gloo) gives the bytes of a one-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_cases import RECIPE, edit, recipe

REPO = Path(__file__).resolve().parents[1]
SHARD_RECIPE = edit(RECIPE, "samples: 16, batch_size: 8, steps: 8", "samples: 20, batch_size: 4, steps: 12")
FILES = ("curves.csv", "decisions.csv", "tree.json", "tree.graphml", "tree.nwk")


def torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "probes.cli", "run", *args, "--quiet"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_processes_give_the_bytes_of_one(tmp_path, one_thread):
    from probes.run import run_recipe

    path = recipe(tmp_path, SHARD_RECIPE)
    run_recipe(path, tmp_path / "one", progress=False)
    proc = torchrun(2, path, "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in FILES:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name

    # More processes than batches: the idle ranks wait, and it says so.
    few = recipe(tmp_path, edit(SHARD_RECIPE, "samples: 20", "samples: 8"), name="few.yaml")
    proc = torchrun(3, few, "--out", str(tmp_path / "few"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "will wait idle" in proc.stderr


@pytest.mark.slow
def test_resume_with_another_process_count_loses_nothing(tmp_path, one_thread):
    from probes.run import run_recipe

    path = recipe(tmp_path, SHARD_RECIPE)
    run_recipe(path, tmp_path / "one", progress=False)
    run_recipe(path, tmp_path / "mixed", progress=False, stop_after_batches=2)  # 2 of 5 batches, one process
    proc = torchrun(2, path, "--out", str(tmp_path / "mixed"), "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "started with 1 process(es) on 2" in proc.stderr
    for name in FILES:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "mixed" / name).read_bytes(), name
