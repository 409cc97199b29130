"""`probes run` end to end on Gaussian mixtures: files, resume, refusal to clobber, bad input."""

import csv
import json
from pathlib import Path

import networkx as nx
import pytest
import yaml

import probes
import probes.runner as runner
from probes.cli import main
from probes.denoisers.base import FiniteCheck
from probes.errors import ProbesError

ROOT = Path(__file__).resolve().parents[1]


def write_recipe(tmp_path: Path, **changes) -> Path:
    recipe = {
        "name": "gmm-small",
        "seed": 3,
        "taxonomy": str(ROOT / "taxonomies" / "gmm-two-by-two.yaml"),
        "model": {"kind": "gmm", "dim": 4, "std": 0.5,
                  "hierarchy": {"separations": [6.0, 2.0], "axis_aligned": True}},
        "classifier": {"kind": "exact"},
        "sampling": {"samples": 96, "batch_size": 32, "steps": 24, "sigma_max": 60.0, "sigma_min": 0.05,
                     "method": "ancestral"},
        "estimators": ["exact", "plugin", "bayes"],
        "analysis": {"n_boot": 50},
    }
    for key, value in changes.items():
        recipe[key] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_run_writes_the_documented_directory(tmp_path):
    out = tmp_path / "run"
    result = runner.run(write_recipe(tmp_path), out, progress=False)
    for name in ["run.json", "curves.csv", "decisions.csv", "tree.json", "tree.graphml", "tree.nwk", "curves.png",
                 "tree.png", "rates.png"]:
        assert (out / name).stat().st_size > 0, name
    state = json.loads((out / "run.json").read_text())
    assert state["status"] == "complete" and state["n_samples"] == 96
    assert state["recipe"]["seed"] == 3 and "torch" in state["versions"]
    assert state["estimators"]["bayes"]["denoiser_calls"] == 96 * 23 * 4  # 4 leaves x (S - 1) steps

    rows = read_csv(out / "curves.csv")
    assert list(rows[0]) == ["estimator", "sigma", "vp_time", "log_snr", "kind", "name", "entropy", "stderr",
                             "mutual_info", "n_samples", "entropy_lo", "entropy_hi", "inside_mass"]
    assert {r["estimator"] for r in rows} == {"exact", "plugin", "bayes"}

    tree = nx.node_link_graph(json.loads((out / "tree.json").read_text()), edges="edges")
    coarse, fine = tree.nodes["root"], tree.nodes["left"]
    # The coarse split (separation 6) is decided at a larger sigma than the fine one (separation 2).
    assert coarse["decision_sigma"] > 2 * fine["decision_sigma"]
    lo, hi = coarse["window"]
    assert lo < coarse["decision_sigma"] < hi
    assert "root" in result.summary() and "sigma=" in result.summary()
    assert result.directory == out and result.n_samples == 96


def test_resume_gives_the_numbers_of_an_uninterrupted_run(tmp_path):
    recipe = write_recipe(tmp_path)
    runner.run(recipe, tmp_path / "full", progress=False)

    partial = tmp_path / "partial"
    assert runner.run(recipe, partial, progress=False, stop_after_batches=1) is None
    assert json.loads((partial / "run.json").read_text())["status"] == "interrupted"
    assert len(list((partial / "batches").glob("batch_*.safetensors"))) == 1
    with pytest.raises(ProbesError, match="holds an unfinished run .1 batches done.; pass --resume"):
        runner.run(recipe, partial, progress=False)
    runner.run(recipe, partial, progress=False, resume=True)
    assert (tmp_path / "full" / "curves.csv").read_text() == (partial / "curves.csv").read_text()
    assert (tmp_path / "full" / "decisions.csv").read_text() == (partial / "decisions.csv").read_text()


