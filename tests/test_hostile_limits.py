"""The limits added against hostile input leave valid input alone: numbers written as numbers,
an earlier comparison's folder, a shard of unresolved entropies, a stride that keeps two sigmas,
names that only look alike to a careless eye. (The hostile inputs themselves are cases of the
table in ``hostile_cases.py``, run by ``test_hostile.py``.)"""

from __future__ import annotations

import pytest
import torch
from hostile_cases import RECIPE, recipe

from probes.errors import ProbesError

GMM = {"kind": "gmm", "dim": 3, "hierarchy": {"separations": [3.0, 1.0]}}


def _recipe(**fields):
    from probes.recipe import recipe_from_dict

    return recipe_from_dict({"taxonomy": "t.yaml", "model": GMM, **fields}, source="r.yaml")


def test_numbers_written_as_numbers_still_validate():
    r = _recipe(sampling={"samples": 8.0, "sigma_max": 20, "guidance": {"interval": [0.5, 2]}}, threads="auto",
                prior={"a": 1, "b": 2})
    assert r.sampling.samples == 8 and r.sampling.sigma_max == 20.0 and r.prior == {"a": 1.0, "b": 2.0}
    assert _recipe(threads=2).threads == 2
    from probes.recipe import recipe_from_dict

    imagenet = recipe_from_dict({"taxonomy": "t.yaml", "model": {"kind": "digits"},
                                 "classifier": {"kind": "imagenet", "pretrained": True}}, source="r.yaml")
    assert imagenet.classifier.pretrained is True  # a field that takes a boolean keeps it


@pytest.mark.parametrize("fields, where", [
    ({"sampling": {"steps": True}}, "sampling.steps: expected a number, got the boolean true"),
    ({"seed": "3"}, "seed: expected a number, got the text '3'"),
    ({"model": dict(GMM, hierarchy={"separations": [3.0, False]})}, "model.hierarchy.separations: expected a number"),
    ({"model": dict(GMM, weights={"a": "1"})}, "model.weights: expected a number, got the text '1'"),
    ({"sampling": {"guidance": {"interval": [True, 2]}}}, "sampling.guidance.interval: expected a number"),
])
def test_booleans_and_quoted_numbers_name_their_field(fields, where):
    if "model" in fields:
        from probes.recipe import recipe_from_dict

        call = lambda: recipe_from_dict({"taxonomy": "t.yaml", **fields}, source="r.yaml")
    else:
        call = lambda: _recipe(**fields)
    with pytest.raises(ProbesError) as err:
        call()
    assert str(err.value).startswith(f"r.yaml: {where}")


def test_a_union_names_the_field_of_the_section_given(tmp_path):
    with pytest.raises(ProbesError, match=r"sampling\.grid\.from_run: String should have at least 1 character"):
        _recipe(sampling={"grid": {"from_run": ""}})
    with pytest.raises(ProbesError, match=r"prior\.literal\['uniform'\]: Input should be 'uniform'"):
        _recipe(prior="gaussian")  # a word where a word or a mapping goes: the word's message


def test_compare_out_may_replace_an_earlier_comparison(tmp_path, one_thread):
    import probes
    import probes.runner as runner

    runner.run(recipe(tmp_path, RECIPE), tmp_path / "run", progress=False)
    for _ in range(2):  # the second call finds only compare's own files there
        probes.compare(tmp_path / "run", tmp_path / "run", n_boot=0).save(tmp_path / "cmp")
    assert (tmp_path / "cmp" / "compare.json").is_file()


