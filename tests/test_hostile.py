"""Hostile input: every case of the table gets one clear line (or runs, where valid); names
either round-trip through every export format or are refused; unexpected errors are one line
with a bug-report hint; a run killed at any point resumes to the same bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_cases import CASES, RECIPE, edit, recipe, run_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probes.errors import ProbesError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_gets_its_expected_outcome(case, tmp_path, one_thread):
    outcome, text = run_case(case, tmp_path)
    assert outcome == case.expect, text


# --- names -----------------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(leaves=st.lists(names, min_size=2, max_size=4, unique=True), group=names)
def test_names_round_trip_through_every_format_or_are_refused(leaves, group, tmp_path):
    from probes.taxonomy import from_nested, read_taxonomy, write_taxonomy

    try:
        tax = from_nested({group: leaves, "other": ["x-leaf", "y-leaf"]}, name="t")
    except ProbesError:
        return  # refused at load time, in one line: fine
    for fmt, suffix in (("json", ".json"), ("graphml", ".graphml"), ("newick", ".nwk")):
        path = tmp_path / f"t{suffix}"
        write_taxonomy(tax, path, fmt=fmt)
        back = read_taxonomy(path)
        assert back.leaves == tax.leaves, fmt
        assert sorted(back.internal_nodes[1:]) == sorted(tax.internal_nodes[1:]), fmt


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=200))
def test_any_taxonomy_text_loads_or_is_one_line(text):
    from probes.taxonomy import parse_yaml_taxonomy

    try:
        parse_yaml_taxonomy(text, source="t.yaml")
    except ProbesError as err:
        assert "\n" not in str(err) and str(err).startswith("t.yaml")


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["samples", "steps", "batch_size", "sigma_min", "sigma_max", "grid",
                                        "method", "source", "condition"]),
                       st.one_of(st.integers(-5, 10**13), st.floats(allow_nan=True), st.text(max_size=5),
                                 st.none(), st.booleans()), max_size=4))
def test_any_sampling_block_validates_or_is_one_line(sampling):
    from probes.recipe import recipe_from_dict

    data = {"taxonomy": "t.yaml", "model": {"kind": "digits"}, "sampling": sampling}
    try:
        r = recipe_from_dict(data, source="r.yaml")
    except ProbesError as err:
        assert "\n" not in str(err) and str(err).startswith("r.yaml: ")
        return
    s = r.sampling
    assert 0 < s.samples <= 10_000_000 and 2 <= s.steps <= 100_000
    assert s.sigma_min is None or s.sigma_max is None or s.sigma_min < s.sigma_max


# --- the command line's last line of defence -------------------------------------------------


def _entry_points(parser, path=()):
    """(argv prefix, parser) for every subcommand that runs something."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _entry_points(sub, path + (name,))
    if parser.get_default("func") is not None:
        yield path, parser


def test_every_command_turns_an_unexpected_exception_into_one_line(monkeypatch, capsys):
    from probes import cli

    def broken(args):
        raise KeyError("surprise\nsecond line")

    original = cli.build_parser
    points = list(_entry_points(original()))
    assert {p for p, _ in points} >= {("run",), ("compare",), ("taxonomy", "show"), ("taxonomy", "export")}
    for path, _ in points:
        def patched(path=path):
            parser = original()
            for p, sub in _entry_points(parser):
                if p == path:
                    sub.set_defaults(func=broken)
            return parser

        monkeypatch.setattr(cli, "build_parser", patched)
        sub = dict(_entry_points(patched()))[path]
        argv = list(path)
        for a in sub._actions:  # fill every required argument with a placeholder
            if a.required and a.nargs in (None, 1, "+"):
                argv += ([a.option_strings[0]] if a.option_strings else []) + ["x"]
        assert cli.main(argv) == 1, path
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "internal error" in err[0] and "report" in err[0] and "--debug" in err[0], path
        with pytest.raises(KeyError):
            cli.main(["--debug", *argv])


def test_error_messages_do_not_reach_the_terminal_raw():
    err = ProbesError("name 'a\x1b[31mred' is bad\x07")
    assert "\x1b" not in str(err) and "\x07" not in str(err) and "\\x1b" in str(err)


# --- NaN from the model, whatever consumes it ------------------------------------------------


