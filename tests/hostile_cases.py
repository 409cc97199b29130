"""A table of hostile inputs for the ``probes`` command, and the runner that classifies outcomes.

Each case builds its files in a fresh folder, runs one CLI command in-process (or, family ``api``, one
call of the Python API, whose ProbesError counts as the one line) and is classified:

* ``clear``: exit status 2 and exactly one ``probes: error: ...`` line (what the docs promise);
* ``ok``: exit status 0 (for valid inputs, e.g. names YAML 1.1 would have mangled);
* ``traceback``: an exception escaped, or the CLI reported an internal error (a bug);
* ``silent``: exit status 0 where the input is invalid;
* ``hang``: still running after the case's time limit;
* ``data-loss``: the case's check found finished work or a user's file destroyed, or code ran.

Used by ``tests/test_hostile.py`` (every case must get its expected outcome) and by
``benchmarks/hostile_inputs.py`` (counts per outcome).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import stat
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TAXONOMY = "tree:\n  left: [a, b]\n  right: [c, d]\n"
RECIPE = textwrap.dedent("""\
    name: tiny
    seed: 0
    taxonomy: tax.yaml
    model:
      kind: gmm
      dim: 3
      std: 0.5
      hierarchy: {separations: [3.0, 1.0], axis_aligned: true}
    classifier: {kind: exact}
    sampling: {samples: 16, batch_size: 8, steps: 8, sigma_max: 20.0, sigma_min: 0.05, source: data}
    estimators: [exact]
    analysis: {n_boot: 10}
