"""Recipe -> components details a user meets first: prompts per leaf, float16 on a CPU."""

import pytest
import torch

from probes.components import build_components, leaf_prompt, resolve_dtype
from probes.errors import ProbesError
from probes.recipe import load_recipe
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


def test_float16_on_a_cpu_falls_back_to_float32_with_one_line(capsys):
    assert resolve_dtype("float16", torch.device("cpu")) == "float32"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "float16" in err and "float32" in err
    assert resolve_dtype("float16", torch.device("cuda")) == "float16"
    assert resolve_dtype("bfloat16", torch.device("cpu")) == "bfloat16"
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback is for machines without a GPU")
def test_the_sd15_recipe_loads_float32_on_a_machine_without_a_gpu(monkeypatch, capsys):
    import probes.models.stable_diffusion as sd

    seen = {}

    def fake_load(model, dtype, device):
        seen.update(model=model, dtype=dtype, device=device)
        raise ProbesError("stop here")

    monkeypatch.setattr(sd, "load_pipeline", fake_load)
    recipe = load_recipe("sd15")
    assert recipe.device == "auto" and recipe.model.dtype == "float16"
    with pytest.raises(ProbesError, match="stop here"):
        build_components(recipe)
    assert seen == {"model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "dtype": "float32", "device": "cpu"}
    assert "using float32" in capsys.readouterr().err
