"""Every entry point returns a result object and writes the file set docs/outputs.md lists:
``probes run``, ``probes.run(...)``, ``probes.probe(...).save()``, ``probes.load(...).save()`` and
``probes compare``; and directories written by earlier versions still load (committed fixtures)."""

import csv
import json
import re
from pathlib import Path

import pytest
import torch

import probes
from probes.cli import main
from probes.report.files import EVIDENCE_FILES, RESULT_FILES, SAMPLE_FILES

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
RUN_ONLY = {".probes-run", "batches"}


def listing(folder: Path) -> set[str]:
    """Top-level entries, and the files inside previews/ and strips/ counted by name."""
    names = set()
    for entry in folder.iterdir():
        names.add(entry.name)
        if entry.name in ("previews", "strips"):
            names |= {f"{entry.name}/{p.name}" for p in entry.iterdir()}
    return names


def documented(section: str) -> set[str]:
    """The entries docs/outputs.md lists in the code block after ``section``."""
    text = (ROOT / "docs" / "outputs.md").read_text()
    block = text.split(section, 1)[1].split("```", 2)[1]
    # entries are indented two spaces; deeper lines continue the description above them
    names = {m.group(1).rstrip("/") for m in map(re.compile(r"^  (\S+)").match, block.splitlines()) if m}
    return {name for name in names if not name.startswith(("<", "("))}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("entry") / "run"
    assert main(["run", "digits", "--out", str(out), "--quiet", "--set", "sampling.samples=12",
                 "--set", "sampling.batch_size=6", "--set", "sampling.steps=8", "--set", "analysis.n_boot=10",
                 "--set", "analysis.evidence_maps=true"]) == 0
    return out


def test_the_cli_run_writes_the_result_files_plus_its_batches(digits_run):
    names = listing(digits_run)
    assert set(RESULT_FILES) | set(SAMPLE_FILES) | set(EVIDENCE_FILES) | RUN_ONLY <= {n.split("/")[0] for n in names}
    assert {n.split("/")[0] for n in names} - RUN_ONLY == documented("## A saved result")


def test_probes_run_returns_a_result_whose_save_writes_the_same_files(tmp_path):
    recipe = probes.load_recipe("gmm-two-class")
    result = probes.run(recipe, tmp_path / "run", progress=False)
    assert isinstance(result, probes.ProbeResult) and result.directory == tmp_path / "run"
    result.save(tmp_path / "saved")
    assert listing(tmp_path / "saved") == listing(tmp_path / "run") - RUN_ONLY
    for name in ("curves.csv", "decisions.csv", "tree.json", "tree.nwk", "summary.txt", "posteriors.safetensors",
                 "taxonomy.json"):
        assert (tmp_path / "saved" / name).read_bytes() == (tmp_path / "run" / name).read_bytes(), name
    # the saved copy loads back to the same numbers and the same provenance
    back = probes.load(tmp_path / "saved")
    assert torch.equal(back.log_posteriors(), result.log_posteriors()) and back.meta["kind"] == "run"
    assert back.decisions()["root"].decision_sigma == result.decisions()["root"].decision_sigma


def test_a_loaded_run_saves_its_samples_previews_and_strips_again(digits_run, tmp_path):
    result = probes.load(digits_run)
    assert result.samples is not None and len(result.samples) == 12 and result.samples.strips
    result.save(tmp_path / "again")
    assert listing(tmp_path / "again") == listing(digits_run) - RUN_ONLY
    for name in ("samples.csv", "curves.csv", "decisions.csv", "strips/strips.json", "previews/sample_00003.png"):
        assert (tmp_path / "again" / name).read_bytes() == (digits_run / name).read_bytes(), name