def test_nan_inside_immse_stops_the_run_naming_sigma(tmp_path, monkeypatch, one_thread):
    import probes.runner as runner
    from probes.denoisers.base import FiniteCheck

    build = runner.build

    def poisoned(plan):
        ctx = build(plan)
        inner = ctx.denoiser

        def denoise(x, sigma, cond=None):
            y = inner(x, sigma, cond)
            return y * float("nan") if cond is not None else y  # only the conditional calls immse makes

        return ctx.replace(denoiser=FiniteCheck(denoise))

    monkeypatch.setattr(runner, "build", poisoned)
    text = edit(RECIPE, "estimators: [exact]", "estimators: [immse]").replace("classifier: {kind: exact}\n", "")
    with pytest.raises(ProbesError, match=r"returned NaN/inf at sigma=\d"):
        runner.run(recipe(tmp_path, text), tmp_path / "out", progress=False)


def test_nan_is_named_at_the_sigma_whose_prediction_made_it(tmp_path, monkeypatch, one_thread):
    import probes.runner as runner
    from probes.denoisers.base import FiniteCheck

    build, seen = runner.build, []

    def poisoned(plan):
        ctx = build(plan)
        inner = ctx.guided_denoiser

        def denoise(x, sigma, cond=None):
            seen.append(float(sigma if not hasattr(sigma, "reshape") else sigma.reshape(-1)[0]))
            y = inner(x, sigma, cond)
            return y * float("nan") if len(seen) == 3 else y

        return ctx.replace(guided_denoiser=FiniteCheck(denoise))

    monkeypatch.setattr(runner, "build", poisoned)
    text = edit(RECIPE, "source: data", "source: model")
    with pytest.raises(ProbesError) as info:
        runner.run(recipe(tmp_path, text), tmp_path / "out", progress=False)
    assert f"sigma={seen[2]:.4g}" in str(info.value)


# --- resuming --------------------------------------------------------------------------------


def _outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in ("curves.csv", "decisions.csv", "tree.json", "tree.nwk",
                                                         "tree.graphml")}


def test_a_grown_run_equals_a_fresh_run_of_the_new_size(tmp_path, one_thread):
    import probes.runner as runner

    small = recipe(tmp_path, edit(RECIPE, "samples: 16, batch_size: 8", "samples: 20, batch_size: 8"), name="a.yaml")
    runner.run(small, tmp_path / "grown", progress=False)
    big = recipe(tmp_path, edit(RECIPE, "samples: 16, batch_size: 8", "samples: 32, batch_size: 8"), name="b.yaml")
    runner.run(big, tmp_path / "grown", progress=False, resume=True)
    runner.run(big, tmp_path / "fresh", progress=False)
    assert _outputs(tmp_path / "grown") == _outputs(tmp_path / "fresh")


KILL_RECIPE = edit(edit(RECIPE, "samples: 16, batch_size: 8, steps: 8", "samples: 48, batch_size: 6, steps: 24"),
                   "estimators: [exact]", "estimators: [exact, bayes]")


@pytest.mark.slow
def test_sigkill_at_any_point_then_resume_gives_the_same_bytes(tmp_path, one_thread):
    """A subprocess killed with SIGKILL (no handler runs) while sampling, while writing batches and
    while analysing; each resumed run must equal an uninterrupted one byte for byte."""
    import probes.runner as runner

    path = recipe(tmp_path, KILL_RECIPE)
    runner.run(path, tmp_path / "reference", progress=False)
    reference = _outputs(tmp_path / "reference")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    for when in (0, 3, 8):  # batch files present when the kill lands; 8 = all done, analysing
        out = tmp_path / f"killed-{when}"
        proc = subprocess.Popen([sys.executable, "-m", "probes.cli", "run", path, "--out", str(out), "--quiet"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            done = len(list((out / "batches").glob("batch_*.safetensors"))) if (out / "batches").is_dir() else -1
            if done >= when and (out / ".probes-run").exists():
                break
            time.sleep(0.005)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        resumed = runner.run(path, out, progress=False, resume=True)
        assert resumed.record["status"] == "complete"
        assert _outputs(out) == reference, f"killed with {when} batches done (killed={killed})"
