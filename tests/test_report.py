"""Run-directory writers and plots."""

import csv
import json
import math

import networkx as nx
import numpy as np
import pytest
import torch
from test_entropy_trees import make_taxonomy
from tolerances import magnitude

from probes import noise
from probes.entropy import decide, tree_entropy
from probes.report import (
    atomic_write_text,
    tree_heights,
    write_curves_csv,
    write_decisions_csv,
    write_run_json,
    write_tree,
)
from probes.report.rundir import CURVES_COLUMNS, DECISIONS_COLUMNS, newick_heights

SPEC = {
    "animal": {"dog": ["terrier", "poodle"], "cat": ["tabby", "siamese"]},
    "vehicle": {"car": ["sedan", "coupe", "van"], "boat": None},
    "plant": None,
}


def synthetic_run(tax, n=24, steps=30, seed=0):
    """Posteriors that resolve coarse splits at larger sigma than fine ones."""
    g = torch.Generator().manual_seed(seed)
    sigmas = noise.geometric_grid(50.0, 0.02, steps)
    leaves = tax.leaves
    dist = torch.tensor(
        [[tax.depth(a) + tax.depth(b) - 2 * tax.depth(tax.lca(a, b)) for b in leaves] for a in leaves],
        dtype=torch.float64,
    )
    y = torch.randint(len(leaves), (n,), generator=g)
    logits = -dist[y][:, None, :] * (3.0 / sigmas[None, :, None])
    logits = logits + 0.3 * torch.randn(n, steps, len(leaves), generator=g, dtype=torch.float64)
    return torch.log_softmax(logits, -1).float(), sigmas


@pytest.fixture(scope="module")
def run():
    tax = make_taxonomy(SPEC)
    lp, sigmas = synthetic_run(tax)
    curves = tree_entropy(lp, tax, sigmas)
    other = tree_entropy(synthetic_run(tax, seed=1)[0], tax, sigmas)
    decisions = decide(curves, n_boot=50)
    return tax, sigmas, {"plugin": curves, "exact": other}, decisions


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_curves_csv(tmp_path, run):
    tax, sigmas, by_est, _ = run
    path = write_curves_csv(tmp_path / "curves.csv", by_est)
    rows = read_csv(path)
    assert rows[0] == CURVES_COLUMNS
    body = rows[1:]
    D, K, S = tax.max_depth, len(tax.internal_nodes), len(sigmas)
    assert len(body) == 2 * (D + K) * S
    assert [r[0] for r in body] == sorted(r[0] for r in body)  # estimator order
    first = [r for r in body if r[0] == "exact"]
    assert [r[4] for r in first[: D * S]] == ["level"] * (D * S)
    assert first[0][5] == "1" and first[D * S][5] == tax.root
    sig = [float(r[1]) for r in first[:S]]
    # CSV floats round-trip exactly; what separates the two sides is float64 rounding of the grid,
    # the axis conversions and one subtraction: relative 1e-12 (1e-12 of 1 for a difference near 0)
    assert sig == sorted(sig, reverse=True) and sig[0] == pytest.approx(50.0, rel=1e-12)
    c = by_est["exact"]
    assert float(first[0][6]) == c.level_mean()[0, 0]  # exact round trip
    assert float(first[0][2]) == pytest.approx(noise.vp_time(50.0), rel=1e-12)
    assert float(first[0][3]) == pytest.approx(-2 * math.log(50.0), rel=1e-12)
    mutual_info = c.prior_levels[0] - c.level_mean()[0, 0]
    assert float(first[0][8]) == pytest.approx(mutual_info, rel=1e-12, abs=1e-12 * magnitude(c.prior_levels))
    assert first[0][9] == str(c.n_samples)


def test_decisions_csv(tmp_path, run):
    _, _, _by_est, decisions = run
    path = write_decisions_csv(tmp_path / "decisions.csv", {"plugin": decisions})
    rows = read_csv(path)
    assert rows[0] == DECISIONS_COLUMNS
    root = next(r for r in rows if r[1] == "node" and r[2] == "root")
    d = decisions["nodes"]["root"]
    assert float(root[3]) == d.decision_sigma
    assert float(root[4]) <= float(root[3]) <= float(root[5])
    assert root[11] in ("true", "false")
    # undecided nodes keep their row with empty values
    empty = dict(decisions)
    empty["nodes"] = {**decisions["nodes"], "root": None}
    rows = read_csv(write_decisions_csv(tmp_path / "d2.csv", {"x": empty}))
    root = next(r for r in rows if r[1] == "node" and r[2] == "root")
    assert root[3:12] == [""] * 9
    assert root[12:] == ["log_sigma", "", ""]


def test_coarse_decides_before_fine(run):
    _, _, _, decisions = run
    nodes = decisions["nodes"]
    assert nodes["root"].decision_sigma > nodes["animal"].decision_sigma
    assert nodes["animal"].decision_sigma > nodes["dog"].decision_sigma