def test_a_probe_of_a_pipeline_keeps_samples_and_saves_the_documented_files(tmp_path):
    import tiny_pipelines as tp

    pipe = tp.family_pipe("stable-diffusion")
    tax = probes.load_taxonomy("animals-vehicles")

    def classifier(images):  # any callable images -> logits over the leaves
        return images.mean((1, 2, 3))[:, None] * torch.arange(len(tax.leaves), dtype=torch.float32)

    result = probes.probe(pipe, tax, classifier=classifier, prompt=["a cat", "a dog"], num_inference_steps=4,
                          generator=[torch.Generator().manual_seed(s) for s in (5, 6)])
    assert result.samples is not None and [r["batch_seed"] for r in result.samples.rows] == [5, 6]
    assert [r["condition"] for r in result.samples.rows] == ["a cat", "a dog"]
    assert result.samples.strips and result.samples.previews.shape[0] == 2
    result.save(tmp_path / "probe")
    names = {n.split("/")[0] for n in listing(tmp_path / "probe")}
    assert names == documented("## A saved result") - set(EVIDENCE_FILES)  # a probe has no Bayes filter
    page = (tmp_path / "probe" / "report.html").read_text()
    assert "probes probe" in page and "seed 5" in page


def test_compare_writes_its_documented_files_and_returns_a_comparison(tmp_path):
    a = probes.run("gmm-two-class", tmp_path / "a", progress=False)
    comparison = probes.compare(a, tmp_path / "a", n_boot=20)
    assert isinstance(comparison, probes.Comparison) and "Comparison" in repr(comparison)
    comparison.save(tmp_path / "cmp")
    assert listing(tmp_path / "cmp") == documented("## probes compare")


def test_results_print_short_and_say_where_their_files_are(tmp_path):
    result = probes.run("gmm-hierarchy", tmp_path / "run", progress=False)
    text = repr(result)
    assert len(text) < 400 and "\n" not in text and str(tmp_path / "run") in text
    printed = str(result)
    assert "decision-time tree" in printed and len(printed) < 4000


@pytest.mark.parametrize("fixture", ["run-0.1.0-gmm", "run-0.1.0-digits"])
def test_directories_written_by_earlier_versions_still_load_to_their_numbers(fixture):
    """Fixtures written by probes 0.1.0 (the format before results became objects): the loaded
    posteriors give the curves that version wrote into curves.csv."""
    folder = FIXTURES / fixture
    result = probes.load(folder)
    state = json.loads((folder / "run.json").read_text())
    assert result.meta["kind"] == "run" and result.n_samples == state["n_samples"]
    with open(folder / "curves.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "level"]
    for name in result.estimates:
        curves = result.entropy(name)
        mean = curves.level_mean()
        mine = {(float(s), str(level)): mean[i, k] for i, s in enumerate(curves.sigmas)
                for k, level in enumerate(curves.level_names)}
        theirs = [r for r in rows if r["estimator"] == result.names_in_files[name]]
        assert theirs
        for r in theirs:
            # the same float64 arithmetic on the same float32 posteriors: equal to the last bit but
            # for summation order, so 1e-12 nats
            assert abs(mine[(float(r["sigma"]), r["name"])] - float(r["entropy"])) <= 1e-12 + 1e-12 * abs(
                float(r["entropy"])), (name, r)
    if (folder / "samples.csv").is_file():
        assert result.samples is not None and len(result.samples) == result.n_samples


def test_the_documented_file_sets_name_only_real_files():
    assert documented("## A saved result") >= set(RESULT_FILES) | set(SAMPLE_FILES) | set(EVIDENCE_FILES)
    assert re.search(r"\bprobes plot RUN --format pdf\b", (ROOT / "docs" / "outputs.md").read_text())


def test_quiet_means_quiet_also_for_the_libraries(tmp_path, capfd):
    """The tiny CLIP of sd15-tiny has no pretrained weights, which open_clip logs as a warning."""
    assert main(["run", "sd15-tiny", "--out", str(tmp_path / "run"), "--quiet", "--set", "sampling.samples=2",
                 "--set", "sampling.batch_size=2", "--set", "sampling.steps=8", "--set", "analysis.n_boot=0"]) == 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""
