"""Recipe schema: strict fields, one-line errors that name the field, paths relative to the file."""

from pathlib import Path

import pytest

from probes.errors import ProbesError
from probes.recipe import load_recipe, recipe_from_dict

BASE = {"taxonomy": "t.yaml", "model": {"kind": "digits"}, "classifier": {"kind": "digits"}}


def test_defaults_and_estimator_shorthand():
    r = recipe_from_dict({**BASE, "estimators": ["plugin", {"name": "rollout", "k": 4}]})
    assert [e.name for e in r.estimators] == ["plugin", "rollout"]
    assert r.estimators[1].options == {"k": 4}
    assert r.primary_estimator == "plugin"
    assert r.sampling.method == "ancestral"


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"sampling": {"stpes": 3}}, "sampling.stpes: unknown field (did you mean 'steps'?)"),
        ({"model": {"kind": "digitz"}}, "model: unknown kind 'digitz'"),
        ({"model": {"kind": "digits", "pth": "x"}}, "model.pth: unknown field (did you mean 'path'?)"),
        ({"model": {"kind": "gmm", "dim": 3}}, "model: give exactly one of 'means' (per leaf) or 'hierarchy'"),
        ({"sampling": {"method": "eulr"}}, "sampling.method:"),
        ({"sampling": {"guidance": {"interval": [3, 1]}}}, "sampling.guidance.interval:"),
        ({"estimators": ["plugin", "plugin"]}, "estimators are listed twice"),
        ({"analysis": {"primary": "bayes"}}, "analysis.primary 'bayes' is not among the estimators"),
        ({"sampling": {"samples": 0}}, "sampling.samples:"),
        ({"estimators": ["bayes"], "sampling": {"method": "heun"}}, "bayes estimator needs sampling.method: ancestral"),
    ],
)
def test_errors_name_the_field(change, expected):
    with pytest.raises(ProbesError) as err:
        recipe_from_dict({**BASE, **change}, "r.yaml")
    message = str(err.value)
    assert message.startswith("r.yaml: ")
    assert expected in message
    assert "\n" not in message


def test_missing_required_field():
    with pytest.raises(ProbesError, match="taxonomy: Field required"):
        recipe_from_dict({"model": {"kind": "digits"}}, "r.yaml")


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel: {kind: digits\n")
    with pytest.raises(ProbesError, match=r"bad.yaml:\d+: invalid YAML"):
        load_recipe(path)


def test_missing_file():
    with pytest.raises(ProbesError, match="nope.yaml: no such recipe"):
        load_recipe("nope.yaml")


def test_paths_resolve_against_the_recipe_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text("taxonomy: ../tax.yaml\nmodel: {kind: digits}\n")
    r = load_recipe(path)
    assert Path(r.resolve_path(r.taxonomy)) == (tmp_path / "tax.yaml").resolve()
    assert r.resolve_path("wordnet:imagenet-1k") == "wordnet:imagenet-1k"


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].joinpath("recipes").glob("*.yaml")))
def test_shipped_recipes_validate(path):
    load_recipe(path)


def test_overrides_set_nested_fields_and_are_validated(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("taxonomy: t.yaml\nmodel: {kind: digits}\n")
    r = load_recipe(path, ["sampling.guidance.scale=3", "sampling.guidance.interval=[0.3, 3]", "seed=7"])
    assert r.sampling.guidance.scale == 3.0 and r.sampling.guidance.interval == (0.3, 3.0) and r.seed == 7
    with pytest.raises(ProbesError, match="sampling.guidence: unknown field .did you mean 'guidance'"):
        load_recipe(path, ["sampling.guidence.scale=3"])
    with pytest.raises(ProbesError, match="expected key=value"):
        load_recipe(path, ["sampling.steps"])
    with pytest.raises(ProbesError, match="--set model.kind.x: 'kind' is not a mapping"):
        load_recipe(path, ["model.kind.x=1"])
