"""Export formats (node-link JSON, GraphML, Newick) and the taxonomy CLI commands."""

import argparse
import json

import networkx as nx
import pytest

from probes.errors import ProbesError
from probes.taxonomy import (
    from_nested,
    from_newick,
    load_taxonomy,
    read_taxonomy,
    to_newick,
    to_node_link,
    write_taxonomy,
)
from probes.taxonomy.cli import add_taxonomy_commands
from probes.taxonomy.export import newick_name


@pytest.fixture
def decided():
    """A taxonomy with the attributes a decision-time tree carries."""
    tax = from_nested(
        {"animal": {"dog": ["beagle", "poodle"], "cat": ["tabby", "siamese"]},
         "vehicle": ["car", "truck", "bicycle"]},
        name="animals",
        leaves={"beagle": {"prompt": "a photo of a beagle", "wnid": "n02088364", "index": 4},
                "car": {"aliases": ["auto", "motorcar"], "label": "Car"}},
    ).copy()
    for i, node in enumerate(tax.internal_nodes):
        attrs = tax.graph.nodes[node]
        attrs["decision_sigma"] = 0.25 * (i + 1)
        attrs["window"] = [0.1 * (i + 1), 0.5 * (i + 1)]
        attrs["interval"] = [0.2, 3.0]
        attrs["n_samples"] = 100
        attrs["decided"] = i % 2 == 0
    return tax


def assert_same_tree(a, b):
    assert a.root == b.root and a.leaves == b.leaves and a.internal_nodes == b.internal_nodes
    for node in a.internal_nodes:
        assert a.children(node) == b.children(node)


# -- JSON -----------------------------------------------------------------------------------------
def test_node_link_shape(decided):
    data = to_node_link(decided)
    assert data["directed"] is True and data["multigraph"] is False
    assert data["graph"]["name"] == "animals" and data["graph"]["root"] == "root"
    assert "edges" in data and "links" not in data
    assert data["edges"][0] == {"source": "root", "target": "animal"}
    assert [n["id"] for n in data["nodes"]] == decided.nodes
    json.dumps(data, allow_nan=False)
    assert nx.node_link_graph(data, edges="edges").number_of_edges() == len(decided.nodes) - 1


def test_json_round_trip(decided, tmp_path):
    path = write_taxonomy(decided, tmp_path / "tree.json")
    back = read_taxonomy(path)
    assert back.name == "animals"
    assert_same_tree(decided, back)
    for node in decided.nodes:
        assert back.node_attrs(node) == decided.node_attrs(node)
    assert back.node_attrs("dog")["window"] == decided.node_attrs("dog")["window"]
    assert load_taxonomy(path).leaves == decided.leaves  # load_taxonomy reads exports too


