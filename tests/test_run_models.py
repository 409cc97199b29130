"""`probes run` on the shipped digits model and on a tiny Stable Diffusion pipeline."""

import json
from pathlib import Path

import networkx as nx
import pytest
import yaml

import probes.runner as runner
from probes.cli import main
from probes.recipe import load_recipe
from probes.resources import find_shipped

ROOT = Path(__file__).resolve().parents[1]


def small_copy(tmp_path, recipe: str, **sampling) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / recipe).read_text())
    # The shipped recipes name shipped taxonomies, so a copy elsewhere needs no path rewriting.
    data["sampling"].update(sampling)
    path = tmp_path / recipe
    path.write_text(yaml.safe_dump(data))
    return path


def test_digits_recipe_runs_end_to_end(tmp_path):
    recipe = small_copy(tmp_path, "digits.yaml", samples=32, batch_size=16, steps=16)
    result = runner.run(recipe, tmp_path / "run", progress=False)
    assert result.record["status"] == "complete"
    assert set(result.estimates) == {"plugin", "bayes"}
    tree = nx.node_link_graph(json.loads((tmp_path / "run" / "tree.json").read_text()), edges="edges")
    assert sorted(n for n in tree if tree.out_degree(n) == 0) == [str(d) for d in range(10)]
    root = tree.graph["root"]
    assert tree.nodes[root]["decision_sigma"] > 0


def test_tiny_stable_diffusion_runs_end_to_end_and_reproduces(tmp_path):
    recipe = ROOT / "recipes" / "sd15-tiny.yaml"
    first = runner.run(recipe, tmp_path / "a", progress=False)
    assert set(first.estimates) == {"plugin", "rollout"}
    assert first.estimates["plugin"].classifier_calls == 8 * 6  # every 2nd of 12 grid points
    for name in ["curves.csv", "decisions.csv", "tree.json", "tree.graphml", "tree.nwk", "curves.png", "tree.png"]:
        assert (tmp_path / "a" / name).stat().st_size > 0
    runner.run(recipe, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "curves.csv").read_text() == (tmp_path / "b" / "curves.csv").read_text()


def test_missing_stable_diffusion_weights_fail_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = load_recipe(ROOT / "recipes" / "sd15.yaml")
    assert recipe.model.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    code = main(["run", "sd15", "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                    if line.startswith("probes:") and not line.startswith("probes: note:"))
    assert code == 2 and "\n" not in err and err.startswith("probes: error:")
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in err and "/path/to/stable-diffusion-v1-5" in err


def test_classifier_that_does_not_cover_the_taxonomy(tmp_path, capsys):
    recipe = small_copy(tmp_path, "digits.yaml", samples=8, batch_size=8, steps=8)
    data = yaml.safe_load(recipe.read_text())
    data["taxonomy"] = str(ROOT / "taxonomies" / "animals-vehicles.yaml")
    recipe.write_text(yaml.safe_dump(data))
    assert main(["run", str(recipe), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("probes: error: ") and "\n" not in err
    assert "beagle" in err


@pytest.mark.parametrize("recipe", ["sd15.yaml", "sd15-imagenet.yaml", "sd15-tiny.yaml", "digits.yaml"])
def test_model_recipes_point_at_shipped_taxonomies(recipe):
    r = load_recipe(ROOT / "recipes" / recipe)
    # Shipped recipes name shipped taxonomies, so a copy of the recipe anywhere still finds it.
    assert find_shipped("taxonomies", r.resolve_path(r.taxonomy)) is not None


def test_negative_prompt_shapes_generation_but_not_the_reading(tmp_path):
    from probes.build import build
    from probes.plan import resolve

    ctx = build(resolve(load_recipe(ROOT / "recipes" / "sd15-tiny.yaml")))
    plain, guided = ctx.denoiser.denoiser, ctx.guided_denoiser.denoiser  # inside the runs' finiteness checks
    assert plain.negative_prompt is None  # posteriors: the empty-prompt prediction
    assert guided.inner.negative_prompt == "blurry"  # guidance's unconditional branch
    assert guided.inner.pipe is plain.pipe  # one pipeline, loaded once


def test_digits_classifier_temperature_calibrates_on_held_out_digits(tmp_path):
    from probes.build import build
    from probes.plan import resolve

    recipe = small_copy(tmp_path, "digits.yaml")
    data = yaml.safe_load(recipe.read_text())
    data["classifier"]["temperature"] = "calibrate"
    recipe.write_text(yaml.safe_dump(data))
    parts = build(resolve(load_recipe(recipe)))
    # A well-trained classifier is close to calibrated, but the fit moves it off exactly 1.
    assert 0.3 < parts.classifier.temperature < 3.0 and parts.classifier.temperature != 1.0
