"""A recipe resolved once: prompts per leaf, float16 on a CPU, paths relative to the recipe file."""

import json
import shutil

import pytest
import torch

from probes.build import build, leaf_prompt
from probes.errors import ProbesError
from probes.plan import resolve
from probes.recipe import load_recipe
from probes.resources import find_shipped
from probes.taxonomy import from_nested, load_taxonomy


def test_leaf_prompt_uses_the_taxonomy_s_curated_prompt():
    tax = load_taxonomy("animals-vehicles")
    assert tax.node_attrs("poodle")["prompts"] == ["a photo of a standard poodle"]
    assert leaf_prompt("a photo of a {leaf}", tax, "poodle") == "a photo of a standard poodle"  # not "poodle"


def test_leaf_prompt_without_a_curated_prompt_fills_the_label_with_the_right_article():
    tax = from_nested({"vehicle": ["ambulance", "fire-engine"], "animal": ["owl", "cat"]}, name="t",
                      leaves={"fire-engine": {"label": "fire engine"}})
    assert leaf_prompt("a photo of a {leaf}", tax, "ambulance") == "a photo of an ambulance"
    assert leaf_prompt("A {leaf} at night", tax, "ambulance") == "An ambulance at night"
    assert leaf_prompt("a photo of a {leaf}", tax, "fire-engine") == "a photo of a fire engine"
    assert leaf_prompt("{leaf}, studio light", tax, "ambulance") == "ambulance, studio light"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without a GPU")
@pytest.mark.parametrize("recipe", ["sd15", "sdxl", "pixart"])
def test_a_float16_recipe_runs_in_float32_on_a_machine_without_a_gpu(recipe, monkeypatch, capsys):
    import probes.families.base as base

    seen = {}

    def fake_load(model, dtype, device, pipeline):
        seen.update(model=model, dtype=dtype, device=device)
        raise ProbesError("stop here")

    monkeypatch.setattr(base, "load_pipeline", fake_load)
    loaded = load_recipe(recipe)
    assert loaded.device == "auto" and loaded.model.dtype == "float16"
    plan = resolve(loaded)
    assert plan.model.dtype == "float32" and len(plan.notes) == 1 and "float16" in plan.notes[0]
    with pytest.raises(ProbesError, match="stop here"):
        build(plan)
    assert seen == {"model": loaded.model.model, "dtype": "float32", "device": "cpu"}
    assert capsys.readouterr().err == ""  # a model that fails to load says only that


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without a GPU")
def test_the_float32_fallback_is_said_once_in_one_line_when_the_model_loads(monkeypatch, capsys):
    import probes.families.base as base
    from probes.models.tiny_sd import build_tiny_pipeline

    monkeypatch.setattr(base, "load_pipeline", lambda model, dtype, device, pipeline: build_tiny_pipeline())
    tiny_clip = ["classifier.model=probes-tiny-clip", "classifier.pretrained=null"]  # no weights to download
    build(resolve(load_recipe("sd15", overrides=tiny_clip)))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("probes: note: model.dtype float16") and "float32" in err


def test_bfloat16_stays_as_asked(tmp_path, capsys):
    source = find_shipped("recipes", "flux")
    plan = resolve(load_recipe(source))
    assert plan.model.dtype == "bfloat16" and capsys.readouterr().err == ""


def test_a_recipe_copied_elsewhere_finds_its_model_beside_itself_from_any_working_directory(tmp_path, monkeypatch):
    """``model.model: ./weights`` means the folder beside the recipe file, whatever the cwd."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(find_shipped("recipes", "sdxl"), folder / "recipe.yaml")
    text = (folder / "recipe.yaml").read_text()
    (folder / "recipe.yaml").write_text(text.replace("model: stabilityai/stable-diffusion-xl-base-1.0",
                                                     "model: ./weights/sdxl"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    plan = resolve(load_recipe(folder / "recipe.yaml"))
    assert plan.model.model == str(folder / "weights" / "sdxl")
    assert plan.paths["model.model"] == str(folder / "weights" / "sdxl")


def test_a_plan_is_frozen_and_names_what_the_run_needs_of_the_model():
    plan = resolve("digits")
    with pytest.raises(AttributeError):
        plan.seed = 3
    assert plan.needs_unconditional.startswith("sampling.condition: none")
    assert [e.name for e in plan.estimators] == ["plugin", "bayes"]


def test_a_copied_recipe_runs_its_model_by_a_path_relative_to_itself_from_any_working_directory(tmp_path,
                                                                                                   monkeypatch):
    """The issue users hit: a recipe copied next to its weights, run from elsewhere."""
    from probes.cli import main
    from probes.models.tiny_sd import save_tiny_pipeline

    project = tmp_path / "project"
    save_tiny_pipeline(project / "weights" / "tiny-sd", seed=0)
    (project / "recipe.yaml").write_text(
        "name: copied\ntaxonomy: animals-vehicles\nmodel: {kind: stable-diffusion, model: ./weights/tiny-sd}\n"
        "classifier: {kind: clip, model: probes-tiny-clip, templates: simple}\n"
        "sampling: {samples: 2, batch_size: 2, steps: 4, method: ddim}\nestimators: [plugin]\nanalysis: {n_boot: 0}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", str(project / "recipe.yaml"), "--out", "run", "--quiet"]) == 0
    state = json.loads((elsewhere / "run" / "run.json").read_text())
    assert state["paths"]["model.model"] == str(project / "weights" / "tiny-sd")


def test_every_command_says_what_it_does():
    import argparse

    from probes.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield " ".join([*path, name]), sub
                    yield from walk(sub, [*path, name])

    commands = dict(walk(build_parser(), ["probes"]))
    assert {"probes run", "probes compare", "probes interval", "probes plot", "probes recipes", "probes taxonomies",
            "probes train", "probes train digits"} <= set(commands)
    assert [name for name, sub in commands.items() if not (sub.description or "").strip()] == []
