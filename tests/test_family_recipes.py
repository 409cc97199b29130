"""Recipes of the pipeline families: missing weights fail fast in one line; a saved tiny pipeline
runs a recipe end to end; a folder of another pipeline class is refused before loading."""

import time
from pathlib import Path

import pytest
import tiny_pipelines as tp
import yaml

import probes.runner as runner
from probes.cli import main
from probes.families import FAMILIES, recipe_kinds
from probes.recipe import load_recipe
from probes.resources import find_shipped

ROOT = Path(__file__).resolve().parents[1]
FAMILY_RECIPES = {"sdxl.yaml": "sdxl", "sd3.yaml": "sd3", "flux.yaml": "flux", "pixart.yaml": "pixart",
                  "dit.yaml": "dit"}


@pytest.mark.parametrize("recipe", list(FAMILY_RECIPES))
def test_missing_weights_fail_within_seconds_in_one_line(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = load_recipe(ROOT / "recipes" / recipe)
    assert r.model.kind == FAMILY_RECIPES[recipe] and find_shipped("taxonomies", r.resolve_path(r.taxonomy)) is not None
    for extra in ([], ["--set", "model.model=/no/such/weights"]):
        start = time.process_time()  # CPU seconds: wall time on a shared machine measures the neighbours
        code = main(["run", str(ROOT / "recipes" / recipe), "--out", str(tmp_path / "o"), "--device", "cpu",
                     *extra])
        elapsed = time.process_time() - start
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and elapsed < 10
        assert (extra[1].split("=")[1] if extra else r.model.model) in err


def test_every_pipeline_family_has_a_recipe():
    kinds = {k for k, f in recipe_kinds().items() if f.pipelines} - {"stable-diffusion", "tiny-stable-diffusion"}
    assert kinds == set(FAMILY_RECIPES.values())
    assert all(f.recipe_models for f in FAMILIES.values())


def test_a_saved_tiny_dit_runs_the_dit_recipe(tmp_path):
    folder = tmp_path / "dit"
    tp.tiny_dit().save_pretrained(str(folder))
    data = yaml.safe_load((ROOT / "recipes" / "dit.yaml").read_text())
    data["taxonomy"] = str(ROOT / "taxonomies" / "animals-vehicles.yaml")
    data["model"] = {"kind": "dit", "model": str(folder), "dtype": "float32"}
    data["classifier"] = None
    data["device"] = "cpu"
    data["estimators"] = ["bayes"]
    data["analysis"] = {"primary": "bayes", "n_boot": 10}
    data["sampling"].update(samples=2, batch_size=2, steps=3)
    path = tmp_path / "dit.yaml"
    path.write_text(yaml.safe_dump(data))
    assert runner.run(path, tmp_path / "run", progress=False).record["status"] == "complete"
    assert (tmp_path / "run" / "tree.json").is_file()


def test_a_folder_of_another_pipeline_is_refused_before_loading(tmp_path, capsys):
    folder = tmp_path / "dit"
    tp.tiny_dit().save_pretrained(str(folder))
    code = main(["run", str(ROOT / "recipes" / "sdxl.yaml"), "--out", str(tmp_path / "o"), "--device", "cpu",
                 "--set", f"model.model={folder}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "holds a DiTPipeline, not a StableDiffusionXLPipeline" in err and "\n" not in err


def test_misspelt_family_fields_get_a_suggestion_from_the_registry():
    from probes.errors import ProbesError
    from probes.recipe import recipe_from_dict

    data = yaml.safe_load((ROOT / "recipes" / "sdxl.yaml").read_text())
    data["model"]["negative_promt"] = "blurry"
    with pytest.raises(ProbesError, match=r"model.negative_promt: unknown field \(did you mean 'negative_prompt'\?\)"):
        recipe_from_dict(data, source="sdxl.yaml")


def test_recipe_runs_load_as_probe_results(tmp_path):
    import probes

    data = yaml.safe_load((ROOT / "recipes" / "gmm-two-class.yaml").read_text())
    data["sampling"].update(samples=16, batch_size=8, steps=8)
    path = tmp_path / "gmm.yaml"
    path.write_text(yaml.safe_dump(data))
    runner.run(path, tmp_path / "run", progress=False)
    result = probes.load(tmp_path / "run")
    assert result.n_samples == 16 and set(result.estimates) == {e if isinstance(e, str) else e["name"]
                                                                 for e in data["estimators"]}
    assert (tmp_path / "run" / "curves.csv").read_text().count("\n") > 1