def test_finished_and_foreign_directories_are_not_clobbered(tmp_path):
    recipe = write_recipe(tmp_path, sampling={"samples": 32, "batch_size": 32, "steps": 12})
    out = tmp_path / "run"
    runner.run(recipe, out, progress=False)
    with pytest.raises(ProbesError, match="already holds a finished run; pass --overwrite"):
        runner.run(recipe, out, progress=False)
    runner.run(recipe, out, progress=False, overwrite=True)

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(ProbesError, match="not a probes run directory"):
        runner.run(recipe, foreign, progress=False)
    with pytest.raises(ProbesError, match="refusing to delete"):
        runner.run(recipe, foreign, progress=False, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "precious"


def test_resume_refuses_a_changed_recipe(tmp_path):
    out = tmp_path / "run"
    runner.run(write_recipe(tmp_path), out, progress=False, stop_after_batches=1)
    changed = write_recipe(tmp_path, seed=4)
    with pytest.raises(ProbesError, match="the seed changed"):
        runner.run(changed, out, progress=False, resume=True)


def test_nan_from_the_model_names_the_step_and_keeps_finished_batches(tmp_path, monkeypatch):
    build = runner.build

    def poisoned(plan):
        ctx = build(plan)
        inner, calls = ctx.guided_denoiser, {"n": 0}

        def denoise(x, sigma, cond=None):
            calls["n"] += 1
            y = inner(x, sigma, cond)
            return y * float("nan") if calls["n"] > 30 else y  # the second batch goes bad

        return ctx.replace(guided_denoiser=FiniteCheck(denoise))

    monkeypatch.setattr(runner, "build", poisoned)
    out = tmp_path / "run"
    with pytest.raises(ProbesError, match=r"the model's denoiser returned NaN/inf at sigma="):
        runner.run(write_recipe(tmp_path), out, progress=False)
    assert (out / "batches" / "batch_00000.safetensors").exists()
    monkeypatch.setattr(runner, "build", build)
    runner.run(write_recipe(tmp_path), out, progress=False, resume=True)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"estimators": ["plugin", "magic"]}, "unknown estimator 'magic'"),
        ({"estimators": [{"name": "rollout", "kk": 3}]}, "estimator 'rollout' has no option 'kk'"),
        ({"taxonomy": "missing.yaml"}, "missing.yaml"),
        ({"model": {"kind": "gmm", "std": 1.0, "means": {"left-a": [0.0], "left-b": [1.0]}}}, "model.means: no mean"),
        ({"classifier": {"kind": "digits"}}, "classifier.kind: 'digits' does not read samples of model.kind 'gmm'"),
    ],
)
def test_cli_reports_bad_recipes_in_one_line(tmp_path, capsys, changes, message):
    code = main(["run", str(write_recipe(tmp_path, **changes)), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("probes: error: ") and message in err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # a recipe that fails to build leaves nothing behind


def test_cli_run_prints_the_decision_tree(tmp_path, capsys):
    recipe = write_recipe(tmp_path, sampling={"samples": 32, "batch_size": 32, "steps": 12})
    assert main(["run", str(recipe), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "decision-time tree" in out and "├── left" in out


def test_guided_leaf_conditional_run_and_compare(tmp_path, capsys):
    """Guidance moves the coarse decision to larger sigma (information is injected earlier), and
    `probes compare` locates the extra information above the unguided decision."""
    sampling = {"samples": 128, "batch_size": 64, "steps": 24, "sigma_max": 60.0, "sigma_min": 0.05,
                "condition": "leaf"}
    decisions = {}
    for scale in (1.0, 4.0):
        recipe = write_recipe(tmp_path, sampling={**sampling, "guidance": {"scale": scale}}, estimators=["exact"])
        result = runner.run(recipe, tmp_path / f"w{scale}", progress=False)
        decisions[scale] = result.decisions()["root"].decision_sigma
    assert decisions[4.0] > 1.3 * decisions[1.0]

    assert main(["compare", str(tmp_path / "w1.0"), str(tmp_path / "w4.0"), "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "level 1: dI peaks at +" in text and "root:" in text
    # B's plain estimator reads the unguided posterior at guided states, and the comparison says so
    assert "exact in A, exact:unguided_posterior in B" in text and "paired (same seeds" in text
    rows = read_csv(tmp_path / "cmp" / "compare.csv")
    coarse = [r for r in rows if r["level"] == "1"]
    peak = max(coarse, key=lambda r: float(r["delta_mutual_info"]))
    assert float(peak["delta_mutual_info"]) > 0.1
    assert decisions[1.0] < float(peak["sigma"]) < 60.0
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0


def test_compare_refuses_unfinished_runs(tmp_path):
    recipe = write_recipe(tmp_path)
    runner.run(recipe, tmp_path / "a", progress=False, stop_after_batches=1)
    with pytest.raises(ProbesError, match="the run is not finished"):
        probes.compare(tmp_path / "a", tmp_path / "a")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"prior": {"left-a": 1.0, "nowhere": 1.0}}, "prior: 'nowhere' is not a leaf of the taxonomy"),
        ({"prior": {"left-a": -1.0}}, "prior: weights must be finite, non-negative and not all zero"),
    ],
)
def test_bad_leaf_weights_name_the_field(tmp_path, changes, message):
    from probes.build import build
    from probes.plan import resolve

    with pytest.raises(ProbesError, match=message):
        build(resolve(write_recipe(tmp_path, **changes)))
    gmm = {"kind": "gmm", "dim": 4, "std": 0.5, "weights": {"bogus": 1.0},
           "hierarchy": {"separations": [6.0, 2.0]}}
    with pytest.raises(ProbesError, match="model.weights: 'bogus' is not a leaf"):
        build(resolve(write_recipe(tmp_path, model=gmm)))


def test_run_json_records_the_recipe_file_and_resolved_paths(tmp_path, monkeypatch):
    # A recipe in a sub-folder naming its taxonomy relative to itself, run from another folder.
    (tmp_path / "recipes").mkdir()
    (tmp_path / "taxa").mkdir()
    (tmp_path / "taxa" / "t.yaml").write_text((ROOT / "taxonomies" / "gmm-two-by-two.yaml").read_text())
    recipe = write_recipe(tmp_path / "recipes", taxonomy="../taxa/t.yaml", estimators=["exact"],
                          sampling={"samples": 8, "batch_size": 8, "steps": 6})
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    runner.run(recipe, tmp_path / "run", progress=False)
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert state["recipe_path"] == str(recipe.resolve())
    assert state["paths"] == {"taxonomy": str((tmp_path / "taxa" / "t.yaml").resolve())}
    assert state["recipe"]["taxonomy"] == "../taxa/t.yaml"  # as written, next to where it points


def test_run_json_charges_guidance_its_second_denoiser_call(tmp_path):
    recipe = write_recipe(tmp_path, estimators=["exact"],
                          sampling={"samples": 8, "batch_size": 4, "steps": 6, "condition": "leaf",
                                    "guidance": {"scale": 2.0}})
    result = runner.run(recipe, tmp_path / "run", progress=False)
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    # 8 samples x 6 steps, each guided step evaluated conditionally and unconditionally.
    assert state["calls"] == result.record["calls"] == {"sampling_denoiser": 2 * 8 * 6, "guided_denoiser": 8 * 6}
    assert state["sampling_denoiser_calls"] == 2 * 8 * 6


def test_progress_off_a_terminal_is_one_plain_line_per_batch(tmp_path, capsys):
    recipe = write_recipe(tmp_path, estimators=["exact"], sampling={"samples": 8, "batch_size": 4, "steps": 5})
    runner.run(recipe, tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("probes: probing")]
    assert [line.split(" done")[0] for line in lines] == ["probes: probing gmm-small: batch 1/2",
                                                          "probes: probing gmm-small: batch 2/2"]
    assert "\r" not in err


def test_progress_on_a_terminal_is_a_bar_counting_batches_with_the_step_beside_it():
    import io

    from probes.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    with Progress("probing x", total=2, unit="batch", stream=stream) as bar:
        bar.status("batch 1: sampling step 3/5")
        bar.advance()
    text = stream.getvalue()
    assert ("probing x" in text and "batch/s" in text) or "s/batch" in text
    assert "sampling step 3/5" in text and "?est" not in text
