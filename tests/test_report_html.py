"""report.html: self-contained, loads in headless Chromium without console errors, not blank."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import probes
from probes.report.layout import place_labels

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def runs(guidance_runs):
    probes.compare(guidance_runs / "w1", guidance_runs / "w3").save(guidance_runs / "cmp")
    return guidance_runs


def test_the_report_is_self_contained_and_shows_every_node(runs):
    page = (runs / "w3" / "report.html").read_text()
    # No network and no external files: no src/href pointing anywhere but inline data.
    for ref in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert ref.startswith("data:"), ref
    assert "<script src" not in page and "http://" not in page and "https://" not in page
    tree = json.loads((runs / "w3" / "tree.json").read_text())
    internal = {e["source"] for e in tree["edges"]}
    # Every internal node is hoverable and its panel states its decision sigma (or undecided).
    assert page.count('class="node"') == len(internal)
    assert "decision σ" in page and "Sample quality" in page and "conditional accuracy" in page
    assert (runs / "cmp" / "report.html").is_file()


def test_labels_are_moved_until_they_do_not_overlap():
    anchors = [("alpha node", 100.0, 50.0), ("beta node", 104.0, 52.0), ("gamma", 300.0, 50.0)]
    pos = place_labels(anchors, height=13.0)
    (_ax, ay), (_bx, by), (_gx, gy) = pos
    assert abs(ay - by) >= 13.0  # the two near anchors' labels were stacked apart
    assert gy == pytest.approx(45.0, rel=1e-12)  # a free label stays where it was anchored (float64 offsets)


def _chromium(args: list[str], url: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", *args, url],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it as root)")
@pytest.mark.parametrize("page", ["w3/report.html", "cmp/report.html"])
def test_the_report_loads_in_chromium_without_errors_and_is_not_blank(runs, page, tmp_path):
    url = (runs / page).as_uri()
    dom = _chromium(["--dump-dom"], url)
    # The page's script marks the body when it ran to its end: a script error would stop it first.
    assert 'data-ready="1"' in dom.stdout
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,1400"], url)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    # Not blank: a good share of the pixels differ from the page background.
    background = np.median(pixels)
    assert (np.abs(pixels - background) > 40).mean() > 0.01


def test_image_runs_keep_previews_and_x0_strips(tmp_path):
    import torch
    from PIL import Image

    from probes.kept_samples import kept_from_batches
    from probes.report.samples import read_samples, write_samples
    from probes.taxonomy import load_taxonomy

    tax = load_taxonomy(str(ROOT / "taxonomies" / "digits-shape.yaml"))
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    strip = {"sigmas": [10.0, 1.0, 0.1], "samples": [0, 2], "x0_hat": torch.rand(3, 2, 1, 8, 8) * 2 - 1}
    batch = {"batch": 0, "n": 4, "batch_seed": 99, "leaf": torch.tensor([0, 1, 2, 3]), "x0": x0, "strip": strip}
    kept = kept_from_batches([batch], tax.leaves, classifier=None, decode=lambda x: x, device="cpu")
    assert len(kept) == 4 and write_samples(tmp_path, kept) == ["samples.csv", "previews", "strips"]
    rows = (tmp_path / "samples.csv").read_text().splitlines()
    assert rows[1].split(",")[:5] == ["0", "0", "99", "0", tax.leaves[0]]
    preview = Image.open(tmp_path / "previews" / "sample_00003.png")
    assert preview.size == (64, 64)  # 8x8 scaled up by repetition
    # The preview shows the sample: pixel (0, 0) of the sample, mapped from [-1, 1] to 0..255.
    expected = round((float(x0[3, 0, 0, 0]) + 1) * 127.5)
    assert abs(preview.getpixel((0, 0))[0] - expected) <= 1
    meta = json.loads((tmp_path / "strips" / "strips.json").read_text())
    assert meta["sigmas"] == [10.0, 1.0, 0.1] and [s["index"] for s in meta["strips"]] == [0, 2]
    assert Image.open(tmp_path / meta["strips"][1]["file"]).size == (3 * 64 + 2 * 4, 64)  # 3 frames, 2 gaps
    # and back: probes.load reads the kept samples as they were written
    back = read_samples(tmp_path)
    assert back.rows == kept.rows and np.array_equal(back.previews, kept.previews)
    assert back.strip_sigmas == kept.strip_sigmas and all(
        np.array_equal(a.frames, b.frames) and a.index == b.index for a, b in zip(back.strips, kept.strips))


VISIBILITY = """<script>
// appended by the test: every node label of the tree, with whether it is drawn where a reader sees it
var labels = [];
document.querySelectorAll('text.label').forEach(function(t){
  var r = t.getBoundingClientRect(), style = getComputedStyle(t);
  var visible = r.width > 0 && r.height > 0 && style.visibility !== 'hidden' && style.display !== 'none'
      && parseFloat(style.opacity || '1') > 0 && r.left >= 0 && r.right <= document.documentElement.scrollWidth;
  labels.push([t.getAttribute('data-node'), t.textContent, visible]);
});
document.body.setAttribute('data-labels', JSON.stringify(labels));
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/setup.sh installs it as root)")
def test_every_node_label_is_visible_text_with_its_decision_sigma(runs, tmp_path):
    """In Chromium, each internal node of the tree has a label drawn as text (not only a hover
    title), on the page, naming the node and its decision sigma as decisions.csv has it."""
    import html as html_module

    page = (runs / "w3" / "report.html").read_text().replace("</body>", VISIBILITY + "</body>")
    (tmp_path / "page.html").write_text(page)
    dom = _chromium(["--dump-dom"], (tmp_path / "page.html").as_uri()).stdout
    found = re.search(r'data-labels="([^"]*)"', dom)
    assert found, "the page did not run to its end"
    labels = {node: (text, visible) for node, text, visible in json.loads(html_module.unescape(found.group(1)))}
    tree = json.loads((runs / "w3" / "tree.json").read_text())  # written from the same decisions
    attrs = {n["id"]: n for n in tree["nodes"]}
    internal = {e["source"] for e in tree["edges"]}
    assert set(labels) == internal
    for node, (text, visible) in labels.items():
        assert visible, f"label of {node} is not visible"
        assert str(attrs[node].get("label", node)) in text
        if attrs[node].get("decision_sigma"):  # the value is on the page: three significant digits
            assert f"σ={attrs[node]['decision_sigma']:.3g}" in text, (node, text)
