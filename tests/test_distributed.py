"""Sharded runs: torchrun with several CPU processes (gloo) gives the bytes of a one-process run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
    import probes.runner as runner

    path = recipe(tmp_path, SHARD_RECIPE)
    runner.run(path, tmp_path / "one", progress=False)
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
    import probes.runner as runner

    path = recipe(tmp_path, SHARD_RECIPE)
    runner.run(path, tmp_path / "one", progress=False)
    runner.run(path, tmp_path / "mixed", progress=False, stop_after_batches=2)  # 2 of 5 batches, one process
    proc = torchrun(2, path, "--out", str(tmp_path / "mixed"), "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "started with 1 process(es) on 2" in proc.stderr
    for name in FILES:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "mixed" / name).read_bytes(), name


def _workers(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the processes torchrun started (its children that carry a RANK)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != launcher_pid:
                continue
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in kv)
        except (OSError, IndexError, ValueError):
            continue  # the process ended meanwhile
        if "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's workers through /proc")
def test_a_killed_rank_loses_no_finished_batch(tmp_path, one_thread):
    import probes.runner as runner

    # Slow batches (2000 ancestral steps), so that rank 1 is killed with work left on both ranks.
    slow = edit(edit(RECIPE, "samples: 16, batch_size: 8, steps: 8", "samples: 40, batch_size: 4, steps: 2000"),
                "source: data", "source: model, method: ancestral")
    path = recipe(tmp_path, slow)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "probes.cli", "run", path, "--out", str(out), "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "batches").glob("batch_00001.*")) and proc.poll() is None:  # rank 1's first batch
            assert time.monotonic() < deadline, "rank 1 wrote no batch in 2 minutes"
            time.sleep(0.02)
        os.kill(_workers(proc.pid)[1], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    # The surviving rank says, in one line, what is kept and how to go on (torchrun adds its own report).
    ours = [line for line in stderr.splitlines() if line.startswith("probes: error:")]
    assert len(ours) == 1 and "process 0 of 2" in ours[0] and "--resume" in ours[0], stderr[-2000:]
    kept = sorted(p.name for p in (out / "batches").glob("batch_*.safetensors"))
    assert "batch_00001.safetensors" in kept and len(kept) < 10
    assert f"{len(kept)} of 10 batches are finished" in ours[0]

    # Resumed by one process: only the missing batches are computed, and the bytes are a clean run's.
    runner.run(path, tmp_path / "one", progress=False)
    before = {name: (out / "batches" / name).stat().st_mtime_ns for name in kept}
    runner.run(path, out, resume=True, progress=False)
    assert all((out / "batches" / name).stat().st_mtime_ns == t for name, t in before.items())
    for name in FILES:
        assert (tmp_path / "one" / name).read_bytes() == (out / name).read_bytes(), name