def test_write_tree(tmp_path, run):
    tax, sigmas, _, decisions = run
    paths = write_tree(tmp_path, tax, decisions, sigma_min=float(sigmas.min()))
    assert set(paths) == {"json", "graphml", "newick"}
    for p in paths.values():
        assert p.exists() and p.stat().st_size > 0
    data = json.loads((tmp_path / "tree.json").read_text())
    g = nx.node_link_graph(data, edges="edges")
    assert set(g.nodes) == set(tax.graph.nodes)
    root = g.nodes["root"]
    d = decisions["nodes"]["root"]
    # JSON holds floats in round-trip form: the same numbers, to 1e-12 of each
    assert root["decision_sigma"] == pytest.approx(d.decision_sigma, rel=1e-12)
    assert list(root["window"]) == pytest.approx(list(d.window), rel=1e-12)
    assert list(root["interval"]) == pytest.approx(list(d.interval), rel=1e-12)
    assert root["decision_vp_time"] == pytest.approx(d.vp_time, rel=1e-12)
    assert root["decision_log_snr"] == pytest.approx(d.log_snr, rel=1e-12, abs=1e-12)
    assert "decision_sigma" not in g.nodes["terrier"]
    assert tax.graph.nodes["root"].get("decision_sigma") is None  # the input is not modified
    newick = (tmp_path / "tree.nwk").read_text().strip()
    assert newick.endswith(";") and "terrier" in newick
    # without sigma_min, leaves sit at the grid's smallest sigma recorded in the decisions
    write_tree(tmp_path / "default", tax, decisions)
    data = json.loads((tmp_path / "default" / "tree.json").read_text())
    assert data["graph"]["leaf_sigma"] == pytest.approx(float(sigmas.min()), rel=1e-12)
    h = tree_heights(tax, decisions, float(sigmas.min()))
    # log10 of the same float64 numbers: 1e-12 of the heights' magnitude (|log10 sigma| < 2)
    assert h["terrier"] == pytest.approx(math.log10(float(sigmas.min())), rel=0, abs=1e-12 * magnitude(h["terrier"]))
    assert h["root"] == pytest.approx(math.log10(d.decision_sigma), rel=0, abs=1e-12 * magnitude(h["root"]))


def test_run_json_and_atomic_write(tmp_path):
    payload = {"name": "x", "value": float("nan"), "arr": np.arange(3), "t": torch.tensor([1.5]),
               "path": tmp_path, "versions": {"model": "v1"}}
    path = write_run_json(tmp_path / "run.json", payload)
    data = json.loads(path.read_text())
    assert data["value"] is None and data["arr"] == [0, 1, 2] and data["t"] == [1.5]
    v = data["versions"]
    assert (v["model"] == "v1" and v["torch"] == torch.__version__.split("+")[0]) or v["torch"]
    assert {"probes", "torch", "numpy", "python", "diffusers", "open_clip", "timm"} <= set(v)
    assert "versions" in payload and "model" in payload["versions"]  # caller's dict untouched
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "run.json"]  # no temp left


def _png_ok(path):
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plots(tmp_path, run):
    from probes.report.plots import plot_curves, plot_rates, plot_tree

    tax, sigmas, by_est, decisions = run
    assert _png_ok(plot_curves(tmp_path / "curves.png", by_est))
    assert _png_ok(plot_tree(tmp_path / "tree.png", tax, decisions, sigma_min=float(sigmas.min())))
    assert _png_ok(plot_rates(tmp_path / "rates.png", by_est["plugin"], decisions))


def test_plot_tree_large_tree(tmp_path):
    from probes.report.plots import plot_tree

    spec = {f"g{i}": {f"f{i}_{j}": [f"l{i}_{j}_{k}" for k in range(6)] for j in range(5)} for i in range(8)}
    tax = make_taxonomy(spec)
    assert len(tax.leaves) == 240
    lp, sigmas = synthetic_run(tax, n=8, steps=12)
    decisions = decide(tree_entropy(lp, tax, sigmas), n_boot=0)
    assert _png_ok(plot_tree(tmp_path / "big.png", tax, decisions))


def test_child_deciding_before_parent_gives_no_negative_branch(tmp_path, run):
    """Swap decisions so 'dog' decides at a larger sigma than 'animal' and 'root': every Newick
    branch stays >= 0 (the child sits at its lowest-deciding ancestor's height in tree.nwk only),
    and tree.json's tree_sigma is the drawn height, the node's own decision sigma."""
    from dataclasses import replace

    from probes.taxonomy.export import from_newick

    tax, sigmas, _, decisions = run
    nodes = dict(decisions["nodes"])
    nodes["dog"] = replace(nodes["dog"], decision_sigma=nodes["root"].decision_sigma * 3)
    early = {"nodes": nodes, "levels": decisions["levels"]}
    write_tree(tmp_path, tax, early, sigma_min=float(sigmas.min()))
    parsed = from_newick((tmp_path / "tree.nwk").read_text())
    lengths = [d["branch_length"] for _, _, d in parsed.graph.edges(data=True)]
    assert lengths and min(lengths) >= 0
    assert parsed.graph.edges["animal", "dog"]["branch_length"] == pytest.approx(0.0, abs=1e-12)
    g = nx.node_link_graph(json.loads((tmp_path / "tree.json").read_text()), edges="edges")
    assert g.nodes["dog"]["decision_sigma"] == pytest.approx(nodes["dog"].decision_sigma)  # kept
    assert g.nodes["dog"]["tree_sigma"] == pytest.approx(nodes["dog"].decision_sigma)  # drawn where it decides
    drawn = tree_heights(tax, early, float(sigmas.min()))
    for n in tax.internal_nodes:
        assert math.log10(g.nodes[n]["tree_sigma"]) == pytest.approx(drawn[n])
    h = newick_heights(tax, early, float(sigmas.min()))
    assert h["dog"] == pytest.approx(h["animal"]) and h["dog"] < drawn["dog"]
    # Newick holds float64 numbers in round-trip form; sums of branch lengths round: 1e-12 of the
    # heights' magnitude (|log10 sigma| < 2)
    tol = 1e-12 * magnitude(list(h.values()))
    # path lengths root -> leaf all equal the root's height above the leaves (an ultrametric tree)
    depth = nx.shortest_path_length(parsed.graph, "root", weight="branch_length")
    for leaf in tax.leaves:
        assert depth[leaf] == pytest.approx(h["root"] - math.log10(float(sigmas.min())), rel=0, abs=tol)