""")


@dataclass
class Case:
    name: str
    family: str
    # builds files under the folder, returns the CLI arguments (or, for the Python API, a function to call)
    argv: Callable[[Path], list[str] | Callable[[], object]]
    expect: str = "clear"  # or "ok"
    check: Callable[[Path], bool] | None = None  # True when nothing was lost and no code ran
    timeout: int = 60
    needle: str | None = None  # a word the one-line error must contain (names the file/field/flag)
    tags: tuple = field(default_factory=tuple)


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def recipe(folder: Path, text: str = RECIPE, taxonomy: str = TAXONOMY, name: str = "recipe.yaml") -> str:
    write(folder, "tax.yaml", taxonomy)
    return str(write(folder, name, text))


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


def finished_run(folder: Path) -> Path:
    """A finished run in ``folder/run`` (made with the valid recipe)."""
    from probes.cli import main

    out = folder / "run"
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", recipe(folder), "--out", str(out), "--quiet"]) == 0
    return out


def unfinished_run(folder: Path, batches: int = 1) -> Path:
    import probes.runner as runner

    out = folder / "run"
    with contextlib.redirect_stderr(io.StringIO()):
        runner.run(recipe(folder), out, progress=False, stop_after_batches=batches)
    return out


def kept(path_and_text: tuple[Path, str]) -> Callable[[Path], bool]:
    path, text = path_and_text
    return lambda folder: (folder / path).is_file() and (folder / path).read_text() == text


def run_kept(folder: Path) -> bool:
    return (folder / "run" / "run.json").is_file() and (folder / "run" / "curves.csv").is_file()


# --- the table ---------------------------------------------------------------------------------


def _taxonomy_show(text: str | bytes, name: str = "t.yaml"):
    return lambda f: ["taxonomy", "show", str(write(f, name, text))]


def _run_with(text: str, *flags: str, taxonomy: str = TAXONOMY):
    return lambda f: ["run", recipe(f, text, taxonomy), "--out", str(f / "out"), "--quiet", *flags]


def _fifo(f: Path) -> list[str]:
    os.mkfifo(f / "pipe.yaml")
    return ["taxonomy", "show", str(f / "pipe.yaml")]


def _alias_bomb(indent: str = "") -> str:
    lines = [f"{indent}a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{indent}a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


def _deep_yaml(levels: int) -> str:
    text = "tree:\n"
    for i in range(levels):
        text += "  " * (i + 1) + f"n{i}:\n"
    return text + "  " * (levels + 1) + "[a, b]\n"


def _overwrite_foreign(f: Path) -> list[str]:
    out = finished_run(f)
    write(out, "thesis.tex", "precious")
    return ["run", recipe(f), "--out", str(out), "--overwrite", "--quiet"]


def _overwrite_with_broken_recipe(f: Path) -> list[str]:
    out = finished_run(f)
    bad = write(f, "bad.yaml", edit(RECIPE, "kind: gmm", "kind: gmmm"))
    return ["run", str(bad), "--out", str(out), "--overwrite", "--quiet"]


def _overwrite_with_missing_taxonomy(f: Path) -> list[str]:
    out = finished_run(f)
    bad = write(f, "bad.yaml", edit(RECIPE, "taxonomy: tax.yaml", "taxonomy: nowhere.yaml"))
    return ["run", str(bad), "--out", str(out), "--overwrite", "--quiet"]


def _resume_edited_taxonomy(f: Path) -> list[str]:
    out = unfinished_run(f)
    write(f, "tax.yaml", "tree:\n  left: [a, c]\n  right: [b, d]\n")  # same path, new content
    return ["run", str(f / "recipe.yaml"), "--out", str(out), "--resume", "--quiet"]


def _resume_other_seed(f: Path) -> list[str]:
    out = unfinished_run(f)
    write(f, "recipe.yaml", edit(RECIPE, "seed: 0", "seed: 1"))
    return ["run", str(f / "recipe.yaml"), "--out", str(out), "--resume", "--quiet"]


def _pickle_batch(f: Path) -> list[str]:
    out = unfinished_run(f)
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {f / 'PWNED'}",))

    for p in (out / "batches").iterdir():
        p.unlink()
    (out / "batches" / "batch_00000.pt").write_bytes(pickle.dumps(Boom()))
    (out / "batches" / "batch_00000.safetensors").write_bytes(pickle.dumps(Boom()))
    return ["run", str(f / "recipe.yaml"), "--out", str(out), "--resume", "--quiet"]


def _no_code_ran(f: Path) -> bool:
    return not (f / "PWNED").exists()


def _corrupt_batch(f: Path) -> list[str]:
    out = unfinished_run(f)
    path = next((out / "batches").glob("batch_*.safetensors"))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte inside a tensor
    path.write_bytes(bytes(data))
    return ["run", str(f / "recipe.yaml"), "--out", str(out), "--resume", "--quiet"]


def _foreign_batch(f: Path) -> list[str]:
    other = f / "other"
    other.mkdir()
    src = unfinished_run(other)
    recipe(f, edit(RECIPE, "seed: 0", "seed: 5"))
    out = f / "run"
    import probes.runner as runner

    with contextlib.redirect_stderr(io.StringIO()):
        runner.run(str(f / "recipe.yaml"), out, progress=False, stop_after_batches=1)
    shutil.copy(next((src / "batches").glob("batch_00000.safetensors")), out / "batches" / "batch_00001.safetensors")
    return ["run", str(f / "recipe.yaml"), "--out", str(out), "--resume", "--quiet"]


def _batch_kept(f: Path) -> bool:
    """The damaged batch is where it was, untouched: nothing is set aside or overwritten unasked."""
    batches = f / "run" / "batches"
    return not any(p.name.endswith(".invalid.tmp") for p in batches.iterdir())


def _corrupt_run_json(f: Path) -> list[str]:
    out = unfinished_run(f)
    (out / "run.json").write_text("{not json")
    return ["run", str(f / "recipe.yaml"), "--out", str(out), "--resume", "--quiet"]


def _grown_sample_count(f: Path) -> list[str]:
    text = edit(RECIPE, "samples: 16, batch_size: 8", "samples: 20, batch_size: 8")
    recipe(f, text)
    import probes.runner as runner

    with contextlib.redirect_stderr(io.StringIO()):
        runner.run(str(f / "recipe.yaml"), f / "run", progress=False)
    write(f, "recipe.yaml", edit(text, "samples: 20", "samples: 32"))
    return ["run", str(f / "recipe.yaml"), "--out", str(f / "run"), "--resume", "--quiet"]


def _grown_has_32(f: Path) -> bool:
    state = json.loads((f / "run" / "run.json").read_text())
    return state.get("status") == "complete" and state.get("n_samples") == 32


def _readonly_out(f: Path) -> list[str]:
    return ["run", recipe(f), "--out", "/proc/probes-cannot-write-here", "--quiet"]


def _out_under_file(f: Path) -> list[str]:
    write(f, "afile", "x")
    return ["run", recipe(f), "--out", str(f / "afile" / "run"), "--quiet"]


def _compare_missing_posteriors(f: Path) -> list[str]:
    out = finished_run(f)
    (out / "posteriors.safetensors").unlink()
    return ["compare", str(out), str(out)]


def _compare_garbage_posteriors(f: Path) -> list[str]:
    out = finished_run(f)
    (out / "posteriors.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    return ["compare", str(out), str(out)]


def _compare_misshapen_posteriors(f: Path) -> list[str]:
    """A well-formed file (checksum and all) whose posteriors do not fit the taxonomy."""
    import torch

    from probes.store import write_record

    out = finished_run(f)
    record = {"estimates": {"exact": {"name": "exact", "sigmas": torch.ones(3), "log_probs": torch.zeros(2, 3, 7)}},
              "prior": None, "primary": "exact"}
    write_record(out / "posteriors.safetensors", record, {"kind": "posteriors"})
    return ["compare", str(out), str(out)]


def _compare_garbage_taxonomy(f: Path) -> list[str]:
    out = finished_run(f)
    (out / "taxonomy.json").write_text("{not json")
    return ["compare", str(out), str(out)]


def _compare_garbage_run_json(f: Path) -> list[str]:
    out = finished_run(f)
    (out / "run.json").write_text("[1, 2]")
    return ["compare", str(out), str(out)]


def _grid_from_damaged_run(f: Path) -> list[str]:
    out = finished_run(f)
    (out / "run.json").write_text("{not json")
    text = edit(RECIPE, "source: data}", "source: data, grid: {from_run: run}}")
    return ["run", recipe(f, text, name="grid.yaml"), "--out", str(f / "out"), "--quiet"]


def _resume_empty(f: Path) -> list[str]:
    (f / "empty").mkdir()
    return ["run", recipe(f), "--out", str(f / "empty"), "--resume", "--quiet"]


def _dollar_run(f: Path) -> list[str]:
    return ["run", recipe(f, taxonomy="tree:\n  'left $x': ['a$', 'b$$']\n  right: [c, d]\n"), "--out",
            str(f / "out"), "--quiet"]


# --- helpers of the cases added by the second sweep ------------------------------------------

MEANS = "  means: {a: [0, 0, 0], b: [1, 0, 0], c: [0, 1, 0], d: [1, 1, 0]}\n"
HIERARCHY = "  hierarchy: {separations: [3.0, 1.0], axis_aligned: true}\n"


def _set(*pairs: str, text: str = RECIPE, taxonomy: str = TAXONOMY):
    flags = [flag for pair in pairs for flag in ("--set", pair)]
    return _run_with(text, *flags, taxonomy=taxonomy)


def _run_in(f: Path, name: str, text: str = RECIPE, taxonomy: str = TAXONOMY) -> Path:
    """A finished run of ``text`` over ``taxonomy`` in ``f/name`` (its inputs in ``f/name-inputs``)."""
    from probes.cli import main

    inputs = f / f"{name}-inputs"
    inputs.mkdir()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", recipe(inputs, text, taxonomy), "--out", str(f / name), "--quiet"]) == 0
    return f / name


def _compare_other_grouping(f: Path) -> list[str]:
    a = _run_in(f, "a", edit(RECIPE, HIERARCHY, MEANS))
    b = _run_in(f, "b", edit(RECIPE, HIERARCHY, MEANS), taxonomy="tree:\n  left: [a, c]\n  right: [b, d]\n")
    return ["compare", str(a), str(b)]


def _compare_into_run(f: Path) -> list[str]:
    out = finished_run(f)
    write(f, "report-before.html", (out / "report.html").read_text())
    return ["compare", str(out), str(out), "--out", str(out)]


def _report_kept(f: Path) -> bool:
    return (f / "run" / "report.html").read_text() == (f / "report-before.html").read_text()


def _compare_into_user_folder(f: Path) -> list[str]:
    out = finished_run(f)
    write(f, "site/report.html", "precious")
    return ["compare", str(out), str(out), "--out", str(f / "site")]


def _grid_from_its_own_out(f: Path) -> list[str]:
    out = finished_run(f)
    text = edit(RECIPE, "source: data}", "source: data, grid: {from_run: run}}")
    return ["run", recipe(f, text, name="grid.yaml"), "--out", str(out), "--overwrite", "--quiet"]


def _marker_parts_a_list(f: Path) -> list[str]:
    out = unfinished_run(f)
    marker = json.loads((out / ".probes-run").read_text())
    marker["fingerprint"], marker["fingerprint_parts"] = "0" * 64, [1, 2]  # edited by hand
    (out / ".probes-run").write_text(json.dumps(marker))
    return ["run", str(f / "recipe.yaml"), "--out", str(out), "--resume", "--quiet"]


def _broken_link_out(f: Path) -> list[str]:
    os.symlink(f / "gone" / "deeper", f / "link")
    return ["run", recipe(f), "--out", str(f / "link"), "--quiet"]


def _export_over_source(f: Path) -> list[str]:
    source = write(f, "t.yaml", TAXONOMY)
    return ["taxonomy", "export", str(source), "-o", str(source), "--format", "json"]


# Python API cases: ``argv`` returns a function; a ProbesError it raises is the one clear line.


def _result(leaves: int = 4, sigmas=None, samples: int = 4, seed: int = 0, taxonomy=None):
    import torch

    from probes.estimators.base import EstimatorOutput
    from probes.result import ProbeResult
    from probes.taxonomy import from_nested

    tax = taxonomy or from_nested({"left": ["a", "b"], "right": ["c", "d"]}, name="t")
    g = torch.Generator().manual_seed(seed)
    grid = torch.logspace(1, -1, 6, dtype=torch.float64) if sigmas is None else sigmas
    log_probs = torch.log_softmax(torch.randn(samples, len(grid), leaves, generator=g), -1)
    return ProbeResult(taxonomy=tax, estimates={"plugin": EstimatorOutput("plugin", grid, log_probs=log_probs)})


def _api_taxonomy_of_a_dict(f: Path):
    from probes.taxonomy import Taxonomy

    return lambda: Taxonomy({"root": ["a", "b"]})


def _api_label_not_text(f: Path):
    import networkx as nx

    from probes.taxonomy import Taxonomy

    graph = nx.DiGraph([("r", "a"), ("r", "b")])
    graph.nodes["a"]["label"] = 5
    return lambda: Taxonomy(graph).render()


def _api_prompt_control(f: Path):
    from probes.taxonomy import from_nested

    return lambda: from_nested(["a", "b"], leaves={"a": {"prompt": "a \x1b[31mred dog"}})


def _api_load_none(f: Path):
    from probes.result import load

    return lambda: load(None)


def _api_merge_none(f: Path):
    from probes.merge import merge_results

    return lambda: merge_results(None)


def _api_merge_twice(f: Path):
    from probes.merge import merge_results

    r = _result()
    return lambda: merge_results([r, r])


def _api_result_wrong_leaves(f: Path):
    return lambda: _result(leaves=3).decisions()


def _api_result_ascending(f: Path):
    import torch

    return lambda: _result(sigmas=torch.logspace(-1, 1, 6, dtype=torch.float64)).decisions()


def _api_decisions_n_boot(f: Path):
    r = _result()
    return lambda: r.decisions(n_boot=10**12)


def _api_compare_other_grouping(f: Path):
    from probes.taxonomy import from_nested

    other = from_nested({"left": ["a", "c"], "right": ["b", "d"]}, name="t")
    a, b = _result(), _result(seed=1, taxonomy=other)
    return lambda: a.compare(b)


def _api_compare_not_a_result(f: Path):
    r = _result()
    return lambda: r.compare(5)


def _api_save_onto_run(f: Path):
    out = finished_run(f)
    r = _result()
    return lambda: r.save(out)


def _api_save_onto_file(f: Path):
    path = write(f, "notes.txt", "precious")
    r = _result()
    return lambda: r.save(path)


def _api_result_of_a_text_taxonomy(f: Path):
    import torch

    from probes.estimators.base import EstimatorOutput
    from probes.result import ProbeResult

    out = EstimatorOutput("plugin", torch.logspace(1, -1, 6, dtype=torch.float64), log_probs=torch.zeros(2, 6, 4))
    return lambda: ProbeResult(taxonomy="gmm-two-by-two", estimates={"plugin": out}).decisions()


def _torchrun_env(env: dict[str, str], join_seconds: float | None = None):
    """``probes run`` with torchrun's variables set by hand (and, for a case that waits for peers
    that never come, a join timeout of a few seconds); the environment is restored afterwards."""
    def build(f: Path):
        argv = ["run", recipe(f), "--out", str(f / "out"), "--quiet"]

        def call() -> int:
            from datetime import timedelta

            import probes.distributed as distributed
            from probes.cli import main

            saved, timeout = {k: os.environ.get(k) for k in env}, getattr(distributed, "JOIN_TIMEOUT", None)
            os.environ.update(env)
            if join_seconds is not None and timeout is not None:
                distributed.JOIN_TIMEOUT = timedelta(seconds=join_seconds)
            try:
                return main(argv)
            finally:
                if timeout is not None:
                    distributed.JOIN_TIMEOUT = timeout
                for k, v in saved.items():
                    os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        return call
    return build


def _api_probe_single_leaf(f: Path):
    from probes.probing import probe
    from probes.taxonomy import from_nested

    return lambda: probe(object(), from_nested(["only"]))


# --- the classes of hostile input found in the third sweep ------------------------------------


def _resume_over(damage: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    """--resume over an unfinished run whose first batch file was damaged by ``damage(path)``."""
    def build(f: Path) -> list[str]:
        out = unfinished_run(f)
        damage(next((out / "batches").glob("batch_*.safetensors")))
        return ["run", str(f / "recipe.yaml"), "--out", str(out), "--resume", "--quiet"]

    return build


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _other_leaf_count_batch(f: Path) -> list[str]:
    """A batch of a run over five leaves dropped into a run over four (same file name)."""
    other = f / "other"
    other.mkdir()
    recipe(other, edit(RECIPE, "dim: 3", "dim: 5"), taxonomy="tree:\n  left: [a, b]\n  right: [c, d, e]\n")
    import probes.runner as runner

    with contextlib.redirect_stderr(io.StringIO()):
        runner.run(str(other / "recipe.yaml"), other / "run", progress=False, stop_after_batches=1)
    out = unfinished_run(f)
    shutil.copy(other / "run" / "batches" / "batch_00000.safetensors", out / "batches" / "batch_00000.safetensors")
    return ["run", str(f / "recipe.yaml"), "--out", str(out), "--resume", "--quiet"]


def _resume_without_run_json(f: Path) -> list[str]:
    out = unfinished_run(f)
    (out / "run.json").unlink()
    return ["run", str(f / "recipe.yaml"), "--out", str(out), "--resume", "--quiet"]


def _resume_run_json_a_list(f: Path) -> list[str]:
    out = unfinished_run(f)
    (out / "run.json").write_text("[1, 2, 3]")
    return ["run", str(f / "recipe.yaml"), "--out", str(out), "--resume", "--quiet"]


def _table_damaged(command: str, name: str, damage: str | None) -> Callable[[Path], list[str]]:
    """``compare`` or ``interval`` on a finished run whose table ``name`` is missing (None) or garbage."""
    def build(f: Path) -> list[str]:
        out = finished_run(f)
        if damage is None:
            (out / name).unlink()
        else:
            (out / name).write_text(damage)
        return ["compare", str(out), str(out)] if command == "compare" else ["interval", str(out)]

    return build


def _yaml_name_case(name: str) -> Callable[[Path], list[str]]:
    return lambda f: ["taxonomy", "show", str(write(f, "t.yaml", f"tree:\n  left: [{name}, b]\n  right: [c, d]\n"))]


def _long_component_out(f: Path) -> list[str]:
    return ["run", recipe(f), "--out", str(f / ("x" * 300) / "run"), "--quiet"]


def _taxonomy_symlink_loop(f: Path) -> list[str]:
    (f / "loop.yaml").symlink_to(f / "loop.yaml")
    return ["run", recipe(f, edit(RECIPE, "taxonomy: tax.yaml", "taxonomy: loop.yaml")), "--out", str(f / "o"),
            "--quiet"]


def _overwrite_a_link_to_a_run(f: Path) -> list[str]:
    finished_run(f)
    (f / "link").symlink_to(f / "run", target_is_directory=True)
    return ["run", recipe(f), "--out", str(f / "link"), "--overwrite", "--quiet"]


def _api_run_progress_text(f: Path):
    import probes

    return lambda: probes.run(recipe(f), f / "o", progress="yes")


def _api_recipe_changed_after_loading(f: Path):
    import probes

    loaded = probes.load_recipe(recipe(f))
    loaded.sampling.samples = 0
    return lambda: probes.run(loaded, f / "o", progress=False)


def _api_estimator_option_text(f: Path):
    from probes.estimators import build_estimator

    return lambda: build_estimator("rollout", k="8")


def _poisoned_run(f: Path, poison: str):
    """A run whose model misbehaves: ``poison`` names how (a classifier of all -inf, a denoiser of
    1e300, a denoiser of another shape)."""
    import torch

    import probes.runner as runner
    from probes.denoisers.base import FiniteCheck

    build = runner.build

    def poisoned(plan):
        ctx = build(plan)
        if poison == "classifier -inf":
            return ctx.replace(classifier=lambda x: torch.full((x.shape[0], len(ctx.taxonomy.leaves)), -float("inf")))
        inner = ctx.guided_denoiser
        if poison == "denoiser 1e300":
            return ctx.replace(guided_denoiser=FiniteCheck(lambda x, s, c=None: inner(x, s, c) * 0 + 1e300))
        return ctx.replace(guided_denoiser=FiniteCheck(lambda x, s, c=None: inner(x, s, c)[:, :1]))

    def call():
        original = runner.build
        runner.build = poisoned
        try:
            runner.run(recipe(f, edit(edit(RECIPE, "source: data", "source: model"), "estimators: [exact]",
                                      "estimators: [plugin]")), f / "o", progress=False)
        finally:
            runner.build = original

    return call


CASES: list[Case] = [
    # taxonomy files
    Case("taxonomy missing", "taxonomy", lambda f: ["taxonomy", "show", str(f / "nope.yaml")], needle="nope.yaml"),
    Case("taxonomy is a directory", "taxonomy", lambda f: ["taxonomy", "show", str(f)]),
    Case("taxonomy is a FIFO", "taxonomy", _fifo, timeout=10, needle="pipe.yaml"),
    Case("taxonomy is /dev/zero", "taxonomy", lambda f: ["taxonomy", "show", "/dev/zero"], timeout=10),
    Case("taxonomy not UTF-8", "taxonomy", _taxonomy_show(b"tree: [a, \xff\xfe]\n"), needle="UTF-8"),
    Case("taxonomy empty file", "taxonomy", _taxonomy_show("")),
    Case("taxonomy duplicate key", "taxonomy", _taxonomy_show("tree:\n  a: [x, y]\n  a: [z, w]\n"), needle="twice"),
    Case("taxonomy duplicate top-level key", "taxonomy", _taxonomy_show("tree: [a, b]\ntree: [c, d]\n"),
         needle="twice"),
    Case("taxonomy alias bomb", "taxonomy", _taxonomy_show(_alias_bomb() + "tree: [a, b]\n"), timeout=20),
    Case("taxonomy 600 levels deep", "taxonomy", _taxonomy_show(_deep_yaml(600)), timeout=20),
    Case("taxonomy 150 levels deep", "taxonomy", _taxonomy_show(_deep_yaml(150)), timeout=20),
    Case("taxonomy self-referential alias", "taxonomy", _taxonomy_show("tree: &t\n  a: *t\n")),
    Case("taxonomy control character", "taxonomy", _taxonomy_show('tree: ["a\\e[31mred", b]\n'),
         needle="control"),
    Case("taxonomy newline in name", "taxonomy", _taxonomy_show('tree: ["a\\nb", c]\n'), needle="control"),
    Case("taxonomy python tag", "taxonomy",
         _taxonomy_show("tree: !!python/object/apply:os.system ['touch PWNED']\n"), check=_no_code_ran),
    Case("taxonomy 20 MiB", "taxonomy", _taxonomy_show("#" * (20 << 20) + "\ntree: [a, b]\n"), needle="MiB"),
    Case("taxonomy scalar tree", "taxonomy", _taxonomy_show("tree: 3\n")),
    Case("taxonomy list at top", "taxonomy", _taxonomy_show("- a\n- b\n")),
    Case("taxonomy float leaf", "taxonomy", _taxonomy_show("tree: [a, 1.5]\n"), needle="quote"),
    Case("taxonomy YAML 1.1 numbers stay names", "taxonomy", _taxonomy_show("tree: ['x', 010, 0x1F, 1:20]\n"),
         expect="ok"),
    Case("taxonomy yes/no stay names", "taxonomy", _taxonomy_show("tree: [yes, no, on, off]\n"), expect="ok"),
    Case("taxonomy leaf named as root", "taxonomy", _taxonomy_show("tree:\n  root: [a, b]\n")),
    Case("taxonomy unknown metadata", "taxonomy", _taxonomy_show("tree: [a, b]\nleaves:\n  a: {colour: red}\n")),
    Case("taxonomy name too long", "taxonomy", _taxonomy_show(f"tree: [{'a' * 600}, b]\n")),
    Case("taxonomy names that differ in Unicode composition", "taxonomy",
         _taxonomy_show('tree: ["\\u00e9", "e\\u0301"]\n'), needle="look the same"),
    Case("taxonomy names that differ by a zero-width space", "taxonomy",
         _taxonomy_show('tree: ["a\\u200b", a]\n'), needle="look the same"),
    Case("taxonomy prompt with a control character", "taxonomy",
         _taxonomy_show('tree: [a, b]\nleaves: {a: {prompt: "a \\e[31mred dog"}}\n'), needle="control"),
    Case("taxonomy prompt of 100,000 characters", "taxonomy",
         _taxonomy_show(f"tree: [a, b]\nleaves: {{a: {{prompt: {'x' * 100_000}}}}}\n"), needle="prompt"),
    # WordNet specs
    Case("wordnet sense 00", "wordnet", lambda f: ["taxonomy", "show", "wordnet:dog.n.00,cat.n.01"],
         needle="dog.n.00"),
    Case("wordnet unknown synset", "wordnet", lambda f: ["taxonomy", "show", "wordnet:notaword.n.01"]),
    Case("wordnet empty spec", "wordnet", lambda f: ["taxonomy", "show", "wordnet:"]),
    Case("wordnet bad wnid", "wordnet", lambda f: ["taxonomy", "show", "wordnet:n99999999"]),
    Case("wordnet verb", "wordnet", lambda f: ["taxonomy", "show", "wordnet:run.v.01"]),
    # exported trees
    Case("json corrupt", "export", _taxonomy_show("{\"nodes\": [", "t.json")),
    Case("json a list", "export", _taxonomy_show("[1, 2]", "t.json")),
    Case("json deep", "export", _taxonomy_show("[" * 100_000 + "]" * 100_000, "t.json"), timeout=20),
    Case("json not a tree", "export", _taxonomy_show(json.dumps(
        {"directed": True, "multigraph": False, "graph": {}, "nodes": [{"id": "a"}, {"id": "b"}],
         "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}]}), "t.json")),
    Case("graphml garbage", "export", _taxonomy_show("<graphml><oops", "t.graphml")),
    Case("graphml bad json attribute", "export", _taxonomy_show(
        '<?xml version="1.0"?><graphml xmlns="http://graphml.graphdrawing.org/xmlns">'
        '<key id="d0" for="graph" attr.name="json_attributes" attr.type="string"/>'
        '<graph edgedefault="directed"><data key="d0">[not json</data><node id="a"/></graph></graphml>',
        "t.graphml")),
    Case("newick unbalanced", "export", _taxonomy_show("((a,b),c;", "t.nwk")),
    Case("newick deep", "export", _taxonomy_show("(" * 5000 + "a" + ")" * 5000 + ";", "t.nwk"), timeout=20),
    Case("newick empty", "export", _taxonomy_show("", "t.nwk")),
    Case("newick duplicate names", "export", _taxonomy_show("(a,a)r;", "t.nwk")),
    Case("newick bad length", "export", _taxonomy_show("(a:x,b)r;", "t.nwk")),
    # recipes
    Case("recipe missing", "recipe", lambda f: ["run", str(f / "nope.yaml"), "--out", str(f / "o")],
         needle="nope.yaml"),
    Case("recipe missing model.kind", "recipe", _run_with(edit(RECIPE, "  kind: gmm\n", "")), needle="kind"),
    Case("recipe unknown kind", "recipe", _run_with(edit(RECIPE, "kind: gmm", "kind: gan"))),
    Case("recipe sigma_min above sigma_max", "recipe",
         _run_with(edit(RECIPE, "sigma_min: 0.05", "sigma_min: 50")), needle="sigma_min"),
    Case("recipe --samples 0", "recipe", _run_with(RECIPE, "--samples", "0"), needle="--samples"),
    Case("recipe --samples -5", "recipe", _run_with(RECIPE, "--samples", "-5"), needle="--samples"),
    Case("recipe not UTF-8", "recipe", lambda f: ["run", str(write(f, "r.yaml", b"name: \xff\n")),
                                                    "--out", str(f / "o")], needle="UTF-8"),
    Case("recipe k: .nan", "recipe", _run_with(edit(RECIPE, "estimators: [exact]",
                                                    "estimators: [exact, {name: rollout, k: .nan}]")), needle="k"),
    Case("recipe k: four", "recipe", _run_with(edit(RECIPE, "estimators: [exact]",
                                                    "estimators: [exact, {name: rollout, k: four}]")), needle="k"),
    Case("recipe bounds from a point estimator", "recipe", _run_with(edit(RECIPE, "estimators: [exact]",
         "estimators: [{name: exact, bounds: true}]")), needle="bounds"),
    Case("recipe prior over an unknown leaf", "recipe", _run_with(RECIPE + "prior: {a: 1, elsewhere: 1}\n"),
         needle="elsewhere"),
    Case("recipe guidance without labels", "recipe", _run_with(edit(RECIPE, "source: data}",
         "source: model, method: ancestral, guidance: {scale: 3.0}}")), needle="guidance"),
    Case("recipe guidance on forward-noised data", "recipe", _run_with(edit(RECIPE, "source: data}",
         "source: data, condition: leaf, guidance: {scale: 3.0}}")), needle="source: model"),
    Case("recipe guided estimator without labels", "recipe", _run_with(edit(RECIPE, "estimators: [exact]",
         "estimators: [guided]")), needle="guided"),
    Case("recipe seed -1", "recipe", _run_with(edit(RECIPE, "seed: 0", "seed: -1")), needle="seed"),
    Case("recipe seed 2**64", "recipe", _run_with(edit(RECIPE, "seed: 0", "seed: 18446744073709551616")),
         needle="seed"),
    Case("recipe device mps", "recipe", _run_with(RECIPE + "device: mps\n"), needle="mps"),
    Case("recipe --device tpu", "recipe", _run_with(RECIPE, "--device", "tpu"), needle="--device"),
    Case("recipe duplicate model block", "recipe", _run_with(RECIPE + "model:\n  kind: digits\n"), needle="twice"),
    Case("recipe steps twice", "recipe", _run_with(edit(RECIPE, "steps: 8,", "steps: 8, steps: 9,")),
         needle="twice"),
    Case("recipe samples 1e12", "recipe", _run_with(edit(RECIPE, "samples: 16", "samples: 1e12")), timeout=20,
         needle="samples"),
    Case("recipe batch too big for memory", "recipe",
         _run_with(edit(RECIPE, "samples: 16, batch_size: 8, steps: 8", "samples: 60000, batch_size: 60000, "
                                                                        "steps: 90000")), timeout=30),
    Case("recipe steps NaN", "recipe", _run_with(edit(RECIPE, "sigma_max: 20.0", "sigma_max: .nan"))),
    Case("recipe alias bomb in estimator options", "recipe",
         _run_with(_alias_bomb() + edit(RECIPE, "estimators: [exact]", "estimators: [exact, {name: plugin, x: *a8}]")),
         timeout=20),
    Case("recipe is a list", "recipe", _run_with("- a\n- b\n")),
    Case("recipe name escapes runs/", "recipe", _run_with(edit(RECIPE, "name: tiny", "name: ../../x"))),
    Case("recipe unknown estimator", "recipe", _run_with(edit(RECIPE, "estimators: [exact]", "estimators: [magic]"))),
    Case("recipe python tag", "recipe", _run_with("name: !!python/object/apply:os.system ['touch PWNED']\n"),
         check=_no_code_ran),
    Case("recipe taxonomy missing", "recipe", _run_with(edit(RECIPE, "taxonomy: tax.yaml", "taxonomy: no.yaml")),
         needle="no.yaml"),
    Case("recipe leaf 010 keeps its name", "recipe",
         _run_with(RECIPE, taxonomy="tree:\n  left: ['010', b]\n  right: [c, d]\n"), expect="ok"),
    Case("run with $ in node names", "recipe", _dollar_run, expect="ok", timeout=90),
    Case("recipe over a single-leaf taxonomy", "recipe",
         _run_with(edit(RECIPE, HIERARCHY, "  means: {a: [0, 0, 0]}\n"), taxonomy="tree: [a]\n"),
         needle="single leaf"),
    Case("recipe samples: true", "recipe", _run_with(edit(RECIPE, "samples: 16", "samples: true")),
         needle="samples"),
    Case("recipe seed quoted", "recipe", _run_with(edit(RECIPE, "seed: 0", "seed: '7'")), needle="seed"),
    Case("recipe std 1e308", "recipe", _run_with(edit(RECIPE, "std: 0.5", "std: 1e308")), needle="std"),
    Case("recipe dim 1e8", "recipe", _run_with(edit(RECIPE, "dim: 3", "dim: 100000000")), timeout=20,
         needle="dim"),
    Case("recipe negative separation", "recipe", _run_with(edit(RECIPE, "[3.0, 1.0]", "[-3.0, 1.0]")),
         needle="separations"),
    Case("recipe separations 1e308", "recipe", _run_with(edit(RECIPE, "[3.0, 1.0]", "[1e308, 1e308]")),
         needle="separations"),
    Case("recipe hierarchy seed 1e23", "recipe",
         _run_with(edit(RECIPE, "axis_aligned: true}", "seed: 99999999999999999999999}")), needle="seed"),
    Case("recipe hierarchy over a single-child node", "recipe",
         _run_with(RECIPE, taxonomy="tree:\n  left: [a]\n  right: [c, d]\n"), needle="model.hierarchy"),
    Case("recipe empty means", "recipe",
         _run_with(edit(edit(RECIPE, HIERARCHY, "  means: {a: [], b: [], c: [], d: []}\n"), "  dim: 3\n", "")),
         needle="means"),
    Case("recipe sigma_min 1e-320", "recipe", _run_with(edit(RECIPE, "sigma_min: 0.05", "sigma_min: 1e-320")),
         needle="sigma_min"),
    Case("recipe grid from an empty path", "recipe",
         _run_with(edit(RECIPE, "source: data}", "source: data, grid: {from_run: ''}}")), needle="from_run"),
    Case("recipe n_boot 1e11", "recipe", _run_with(edit(RECIPE, "n_boot: 10", "n_boot: 100000000000")),
         needle="n_boot"),
    Case("recipe rollout k 1e9", "recipe", _run_with(edit(RECIPE, "estimators: [exact]",
         "estimators: [exact, {name: rollout, k: 1000000000}]")), timeout=20, needle="k"),
    Case("recipe immse n_pairs 1e11", "recipe", _run_with(edit(RECIPE, "estimators: [exact]",
         "estimators: [{name: immse, n_pairs: 100000000000}]").replace("classifier: {kind: exact}\n", "")),
         timeout=20, needle="n_pairs"),
    Case("recipe sigma_stride past the grid", "recipe", _run_with(edit(RECIPE, "estimators: [exact]",
         "estimators: [{name: exact, sigma_stride: 8}]")), needle="sigma_stride"),
    Case("recipe quality.reference that does not exist", "recipe",
         _run_with(RECIPE + "quality: {reference: no-such-folder}\n"), needle="quality.reference"),
    Case("recipe estimators: 5", "recipe", _run_with(edit(RECIPE, "estimators: [exact]", "estimators: 5")),
         needle="estimators"),
    # --set
    Case("--set without =", "override", _run_with(RECIPE, "--set", "sampling.steps"), needle="--set"),
    Case("--set empty key", "override", _run_with(RECIPE, "--set", "=3"), needle="--set"),
    Case("--set through a scalar", "override", _run_with(RECIPE, "--set", "seed.x=3"), needle="seed"),
    Case("--set bad YAML", "override", _run_with(RECIPE, "--set", "sampling.steps=[1,"), needle="--set"),
    Case("--set empty part", "override", _run_with(RECIPE, "--set", "sampling..steps=3")),
    Case("--set unknown field", "override", _run_with(RECIPE, "--set", "sampling.stepz=3"), needle="stepz"),
    Case("--set a boolean as a count", "override", _set("sampling.samples=true"), needle="sampling.samples"),
    Case("--set a quoted number", "override", _set("sampling.steps='8'"), needle="sampling.steps"),
    Case("--set an estimator list to a number", "override", _set("estimators=5"), needle="estimators"),
    # run directories
    Case("--overwrite a run holding a user's file", "rundir", _overwrite_foreign,
         check=kept((Path("run/thesis.tex"), "precious")), needle="thesis.tex"),
    Case("--overwrite with a broken recipe", "rundir", _overwrite_with_broken_recipe, check=run_kept),
    Case("--overwrite with a missing taxonomy", "rundir", _overwrite_with_missing_taxonomy, check=run_kept),
    Case("--resume after the taxonomy file changed", "rundir", _resume_edited_taxonomy, needle="taxonomy"),
    Case("--resume with another seed", "rundir", _resume_other_seed, needle="seed"),
    Case("--resume over a crafted pickle batch", "rundir", _pickle_batch, check=_no_code_ran,
         needle="batch_00000.safetensors"),
    Case("--resume over a corrupt batch", "rundir", _corrupt_batch, needle="batch_0000", check=_batch_kept),
    Case("--resume over another run's batch", "rundir", _foreign_batch, needle="batch_00001", check=_batch_kept),
    Case("--resume --recompute-damaged over a corrupt batch", "rundir",
         lambda f: [*_corrupt_batch(f), "--recompute-damaged"], expect="ok"),
    Case("--resume --recompute-damaged over another run's batch", "rundir",
         lambda f: [*_foreign_batch(f), "--recompute-damaged"], expect="ok"),
    Case("--recompute-damaged without --resume", "rundir",
         lambda f: ["run", recipe(f), "--out", str(f / "o"), "--recompute-damaged", "--quiet"],
         needle="--recompute-damaged"),
    Case("--resume over a corrupt run.json", "rundir", _corrupt_run_json, expect="ok"),
    Case("--resume with more samples", "rundir", _grown_sample_count, expect="ok", check=_grown_has_32),
    Case("--resume an empty directory", "rundir", _resume_empty),
    Case("--out on a read-only place", "rundir", _readonly_out),
    Case("--out under a file", "rundir", _out_under_file, needle="afile"),
    Case("grid from a run whose run.json is damaged", "rundir", _grid_from_damaged_run, needle="run.json"),
    Case("--resume with a marker whose fingerprint parts are a list", "rundir", _marker_parts_a_list,
         needle="changed"),
    Case("--out empty", "rundir", lambda f: ["run", recipe(f), "--out", "", "--quiet"], needle="--out"),
    Case("--out a broken symbolic link", "rundir", _broken_link_out, needle="symbolic link"),
    Case("grid from the run --overwrite replaces", "rundir", _grid_from_its_own_out, check=run_kept,
         needle="from_run"),
    # compare
    Case("compare without posteriors.safetensors", "compare", _compare_missing_posteriors,
         needle="posteriors.safetensors"),
    Case("compare with a damaged posteriors.safetensors", "compare", _compare_garbage_posteriors,
         needle="posteriors.safetensors"),
    Case("compare with posteriors that do not fit the taxonomy", "compare", _compare_misshapen_posteriors,
         needle="posteriors.safetensors"),
    Case("compare with a damaged taxonomy.json", "compare", _compare_garbage_taxonomy, needle="taxonomy.json"),
    Case("compare with a run.json that is not an object", "compare", _compare_garbage_run_json, needle="run.json"),
    Case("compare a folder that is not a run", "compare", lambda f: ["compare", str(f), str(f)]),
    Case("compare runs over the same leaves grouped differently", "compare", _compare_other_grouping,
         needle="taxonom"),
    Case("compare --n-boot 1e11", "compare", lambda f: ["compare", str(finished_run(f)), str(f / "run"), "--n-boot",
                                                         "100000000000"], needle="--n-boot"),
    Case("compare --out into a run directory", "compare", _compare_into_run, check=_report_kept, needle="--out"),
    Case("compare --out over a user's report.html", "compare", _compare_into_user_folder,
         check=kept((Path("site/report.html"), "precious")), needle="--out"),
    Case("compare --out empty", "compare", lambda f: ["compare", str(finished_run(f)), str(f / "run"), "--out", ""],
         needle="--out"),
    # the command line
    Case("unknown command", "cli", lambda f: ["fly"]),
    Case("export to an unknown format", "cli", lambda f: ["taxonomy", "export", str(write(f, "t.yaml", TAXONOMY)),
                                                          "--format", "svg", "-o", str(f / "t.svg")]),
    Case("export over the file it reads", "export", _export_over_source, check=kept((Path("t.yaml"), TAXONOMY)),
         needle="-o"),
    # torchrun's environment, by hand
    Case("WORLD_SIZE not a number", "torchrun", _torchrun_env({"WORLD_SIZE": "two"}), needle="WORLD_SIZE"),
    Case("WORLD_SIZE 0", "torchrun", _torchrun_env({"WORLD_SIZE": "0"}), needle="WORLD_SIZE"),
    Case("WORLD_SIZE 2 with no second process", "torchrun",
         _torchrun_env({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29517"}, join_seconds=3), timeout=60, needle="join"),
    # the Python API
    Case("Taxonomy of a dict", "api", _api_taxonomy_of_a_dict, needle="DiGraph"),
    Case("Taxonomy with a numeric label", "api", _api_label_not_text, needle="label"),
    Case("from_nested prompt with a control character", "api", _api_prompt_control, needle="control"),
    Case("load(None)", "api", _api_load_none, needle="load"),
    Case("merge_results(None)", "api", _api_merge_none, needle="merge_results"),
    Case("merge_results of one result twice", "api", _api_merge_twice, needle="twice"),
    Case("ProbeResult over the wrong number of leaves", "api", _api_result_wrong_leaves, needle="log_probs"),
    Case("ProbeResult over a taxonomy given as text", "api", _api_result_of_a_text_taxonomy, needle="Taxonomy"),
    Case("ProbeResult on an ascending grid", "api", _api_result_ascending, needle="descending"),
    Case("decisions(n_boot=10**12)", "api", _api_decisions_n_boot, needle="n_boot"),
    Case("compare over the same leaves grouped differently", "api", _api_compare_other_grouping, needle="taxonom"),
    Case("compare with a number", "api", _api_compare_not_a_result, needle="ProbeResult"),
    Case("save onto a run directory", "api", _api_save_onto_run, check=run_kept, needle="run"),
    Case("save onto a file", "api", _api_save_onto_file, check=kept((Path("notes.txt"), "precious"))),
    Case("probe over a single-leaf taxonomy", "api", _api_probe_single_leaf, needle="single leaf"),
    # the third sweep: one case or more per class of hostile input
    Case("--resume over a truncated batch", "rundir", _resume_over(_truncate), needle="batch_00000", check=_batch_kept),
    Case("--resume over an emptied batch", "rundir", _resume_over(lambda p: p.write_bytes(b"")), needle="batch_00000",
         check=_batch_kept),
    Case("--resume over a batch of random bytes", "rundir", _resume_over(_random_bytes), needle="batch_00000",
         check=_batch_kept),
    Case("--resume over a batch of another leaf count", "rundir", _other_leaf_count_batch, needle="batch_00000",
         check=_batch_kept),
    Case("--resume without run.json", "rundir", _resume_without_run_json, expect="ok"),
    Case("--resume over a run.json that is a list", "rundir", _resume_run_json_a_list, expect="ok"),
    Case("compare without curves.csv", "compare", _table_damaged("compare", "curves.csv", None), needle="curves.csv"),
    Case("compare over a garbage decisions.csv", "compare", _table_damaged("compare", "decisions.csv", "a,b\n1,2\n"),
         needle="decisions.csv"),
    Case("interval without decisions.csv", "compare", _table_damaged("interval", "decisions.csv", None),
         needle="decisions.csv"),
    Case("interval over a garbage curves.csv", "compare", _table_damaged("interval", "curves.csv", "\x00\x01"),
         needle="curves.csv"),
    Case("a leaf named yes", "taxonomy", _yaml_name_case("yes"), expect="ok"),
    Case("a leaf named 010", "taxonomy", _yaml_name_case("010"), expect="ok"),
    Case("a leaf named 0x1F", "taxonomy", _yaml_name_case("0x1F"), expect="ok"),
    Case("a leaf named 1:20", "taxonomy", _yaml_name_case("1:20"), expect="ok"),
    Case("a leaf named 1_000", "taxonomy", _yaml_name_case("1_000"), expect="ok"),
    Case("a leaf named 2001-12-14", "taxonomy", _yaml_name_case("2001-12-14"), expect="ok"),
    Case("a leaf named +5", "taxonomy", _yaml_name_case("+5"), needle="+5"),
    Case("a leaf named true", "taxonomy", _yaml_name_case("true"), needle="boolean"),
    Case("--out with a 300-character folder name", "rundir", _long_component_out, needle="x" * 20),
    Case("taxonomy path that is a symbolic link to itself", "rundir", _taxonomy_symlink_loop, needle="loop.yaml"),
    Case("--overwrite a symbolic link to a run", "rundir", _overwrite_a_link_to_a_run, check=run_kept,
         needle="symbolic link"),
    Case("recipe weights of 1e308", "recipe", _run_with(edit(RECIPE, "  std: 0.5\n",
         "  std: 0.5\n  weights: {a: 1e308, b: 1e308, c: 1e308, d: 1e308}\n")), needle="weights"),
    Case("recipe sigma_stride given as text", "recipe", _run_with(edit(RECIPE, "estimators: [exact]",
         "estimators: [{name: exact, sigma_stride: '2'}]")), needle="sigma_stride"),
    Case("run(progress='yes')", "api", _api_run_progress_text, needle="progress"),
    Case("a recipe changed after loading", "api", _api_recipe_changed_after_loading, needle="sampling.samples"),
    Case("an estimator option given as text", "api", _api_estimator_option_text, needle="'k'"),
    Case("a classifier of all -inf", "api", lambda f: _poisoned_run(f, "classifier -inf"),
         needle="no mass on any leaf"),
    Case("a denoiser of 1e300", "api", lambda f: _poisoned_run(f, "denoiser 1e300"), needle="beyond"),
    Case("a denoiser of another shape", "api", lambda f: _poisoned_run(f, "denoiser shape"), needle="returned"),
]

# --- the runner --------------------------------------------------------------------------------


class _Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise _Hang()


def run_case(case: Case, folder: Path) -> tuple[str, str]:
    """Build and run one case in ``folder``; returns ``(outcome, what it printed)``."""
    from probes.cli import main

    cwd = os.getcwd()
    os.chdir(folder)
    err, out = io.StringIO(), io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        argv = case.argv(folder)
        signal.alarm(case.timeout)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                try:
                    code = _call(argv) if callable(argv) else main(argv)
                except SystemExit as exc:  # argparse's own usage errors
                    code = exc.code if isinstance(exc.code, int) else 2
        finally:
            signal.alarm(0)
    except (_Hang, MemoryError):  # ran without end, or until memory ran out
        return "hang", err.getvalue()
    except Exception as exc:
        return "traceback", f"{type(exc).__name__}: {exc}"
    finally:
        signal.signal(signal.SIGALRM, old)
        os.chdir(cwd)
        _make_writable(folder)
    text = err.getvalue()
    if case.check is not None and not case.check(folder):
        return "data-loss", text
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("probes: note:")]
    if code == 0:
        return ("ok" if case.expect == "ok" else "silent"), text
    if "internal error" in text:
        return "traceback", text
    if code == 2 and ((len(lines) == 1 and lines[0].startswith("probes: error:")) or _argparse_error(lines)):
        if case.needle and case.needle.lower() not in text.lower():
            return "vague", text
        return "clear", text
    return "traceback", text


def _call(fn: Callable[[], object]) -> int:
    """A Python API case: a ProbesError is the API's one clear line (printed as the CLI would)."""
    import sys

    from probes.errors import ProbesError

    try:
        code = fn()
    except ProbesError as err:
        print(f"probes: error: {err}", file=sys.stderr)
        return 2
    return code if isinstance(code, int) else 0  # a CLI run inside a prepared environment returns its status


def _argparse_error(lines: list[str]) -> bool:
    return bool(lines) and lines[-1].startswith("probes") and ": error:" in lines[-1]


def _make_writable(folder: Path) -> None:
    for p in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR)