def _entropy_result(n: int, seed: int):
    from probes.estimators.base import EstimatorOutput
    from probes.result import ProbeResult
    from probes.taxonomy import from_nested

    tax = from_nested({"left": ["a", "b"], "right": ["c", "d"]}, name="t")
    sigmas = torch.logspace(1, -1, 5, dtype=torch.float64)
    levels = torch.rand(n, 5, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    levels[:, :, 1] = float("nan")  # the fine level unresolved everywhere, as immse reports it
    nodes = torch.full((n, 5, 3), float("nan"), dtype=torch.float64)
    out = EstimatorOutput("immse", sigmas, levels=levels, nodes=nodes,
                          prior_levels=torch.tensor([0.69, 1.39], dtype=torch.float64),
                          prior_nodes=torch.full((3,), 0.69, dtype=torch.float64))
    return ProbeResult(taxonomy=tax, estimates={"immse": out})


def test_merge_does_not_take_unresolved_rows_for_repeats():
    import probes

    merged = probes.merge_results([_entropy_result(3, 0), _entropy_result(2, 1)])
    assert merged.n_samples == 5
    blank = [_entropy_result(2, k) for k in (0, 1)]
    for r in blank:
        r.estimates["immse"].levels[:] = float("nan")  # nothing resolved: no sample to recognise
    assert probes.merge_results(blank).n_samples == 4
    a = _entropy_result(3, 0)
    with pytest.raises(ProbesError, match="the same shard twice"):
        probes.merge_results([a, _entropy_result(3, 0)])  # equal draws: the same shard


def test_a_stride_must_keep_two_sigmas():
    from probes.estimators import build_estimator

    build_estimator("plugin", sigma_stride=7).check_grid(8)  # keeps sigmas 0 and 7
    build_estimator("plugin").check_grid(1)  # a one-step pipeline stays probeable
    with pytest.raises(ProbesError, match="sigma_stride 8 keeps 1 of the 8 sigmas; at most 7 keeps two"):
        build_estimator("plugin", sigma_stride=8).check_grid(8)


def test_names_that_only_look_alike_to_a_careless_eye_are_kept():
    from probes.taxonomy import from_nested

    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # one emoji joined with zero-width joiners
    tax = from_nested({"x": ["a", "A"], "y": [family, "\u00e9"]})
    assert tax.leaves == ["a", "A", family, "\u00e9"]
    with pytest.raises(ProbesError, match="look the same"):
        from_nested(["\ufb01sh", "fish"])  # the ligature reads as "fish"


def test_a_result_is_saved_twice_into_one_folder(tmp_path):
    from probes.result import load

    result = _entropy_result(3, 0)
    result.save(tmp_path / "saved", n_boot=0)
    result.save(tmp_path / "saved", n_boot=0)
    assert load(tmp_path / "saved").n_samples == 3


def test_torchrun_numbers_are_read_from_the_environment(monkeypatch):
    from probes.distributed import env_int

    monkeypatch.setenv("LOCAL_RANK", " 3 ")
    assert env_int("LOCAL_RANK", 0) == 3
    monkeypatch.setenv("LOCAL_RANK", "")
    assert env_int("LOCAL_RANK", 0) == 0
    monkeypatch.setenv("LOCAL_RANK", "-1")
    with pytest.raises(ProbesError, match="LOCAL_RANK='-1'"):
        env_int("LOCAL_RANK", 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "0")  # a count of processes (it divides the CPU threads)
    with pytest.raises(ProbesError, match="LOCAL_WORLD_SIZE='0': expected a positive whole number"):
        env_int("LOCAL_WORLD_SIZE", 2)


def test_a_tuple_of_estimators_and_a_zero_separation_still_validate():
    # the Python API's tuples, and a level whose children coincide (a split nothing can decide)
    r = _recipe(estimators=("exact", {"name": "plugin"}))
    assert [e.name for e in r.estimators] == ["exact", "plugin"]
    from probes.recipe import recipe_from_dict

    r = recipe_from_dict({"taxonomy": "t.yaml", "model": dict(GMM, hierarchy={"separations": [3.0, 0.0]})},
                         source="r.yaml")
    assert r.model.hierarchy.separations == [3.0, 0.0]
    with pytest.raises(ProbesError, match="model.hierarchy.separations.0: Input should be greater than or equal to 0"):
        recipe_from_dict({"taxonomy": "t.yaml", "model": dict(GMM, hierarchy={"separations": [-3.0, 1.0]})},
                         source="r.yaml")



def test_a_stride_past_the_grid_is_refused_before_the_model_is_built(tmp_path, monkeypatch, capsys):
    import probes.runner
    from probes.cli import main

    built = []
    monkeypatch.setattr(probes.runner, "build", lambda plan: built.append(plan) or 1 / 0)
    text = RECIPE.replace("estimators: [exact]", "estimators: [{name: exact, sigma_stride: 8}]")  # 8 steps
    assert main(["run", recipe(tmp_path, text), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "sigma_stride 8 keeps 1 of the 8 sigmas" in capsys.readouterr().err
    assert built == []  # a real model would have been loaded for nothing
