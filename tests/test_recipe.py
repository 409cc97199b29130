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
    with pytest.raises(ProbesError, match="nope.yaml: no such recipe file or shipped recipe"):
        load_recipe("nope.yaml")


def test_a_bare_name_that_is_no_recipe_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProbesError) as err:
        load_recipe("digitz")
    message = str(err.value)
    assert "\n" not in message and message.startswith("digitz: no such recipe")
    assert "digits, digits-guidance" in message and "sd15" in message


def test_shipped_recipes_load_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = load_recipe("digits")
    assert r.name == "digits" and r._source.name == "digits.yaml"
    assert r._source.parent.name == "recipes" and (r._source.parent.parent / "probes").is_dir()
    (tmp_path / "digits").mkdir()  # a folder of that name is not a recipe file: the name still wins
    assert load_recipe("digits")._source == r._source
    (tmp_path / "mine.yaml").write_text("name: mine\ntaxonomy: digits-shape\nmodel: {kind: digits}\n")
    assert load_recipe("mine.yaml").name == "mine"  # a path works as before


def test_paths_resolve_against_the_recipe_file(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text("taxonomy: ../tax.yaml\nmodel: {kind: digits}\n")
    r = load_recipe(path)
    assert Path(r.resolve_path(r.taxonomy)) == (tmp_path / "tax.yaml").resolve()
    assert r.resolve_path("wordnet:imagenet-1k") == "wordnet:imagenet-1k"


def test_every_path_resolves_against_the_recipe_file_not_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "weights").mkdir()
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "recipes" / "r.yaml"
    path.write_text("taxonomy: digits-shape\nmodel: {kind: stable-diffusion, model: weights}\n"
                    "classifier: {kind: clip, pretrained: laion2b_s34b_b79k}\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "weights").mkdir()  # a decoy in the working directory
    r = load_recipe(path)
    paths = r.resolved_paths()
    assert paths["model.model"] == str((tmp_path / "recipes" / "weights").resolve())
    assert paths["taxonomy"] == "digits-shape"                       # a shipped name stays a name
    assert paths["classifier.pretrained"] == "laion2b_s34b_b79k"      # an open_clip tag stays a tag
    assert r.resolve_path("owner/model") == "owner/model"             # a hub id stays a hub id
    # Values that read as paths resolve beside the recipe even when missing, so errors name that place.
    assert r.resolve_path("./missing") == str((tmp_path / "recipes" / "missing").resolve())
    assert r.resolve_path("net.pkl") == str((tmp_path / "recipes" / "net.pkl").resolve())
    assert r.resolve_path("a/b/c") == str((tmp_path / "recipes" / "a" / "b" / "c").resolve())
    assert r.resolve_path("/abs/x.pkl") == "/abs/x.pkl"


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].joinpath("probes", "recipes").glob("*.yaml")))
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


def test_library_errors_are_quoted_whole_or_cut_between_words():
    from probes.errors import quote_library_error

    wrapped = OSError("Error no file named diffusion_pytorch_model.bin found\nin directory /weights/unet.")
    expected = "Error no file named diffusion_pytorch_model.bin found in directory /weights/unet."
    assert quote_library_error(wrapped) == expected
    long = ValueError(" ".join(f"word{i}" for i in range(200)))
    quoted = quote_library_error(long, limit=100)
    assert quoted.endswith(" ...") and len(quoted) <= 104
    kept = quoted.removesuffix(" ...").split(" ")
    assert kept == [f"word{i}" for i in range(len(kept))]  # every word whole, none cut
    assert quote_library_error(KeyError()) == "KeyError"
