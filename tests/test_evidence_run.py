"""Evidence maps through a run: the recipe option, evidence.safetensors, load/save, refusals.

The run draws an image-shaped Gaussian mixture whose classes differ only in known regions, so the
file's maps have exact answers: each node's evidence lies in its own region, and every map's
spatial sum is the filter's log-odds of the sample's child (read from posteriors.safetensors, not
from the code that wrote the maps).
"""

import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import probes
import probes.runner as runner
from probes.errors import ProbesError

# Images [2, 4, 6] over root -> A, B -> a1, a2 | b1, b2: the groups differ only in rows 0-1, the
# leaves of a group only in rows 2-3 (separations 3 and 2, std 0.5).
TAXONOMY = {"name": "four", "tree": {"A": ["a1", "a2"], "B": ["b1", "b2"]}}
REGION_ROWS = {"root": (0, 2), "A": (2, 4), "B": (2, 4)}
RECIPE = {
    "name": "regions", "seed": 3, "taxonomy": "four.yaml",
    "model": {"kind": "gmm", "shape": [2, 4, 6], "std": 0.5,
              "hierarchy": {"separations": [3.0, 2.0],
                            "regions": [{"rows": [0, 2], "cols": [0, 6]}, {"rows": [2, 4], "cols": [0, 6]}]}},
    "classifier": {"kind": "exact"},
    "sampling": {"samples": 48, "batch_size": 16, "steps": 32},
    "estimators": ["bayes", "plugin"],
    "analysis": {"n_boot": 0, "evidence_maps": True},
}


def recipe(tmp: Path, **changes) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "four.yaml").write_text(yaml.safe_dump(TAXONOMY))
    data = yaml.safe_load(yaml.safe_dump(RECIPE))
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[key] = value
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("evidence")
    runner.run(recipe(tmp), tmp / "run", progress=False)
    return tmp / "run"


def test_each_nodes_evidence_lies_in_its_own_region(run_dir):
    files = load_file(run_dir / "evidence.safetensors")
    for node, (top, bottom) in REGION_ROWS.items():
        maps = files[f"maps/{node}"].double()  # [samples, sigmas, H, W], NaN off the node's path
        on_path = ~maps[:, -1].isnan().all(-1).all(-1)
        assert on_path.sum() >= (48 if node == "root" else 10), node
        magnitude = maps[on_path].abs()
        inside = magnitude[..., top:bottom, :].sum((-1, -2))
        total = magnitude.sum((-1, -2))
        # The classes differ nowhere else: all of it is inside (the issue asks for 90%).
        share = inside[:, 1:] / total[:, 1:]
        assert share.min() >= 0.9999, (node, float(share.min()))


def test_every_maps_spatial_sum_is_the_filters_log_odds_from_the_posteriors_file(run_dir):
    files = load_file(run_dir / "evidence.safetensors")
    post = load_file(run_dir / "posteriors.safetensors")["estimates/bayes/log_probs"].double()  # [N, S, 4]
    sets = {"root": {"A": [0, 1], "B": [2, 3]}, "A": {"a1": [0], "a2": [1]}, "B": {"b1": [2], "b2": [3]}}
    final = files["final_leaf"]
    for node, children in sets.items():
        names = list(children)
        child = files[f"child/{node}"]
        maps = files[f"maps/{node}"].double()
        for i in range(len(final)):
            if child[i] < 0:
                assert all(int(final[i]) not in js for js in children.values()), node  # off the node's path
                continue
            mine = children[names[int(child[i])]]
            others = [j for c, js in children.items() if c != names[int(child[i])] for j in js]
            log_odds = post[i, :, mine].logsumexp(-1) - post[i, :, others].logsumexp(-1)
            spatial = maps[i].sum((-1, -2))
            want = log_odds - log_odds[0]
            # posteriors are stored in float32 (an ulp of a log-probability near -30 is 2e-6) and
            # the maps in float32 summed over 24 positions: 1e-5 of the magnitudes involved
            scale = 1 + log_odds.abs().max() + maps[i].abs().sum((-1, -2)).max()
            assert (spatial - want).abs().max() <= 1e-5 * scale, (node, i)


