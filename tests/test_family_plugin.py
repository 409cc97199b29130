"""A model family from another package: docs/families.md's worked example, installed with pip into
a folder of its own and run through ``probes run`` from its entry point."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "class_unet_family"


def test_the_docs_show_the_example_as_it_is():
    doc = (ROOT / "docs" / "families.md").read_text()
    blocks = re.findall(r"```(?:toml|python)\n(.*?)```", doc, flags=re.S)
    assert (EXAMPLE / "pyproject.toml").read_text() in blocks
    assert (EXAMPLE / "class_unet_family.py").read_text() in blocks


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example installed by pip (no index, no dependencies: probes and diffusers are here)."""
    site = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                           "--no-build-isolation", "--target", str(site), str(EXAMPLE)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (site / "class_unet_family.py").is_file()
    return site


def _probes(site: Path, cwd: Path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "probes", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def test_an_installed_family_runs_a_recipe_by_its_kind(installed, tmp_path):
    from probes.models.digits import DEFAULT_DIR

    # The shipped digits UNet is such a folder: a class-conditional UNet2DModel with null class 10.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: plugin\ntaxonomy: digits-shape\n"
                      f"model: {{kind: class-unet, path: {DEFAULT_DIR}, null_class: 10}}\n"
                      "sampling: {samples: 8, batch_size: 8, steps: 6, condition: leaf}\n"
                      "estimators: [bayes]\nanalysis: {n_boot: 0}\n")
    done = _probes(installed, tmp_path, "run", str(recipe), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "decision-time tree (bayes estimator, 8 samples)" in done.stdout
    state = json.loads((tmp_path / "run" / "run.json").read_text())
    assert state["status"] == "complete" and state["recipe"]["model"]["kind"] == "class-unet"


def test_the_installed_family_s_own_errors_are_one_line(installed, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("taxonomy: digits-shape\nmodel: {kind: class-unet, path: ./nowhere}\nestimators: [bayes]\n"
                      "sampling: {condition: leaf}\n")
    done = _probes(installed, tmp_path, "run", str(recipe), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"probes: error: model.path: {tmp_path / 'nowhere'} holds no unet/ and "
                                   "scheduler/ (diffusers' save_pretrained)")


def test_a_broken_plugin_is_named_and_left_out(tmp_path):
    """An entry point whose module fails to import: one line on stderr, every other family works."""
    dist = tmp_path / "broken_family-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-family\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[probes.families]\nbroken = broken_family:Broken\n")
    (tmp_path / "broken_family.py").write_text("raise ImportError('a dependency is missing')\n")
    done = _probes(tmp_path, tmp_path, "recipes")
    assert done.returncode == 0 and "digits" in done.stdout
    assert done.stderr.strip() == ("probes: warning: family entry point 'broken' (broken_family:Broken) not loaded: "
                                   "a dependency is missing")