def test_json_non_finite_floats_become_null(decided, tmp_path):
    decided.graph.nodes["dog"]["decision_sigma"] = float("nan")
    decided.graph.nodes["dog"]["window"] = [float("-inf"), 1.0]
    text = write_taxonomy(decided, tmp_path / "t.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = read_taxonomy(tmp_path / "t.json")
    assert back.node_attrs("dog")["decision_sigma"] is None
    assert back.node_attrs("dog")["window"] == [None, 1.0]


# -- GraphML --------------------------------------------------------------------------------------
def test_graphml_round_trip(decided, tmp_path):
    path = write_taxonomy(decided, tmp_path / "tree.graphml")
    back = read_taxonomy(path)
    assert back.name == "animals"
    assert_same_tree(decided, back)
    for node in decided.nodes:
        assert back.node_attrs(node) == decided.node_attrs(node), node
    attrs = back.node_attrs("root")
    assert isinstance(attrs["decision_sigma"], float) and isinstance(attrs["n_samples"], int)
    assert isinstance(attrs["decided"], bool) and isinstance(attrs["window"], list)
    raw = nx.read_graphml(path)  # other tools see plain GraphML with JSON strings for lists
    assert json.loads(raw.nodes["root"]["window"]) == attrs["window"]
    assert "prompts" in json.loads(raw.graph["json_attributes"])


def test_graphml_keeps_strings_that_look_like_json(tmp_path):
    tax = from_nested(["a", "b"], leaves={"a": {"label": "[1, 2]"}})
    back = read_taxonomy(write_taxonomy(tax, tmp_path / "t.graphml"))
    assert back.node_attrs("a")["label"] == "[1, 2]"


# -- Newick ---------------------------------------------------------------------------------------
def test_newick_round_trip_and_quoting(tmp_path):
    tax = from_nested({
        "big cats": ["lion", "snow leopard"],
        "it's (odd)": ["a:b", "c,d", "semi;colon", "[bracket]"],
        "dog.n.01": ["golden_retriever.n.01", "beagle.n.01"],
    }, name="odd")
    text = to_newick(tax)
    assert "'big cats'" in text and "'it''s (odd)'" in text and "'golden_retriever.n.01'" in text
    assert "beagle.n.01" in text and "'beagle.n.01'" not in text
    assert text.endswith("root;")
    back = from_newick(text, name="odd")
    assert_same_tree(tax, back)
    path = write_taxonomy(tax, tmp_path / "odd.nwk")
    assert_same_tree(tax, read_taxonomy(path))


def test_newick_name_rules():
    assert newick_name("beagle") == "beagle"
    assert newick_name("a b") == "'a b'"
    assert newick_name("o'clock") == "'o''clock'"
    assert newick_name("x_y") == "'x_y'"
    assert newick_name("") == "''"


def test_newick_branch_lengths(decided, tmp_path):
    sigma = {n: decided.graph.nodes[n].get("decision_sigma", 0.0) for n in decided.nodes}
    path = write_taxonomy(decided, tmp_path / "t.newick", "newick",
                          branch_length=lambda parent, child: sigma[parent] - sigma[child])
    text = path.read_text().strip()
    assert text.startswith("((") and "dog:" in text
    back = read_taxonomy(path)
    assert_same_tree(decided, back)
    # Newick holds the float64 length in round-trip form: relative 1e-12
    assert back.graph.edges["animal", "dog"]["branch_length"] == pytest.approx(
        sigma["animal"] - sigma["dog"], rel=1e-12)
    with pytest.raises(ProbesError, match="newick format only"):
        write_taxonomy(decided, tmp_path / "t.json", branch_length=lambda p, c: 1.0)


def test_newick_from_other_tools():
    tax = from_newick("((A,B)[a comment],(C_D:0.5,'E F':1e-1)CD)'the root';", name="ext")
    assert tax.root == "the root"
    assert tax.leaves == ["A", "B", "C D", "E F"]  # unquoted underscores are blanks
    assert tax.children("the root") == ["node1", "CD"]
    assert tax.graph.edges["CD", "E F"]["branch_length"] == pytest.approx(0.1, rel=1e-12)  # "1e-1" parsed


@pytest.mark.parametrize("text, expected", [
    ("(A,B)", "ending with ';'"),
    ("(A,B;", "expected ',' or ')'"),
    ("(A,A);", "appears twice"),
    ("('A,B);", "unclosed quoted name"),
    ("(A:x,B);", "bad branch length"),
    ("(A,B)[c;", "unclosed '['"),
])
def test_newick_errors(text, expected):
    with pytest.raises(ProbesError, match=expected.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        from_newick(text)


# -- files and formats ----------------------------------------------------------------------------
def test_format_errors(decided, tmp_path):
    with pytest.raises(ProbesError, match="cannot tell the format"):
        write_taxonomy(decided, tmp_path / "t.txt")
    with pytest.raises(ProbesError, match="unknown taxonomy format 'dot'"):
        write_taxonomy(decided, tmp_path / "t.dot", "dot")
    with pytest.raises(ProbesError, match="no such taxonomy file"):
        read_taxonomy(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"nodes": [\n')
    with pytest.raises(ProbesError, match=r"bad.json:2: invalid JSON"):
        read_taxonomy(tmp_path / "bad.json")
    (tmp_path / "bad.graphml").write_text("<graphml")
    with pytest.raises(ProbesError, match="not a readable GraphML"):
        read_taxonomy(tmp_path / "bad.graphml")
    (tmp_path / "dag.json").write_text(json.dumps({
        "directed": True, "multigraph": False, "graph": {},
        "nodes": [{"id": "r"}, {"id": "a"}, {"id": "b"}, {"id": "c"}],
        "edges": [{"source": "r", "target": "a"}, {"source": "r", "target": "b"},
                  {"source": "a", "target": "c"}, {"source": "b", "target": "c"}]}))
    with pytest.raises(ProbesError, match=r"dag.json: .*several parents"):
        read_taxonomy(tmp_path / "dag.json")


# -- CLI ------------------------------------------------------------------------------------------
@pytest.fixture
def cli():
    parser = argparse.ArgumentParser(prog="probes")
    add_taxonomy_commands(parser.add_subparsers(dest="command", required=True))

    def run(*argv):
        args = parser.parse_args(argv)
        return args.func(args)

    return run


def test_cli_show(cli, capsys):
    assert cli("taxonomy", "show", "digits-shape") == 0
    out = capsys.readouterr().out
    assert out.startswith("digits-shape: 10 leaves") and "levels:" not in out
    assert cli("taxonomy", "show", "digits-shape", "--levels") == 0
    assert "levels:\n  1: 3 cells" in capsys.readouterr().out


@pytest.mark.parametrize("fmt, suffix", [("json", "json"), ("graphml", "graphml"), ("newick", "nwk")])
def test_cli_export(cli, capsys, tmp_path, fmt, suffix):
    out = tmp_path / f"digits.{suffix}"
    assert cli("taxonomy", "export", "digits-shape", "--format", fmt, "-o", str(out)) == 0
    assert f"wrote {fmt} taxonomy 'digits-shape' (10 leaves)" in capsys.readouterr().out
    back = read_taxonomy(out, fmt)
    assert back.leaves == load_taxonomy("digits-shape").leaves
    if fmt != "newick":
        assert back.node_attrs("7")["index"] == 7


def test_cli_export_infers_format_and_reports_errors(cli, tmp_path):
    assert cli("taxonomy", "export", "animals-vehicles", "-o", str(tmp_path / "a.json")) == 0
    with pytest.raises(ProbesError, match="cannot tell the format"):
        cli("taxonomy", "export", "animals-vehicles", "-o", str(tmp_path / "a.txt"))
    with pytest.raises(ProbesError, match="no such taxonomy"):
        cli("taxonomy", "show", str(tmp_path / "missing.yaml"))
    with pytest.raises(SystemExit):
        cli("taxonomy", "export", "digits-shape", "--format", "dot", "-o", "x")


def test_cli_wordnet_setup(cli, capsys, tmp_path, monkeypatch):
    import nltk

    from probes.taxonomy import wordnet_data

    if not wordnet_data.has_debian_wordnet():
        pytest.skip("Debian's wordnet-base is not installed")
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    checked = []  # reading the copy with nltk is covered in test_taxonomy_wordnet.py
    monkeypatch.setattr(wordnet_data, "_check_readable", checked.append)
    dest = tmp_path / "nltk_data"
    assert cli("wordnet", "setup", "--source", "/usr/share/wordnet", "--dest", str(dest)) == 0
    out = capsys.readouterr().out
    assert "laid out in" in out and f"NLTK_DATA={dest}" in out
    assert (dest / "corpora" / "wordnet" / "lexnames").is_file()
    assert checked == [dest / "corpora" / "wordnet"]
    with pytest.raises(ProbesError, match="no such directory"):
        cli("wordnet", "setup", "--source", str(tmp_path / "none"), "--dest", str(dest))


@pytest.mark.slow
def test_cli_output_piped_into_head_is_not_an_error(tmp_path):
    """`probes taxonomy show BIG | head -1`: the reader leaves early; probes exits without an error line."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    big = tmp_path / "big.yaml"      # ~200 KB of rendered tree: more than a pipe buffer holds
    big.write_text("tree:\n" + "".join(f"  g{i}: [a{i}, b{i}]\n" for i in range(3000)))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", "import subprocess, sys; p = subprocess.Popen("
                           "[sys.executable, '-m', 'probes', 'taxonomy', 'show', sys.argv[1]], "
                           "stdout=subprocess.PIPE, stderr=subprocess.PIPE); p.stdout.readline(); "
                           "p.stdout.close(); sys.stderr.write(p.stderr.read().decode()); sys.exit(p.wait())",
                           str(big)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stderr == ""
    assert proc.returncode == 141