def test_commitment_and_final_leaf_in_the_file(run_dir):
    files = load_file(run_dir / "evidence.safetensors")
    sigmas = files["sigmas"]
    assert torch.all(sigmas[:-1] > sigmas[1:])
    leaf = load_file(run_dir / "posteriors.safetensors")["estimates/bayes/log_probs"][:, -1].argmax(-1)
    assert torch.equal(files["final_leaf"], leaf)  # model samples: the leaf of largest final posterior
    for node in REGION_ROWS:
        maps, when = files[f"maps/{node}"].double(), files[f"commitment/{node}"].double()
        assert when.shape == (48, 4, 6)
        final = maps[:, -1]
        # independent recomputation at every position: the first grid point where the evidence in
        # the final direction reaches half its final value, interpolated in log sigma
        for i, r, c in [(i, r, c) for i in range(0, 48, 7) for r in range(4) for c in range(6)]:
            e, f = maps[i, :, r, c], final[i, r, c]
            if math.isnan(f) or f == 0:
                assert math.isnan(when[i, r, c])
                continue
            toward = e * math.copysign(1, f) - abs(f) / 2
            k = int(torch.nonzero(toward >= 0)[0])
            if k == 0:
                expected = float(sigmas[0])
            else:
                t = float(-toward[k - 1] / (toward[k] - toward[k - 1]))
                expected = math.exp(math.log(sigmas[k - 1]) + t * (math.log(sigmas[k]) - math.log(sigmas[k - 1])))
            assert when[i, r, c] == pytest.approx(expected, rel=1e-6), (node, i, r, c)  # float32 storage


def test_load_reads_the_maps_back_and_save_writes_the_same_file(run_dir, tmp_path):
    result = probes.load(run_dir)
    name, maps = result.evidence_maps()
    assert name == "bayes"
    files = load_file(run_dir / "evidence.safetensors")
    assert torch.equal(maps.maps["A"].nan_to_num(7.0), files["maps/A"].nan_to_num(7.0))
    result.save(tmp_path / "copy")
    assert (tmp_path / "copy" / "evidence.safetensors").read_bytes() == (run_dir / "evidence.safetensors").read_bytes()
    assert (tmp_path / "copy" / "evidence.png").is_file()
    assert "Where: evidence maps" in (run_dir / "report.html").read_text()


def test_a_damaged_evidence_file_is_one_line_naming_it(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    data = bytearray((copy / "evidence.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (copy / "evidence.safetensors").write_bytes(bytes(data))
    with pytest.raises(ProbesError, match=r"evidence\.safetensors: checksum mismatch"):
        probes.load(copy)


def test_resume_keeps_the_maps_of_finished_batches(run_dir, tmp_path):
    runner.run(recipe(tmp_path), tmp_path / "run", progress=False, stop_after_batches=1)
    runner.run(recipe(tmp_path), tmp_path / "run", progress=False, resume=True)
    a, b = load_file(run_dir / "evidence.safetensors"), load_file(tmp_path / "run" / "evidence.safetensors")
    assert all(torch.equal(a[k].nan_to_num(7.0), b[k].nan_to_num(7.0)) for k in a)


def test_turning_the_maps_on_is_a_changed_recipe_for_resume(tmp_path):
    runner.run(recipe(tmp_path, **{"analysis.evidence_maps": False}), tmp_path / "run", progress=False,
               stop_after_batches=1)
    with pytest.raises(ProbesError, match="the recipe changed"):
        runner.run(recipe(tmp_path), tmp_path / "run", progress=False, resume=True)


@pytest.mark.parametrize(("changes", "message"), [
    ({"estimators": ["plugin"]}, r"analysis\.evidence_maps: the maps are the bayes estimator's"),
    ({"estimators": [{"name": "bayes", "track": 2}]}, r"analysis\.evidence_maps: .*drop the bayes estimator's track"),
    ({"model": {"kind": "gmm", "dim": 48, "std": 0.5, "hierarchy": {"separations": [3.0, 2.0]}}},
     r"analysis\.evidence_maps: the maps are per image position; this model's samples are \[48\]"),
    ({"model.hierarchy.regions": [{"rows": [0, 2], "cols": [0, 6]}, {"rows": [2, 5], "cols": [0, 6]}]},
     r"model\.hierarchy\.regions\[1\]: rows \[2, 5\] / cols \[0, 6\] reach outside the 4 x 6 image"),
    ({"model.hierarchy.regions": [{"rows": [0, 2], "cols": [0, 6]}]}, r"model\.hierarchy\.regions: need one per level"),
    ({"model.hierarchy.regions": [{"rows": [2, 2], "cols": [0, 6]}, {"rows": [2, 4], "cols": [0, 6]}]},
     r"rows: \[start, stop\] needs stop > start"),
    ({"model.shape": [2, 4]}, r"model\.shape"),
    ({"model.dim": 47}, r"dim 47 is not the 48 values of shape"),
])
def test_bad_evidence_recipes_are_one_line_before_any_file(tmp_path, changes, message):
    with pytest.raises(ProbesError, match=message):
        runner.run(recipe(tmp_path, **changes), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_digits_section_of_the_docs_is_the_scripts_output():
    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "evidence.md").read_text()
    start, end = doc.index("<!-- generated: python scripts/evidence_docs.py -->"), doc.index("<!-- end generated -->")
    block = doc[start:end]
    for figure in ("digits_evidence.png", "digits_commit_ecdf.png", "digits_commit_pairs.png"):
        assert f"(evidence/{figure})" in block and (root / "docs" / "evidence" / figure).is_file()
    assert "| without maps |" in block and "| with maps |" in block
