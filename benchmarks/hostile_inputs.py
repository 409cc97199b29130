"""Counts of outcomes over the hostile-input table (tests/hostile_cases.py).

    python benchmarks/hostile_inputs.py            # counts per outcome and per family
    python benchmarks/hostile_inputs.py --list     # one line per case with its outcome

Every case should be ``clear`` (one ``probes: error:`` line naming the file, field or flag) or, for
valid inputs, ``ok``; ``traceback``, ``silent``, ``hang``, ``data-loss`` and ``vague`` (an error
that does not name what is wrong) are failures.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hostile_cases import CASES, run_case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print every case's outcome")
    parser.add_argument("--isolate", action="store_true",
                        help="run each case in its own process (survives inputs that crash the interpreter)")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # one case, outcome as JSON (--isolate)
    args = parser.parse_args()
    import resource

    import torch

    # Inputs that eat memory must fail as MemoryError ("hang"), not take the machine down.
    limit = 8 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))

    torch.set_num_threads(1)
    if args.case is not None:
        with tempfile.TemporaryDirectory() as tmp:
            outcome, text = run_case(CASES[args.case], Path(tmp))
        print("\n" + json.dumps([outcome, text[-500:]]))
        return 0
    counts, by_family, failures = collections.Counter(), collections.defaultdict(collections.Counter), []
    for index, case in enumerate(CASES):
        if args.isolate:
            outcome, text = _isolated(index, case)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                outcome, text = run_case(case, Path(tmp))
        good = outcome == case.expect
        counts[outcome] += 1
        by_family[case.family][outcome] += 1
        if not good:
            failures.append((case, outcome, text.strip().splitlines()[-1:] or [""]))
        if args.list:
            print(f"{'ok ' if good else 'BAD'} {outcome:10s} {case.family:9s} {case.name}")
    print(f"{len(CASES)} hostile inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for family, c in by_family.items():
        print(f"  {family:9s} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    for case, outcome, last in failures:
        print(f"unexpected {outcome}: {case.name}: {last[0][:200]}")
    return 1 if failures else 0


def _isolated(index: int, case) -> tuple[str, str]:
    try:
        proc = subprocess.run([sys.executable, __file__, "--case", str(index)], capture_output=True, text=True,
                              timeout=case.timeout + 120)
    except subprocess.TimeoutExpired:
        return "hang", ""
    try:
        outcome, text = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):  # the interpreter died: memory, or a crash
        return ("hang" if proc.returncode in (-9, 137) else "traceback"), proc.stderr[-500:]
    return outcome, text


if __name__ == "__main__":
    sys.exit(main())
