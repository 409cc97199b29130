"""Taxonomy tree operations and the nested YAML form (offline, fast)."""

import textwrap
from pathlib import Path

import networkx as nx
import pytest

from probes.errors import ProbesError
from probes.taxonomy import Taxonomy, from_nested, load_taxonomy, shipped_taxonomies
from probes.taxonomy.tree import collapse_chains
from probes.taxonomy.yaml_source import parse_yaml_taxonomy

REPO = Path(__file__).resolve().parents[1]

ANIMALS = """\
name: animals-and-vehicles
tree:
  animal:
    dog: [beagle, poodle]
    cat: [tabby, siamese]
  vehicle: [car, truck, bicycle]
leaves:
  beagle: {prompt: "a photo of a beagle", wnid: n02088364}
"""


@pytest.fixture
def tax():
    return parse_yaml_taxonomy(ANIMALS, source="animals.yaml")


def write(tmp_path, text, name="t.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ProbesError) as info:
        load_taxonomy(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# -- structure ----------------------------------------------------------------------------------
def test_structure(tax):
    assert tax.name == "animals-and-vehicles" and tax.root == "root"
    assert tax.leaves == ["beagle", "poodle", "tabby", "siamese", "car", "truck", "bicycle"]
    assert tax.internal_nodes == ["root", "animal", "dog", "cat", "vehicle"]
    assert tax.nodes[:3] == ["root", "animal", "dog"]
    assert tax.children("animal") == ["dog", "cat"] and tax.children("beagle") == []
    assert tax.parent("dog") == "animal" and tax.parent("root") is None
    assert tax.depth("root") == 0 and tax.depth("beagle") == 3 and tax.depth("car") == 2
    assert tax.max_depth == 3
    assert tax.is_leaf("car") and not tax.is_leaf("vehicle")
    assert tax.leaves_under("animal") == ["beagle", "poodle", "tabby", "siamese"]
    assert tax.leaves_under("car") == ["car"]
    assert tax.leaves[tax.leaf_slice("vehicle")] == ["car", "truck", "bicycle"]
    assert isinstance(tax.graph, nx.DiGraph) and tax.graph.has_edge("animal", "dog")
    assert "dog" in tax and "wolf" not in tax
    assert tax.graph.graph["name"] == tax.name and tax.graph.graph["root"] == "root"


def test_level_cut_and_partition(tax):
    assert tax.level_cut(1) == {
        "beagle": "animal", "poodle": "animal", "tabby": "animal", "siamese": "animal",
        "car": "vehicle", "truck": "vehicle", "bicycle": "vehicle",
    }
    cut2 = tax.level_cut(2)
    assert cut2["beagle"] == "dog" and cut2["siamese"] == "cat" and cut2["car"] == "car"
    assert tax.level_cut(3) == {leaf: leaf for leaf in tax.leaves}  # shallower leaves map to themselves
    assert list(tax.level_cut(1)) == tax.leaves
    assert tax.level_nodes(2) == ["dog", "cat", "car", "truck", "bicycle"]
    assert tax.level_cut(0) == dict.fromkeys(tax.leaves, "root")
    for bad in (-1, 4):
        with pytest.raises(ProbesError, match="level"):
            tax.level_cut(bad)
    cut = tax.level_cut(1)
    cut["beagle"] = "changed"  # callers get a copy of the cached cut
    assert tax.level_cut(1)["beagle"] == "animal"
    assert tax.partition("root") == {
        "animal": ["beagle", "poodle", "tabby", "siamese"], "vehicle": ["car", "truck", "bicycle"],
    }
    assert list(tax.partition("animal")) == ["dog", "cat"]
    with pytest.raises(ProbesError, match="leaf"):
        tax.partition("car")


def test_lca_and_ancestors(tax):
    assert tax.lca("beagle", "poodle") == "dog"
    assert tax.lca("beagle", "tabby") == "animal"
    assert tax.lca("beagle", "car") == "root"
    assert tax.lca("dog", "beagle") == "dog"
    assert tax.lca("car", "car") == "car"
    assert tax.ancestors("beagle") == ["root", "animal", "dog"]
    assert tax.ancestors("root") == []
    with pytest.raises(ProbesError, match="unknown node 'wolf'"):
        tax.ancestors("wolf")


def test_restrict_collapses_chains(tax):
    sub = tax.restrict(["beagle", "poodle", "car"])
    assert sub.root == "root" and sub.leaves == ["beagle", "poodle", "car"]
    # animal had one child left (dog): dog moves up, animal goes
    assert sub.children("root") == ["dog", "car"] and "animal" not in sub
    assert sub.node_attrs("beagle")["wnid"] == "n02088364"
    # the root keeps its id and takes over a single internal child
    dogs = tax.restrict(["poodle", "beagle"])
    assert dogs.root == "root" and dogs.children("root") == ["beagle", "poodle"]
    assert dogs.max_depth == 1
    one = tax.restrict(["car"])
    assert one.leaves == ["car"] and one.internal_nodes == ["root"]
    for internal in sub.internal_nodes:
        assert len(sub.children(internal)) >= 2
    assert tax.leaves == ["beagle", "poodle", "tabby", "siamese", "car", "truck", "bicycle"]
    with pytest.raises(ProbesError, match="not a leaf"):
        tax.restrict(["dog"])
    with pytest.raises(ProbesError, match="unknown node"):
        tax.restrict(["wolf"])
    with pytest.raises(ProbesError, match="no leaves"):
        tax.restrict([])


def test_collapse_chains_without_keeping_root():
    g = nx.DiGraph([("top", "a"), ("a", "b"), ("b", "x"), ("b", "c"), ("c", "d"), ("d", "y"),
                    ("d", "z")])
    out, root = collapse_chains(g, "top", keep_root=False)
    assert root == "b"
    assert list(out.successors("b")) == ["x", "d"] and list(out.successors("d")) == ["y", "z"]
    kept, root = collapse_chains(g, "top", keep_root=True)
    assert root == "top" and list(kept.successors("top")) == ["x", "d"]


def test_render(tax):
    text = tax.render()
    lines = text.splitlines()
    assert lines[0].startswith("animals-and-vehicles: 7 leaves, 5 internal nodes, depth 3")
    assert lines[1] == "root (7 leaves)"
    assert "├── animal (4 leaves)" in text and "│   ├── dog (2 leaves)" in text
    assert "│   │   ├── beagle" in text and "└── vehicle (3 leaves)" in text
    assert "    └── bicycle" in text
    assert "levels:" not in text
    levels = tax.render(levels=True)
    assert "levels:" in levels
    assert "  1: 2 cells: animal (4), vehicle (3)" in levels
    assert "  2: 5 cells: dog (2), cat (2), car, truck, bicycle" in levels


def test_copy_is_independent(tax):
    other = tax.copy()
    other.graph.nodes["dog"]["decision_sigma"] = 2.5
    other.graph.nodes["beagle"]["prompts"].append("another")
    assert "decision_sigma" not in tax.graph.nodes["dog"]
    assert tax.node_attrs("beagle")["prompts"] == ["a photo of a beagle"]
    assert other.leaves == tax.leaves and other.name == tax.name


def test_node_attrs(tax):
    attrs = tax.node_attrs("beagle")
    assert attrs == {"label": "beagle", "prompts": ["a photo of a beagle"], "aliases": [],
                     "wnid": "n02088364"}
    attrs["prompts"].append("x")
    assert tax.node_attrs("beagle")["prompts"] == ["a photo of a beagle"]
    assert tax.node_attrs("dog") == {"label": "dog", "prompts": [], "aliases": []}
    assert tax.label("beagle") == "beagle"


def test_constructor_validates_and_normalises():
    g = nx.DiGraph([("r", "a"), ("r", "b")])
    g.nodes["a"]["prompt"] = "a photo of a"
    t = Taxonomy(g, name="small")
    assert t.node_attrs("a")["prompts"] == ["a photo of a"] and "prompt" not in t.graph.nodes["a"]
    with pytest.raises(ProbesError, match="several parents"):
        Taxonomy(nx.DiGraph([("r", "a"), ("r", "b"), ("a", "c"), ("b", "c")]))
    with pytest.raises(ProbesError, match="several roots"):
        Taxonomy(nx.DiGraph([("r", "a"), ("s", "b")]))
    with pytest.raises(ProbesError, match="cycle"):
        Taxonomy(nx.DiGraph([("a", "b"), ("b", "a")]))
    with pytest.raises(ProbesError, match="not a string"):
        Taxonomy(nx.DiGraph([("r", 1), ("r", 2)]))
    with pytest.raises(ProbesError, match="empty"):
        Taxonomy(nx.DiGraph())


def test_from_nested():
    t = from_nested({"a": ["x", "y"], "b": ["z", "w"]}, name="toy")
    assert t.name == "toy" and t.leaves == ["x", "y", "z", "w"]
    assert t.level_nodes(1) == ["a", "b"]


# -- YAML forms -----------------------------------------------------------------------------------
def test_yaml_mixed_nodes_metadata_and_root(tmp_path):
    path = write(tmp_path, """\
        name: mixed
        root: everything
        tree:
          vehicle: [car, {boat: [canoe, yacht]}, bicycle]
          plant: {tree: [oak, pine]}
          0: [1, "2"]
        leaves:
          canoe: {prompts: ["a canoe", "a photo of a canoe"], aliases: kayak, index: 3, label: Canoe}
          "1": {prompt: one}
        nodes:
          boat: {label: "a boat", prompt: "a photo of a boat", synset: boat.n.01, wnid: n02858304}
          everything: {description: the root}
        """)
    t = load_taxonomy(path)
    assert t.root == "everything" and t.name == "mixed"
    assert t.children("vehicle") == ["car", "boat", "bicycle"]
    assert t.leaves == ["car", "canoe", "yacht", "bicycle", "oak", "pine", "1", "2"]
    assert t.children("everything") == ["vehicle", "plant", "0"]
    assert t.node_attrs("canoe") == {"label": "Canoe", "prompts": ["a canoe", "a photo of a canoe"],
                                     "aliases": ["kayak"], "index": 3}
    assert t.node_attrs("1")["prompts"] == ["one"]
    assert t.node_attrs("boat")["prompts"] == ["a photo of a boat"]
    assert t.node_attrs("boat")["wnid"] == "n02858304"
    assert t.node_attrs("everything")["description"] == "the root"
    assert all(type(n) is str for n in t.graph)  # no YAML helper types leak out


def test_yaml_flat_list_and_default_name(tmp_path):
    t = load_taxonomy(write(tmp_path, "tree: [a, b, c]\n", name="flat.yaml"))
    assert t.name == "flat" and t.leaves == ["a", "b", "c"] and t.max_depth == 1


def test_shipped_taxonomies():
    names = shipped_taxonomies()
    assert {"digits-shape", "animals-vehicles", "imagenet-1k", "imagenet-mixed-16"} <= set(names)
    digits = load_taxonomy(REPO / "taxonomies" / "digits-shape.yaml")
    assert sorted(digits.leaves) == [str(i) for i in range(10)]
    assert all(digits.node_attrs(str(i))["index"] == i for i in range(10))
    assert 2 <= digits.max_depth <= 3 and len(digits.children(digits.root)) >= 2
    animals = load_taxonomy("animals-vehicles")  # a shipped name
    assert animals.level_nodes(1) == ["animal", "vehicle"]
    for leaf in animals.leaves:
        attrs = animals.node_attrs(leaf)
        assert attrs["prompts"] and attrs["wnid"].startswith("n") and len(attrs["wnid"]) == 9


def test_shipped_animals_wnids_are_imagenet():
    from probes.taxonomy.wordnet import imagenet_wnids

    wnids = set(imagenet_wnids())
    animals = load_taxonomy("animals-vehicles")
    assert {animals.node_attrs(leaf)["wnid"] for leaf in animals.leaves} <= wnids


# -- errors: one line naming the file and the problem ---------------------------------------------
def test_error_missing_file(tmp_path):
    with pytest.raises(ProbesError, match="no such taxonomy file"):
        load_taxonomy(tmp_path / "nope.yaml")
    with pytest.raises(ProbesError, match="no such taxonomy file or shipped taxonomy"):
        load_taxonomy("no-such-taxonomy")


def test_error_invalid_yaml_has_line(tmp_path):
    message = error_of(tmp_path, "name: x\ntree:\n  a: [b, c\n  d: [e]\n")
    assert "invalid YAML" in message and ":4:" in message


def test_error_leaf_twice(tmp_path):
    message = error_of(tmp_path, "tree:\n  a: [x, y]\n  b: [z, x]\n")
    assert "leaf 'x' appears twice" in message and "line 2" in message and ":3:" in message


def test_error_duplicate_key(tmp_path):
    message = error_of(tmp_path, "tree:\n  a: [x, y]\n  a: [z, w]\n")
    assert "'a' appears twice" in message and "lines 2 and 3" in message


def test_error_node_name_twice_across_levels(tmp_path):
    message = error_of(tmp_path, "tree:\n  a: {b: [x, y]}\n  c: [b, z]\n")
    assert "'b' appears twice" in message


@pytest.mark.parametrize("text, expected", [
    ("tree:\n  a: []\n  b: [x]\n", "node 'a' is empty (an empty list)"),
    ("tree:\n  a: {}\n  b: [x]\n", "node 'a' is empty (an empty mapping)"),
    ("tree:\n  a:\n  b: [x]\n", "node 'a' is empty"),
    ("tree:\n  a: [x, {}]\n", "node 'a' lists an empty mapping"),
    ("tree: {}\n", "node 'root' is empty"),
])
def test_error_empty_node(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


def test_error_unknown_top_level_key(tmp_path):
    message = error_of(tmp_path, "tree: [a, b]\nleafs: {a: {prompt: x}}\n")
    assert "unknown top-level key 'leafs'" in message and ":2:" in message


def test_error_metadata_for_unknown_name(tmp_path):
    message = error_of(tmp_path, "tree: [a, b]\nleaves:\n  c: {prompt: x}\n")
    assert "leaves: 'c' is not in the tree" in message and ":3:" in message


def test_error_metadata_section_mismatch(tmp_path):
    assert "put its metadata under `nodes:`" in error_of(
        tmp_path, "tree: {g: [a, b]}\nleaves:\n  g: {prompt: x}\n")
    assert "put its metadata under `leaves:`" in error_of(
        tmp_path, "tree: {g: [a, b]}\nnodes:\n  a: {prompt: x}\n")


@pytest.mark.parametrize("meta, expected", [
    ("{promt: x}", "unknown field 'promt'"),
    ("{index: -1}", "`index` must be a non-negative integer"),
    ("{index: x}", "`index` must be a non-negative integer"),
    ("{wnid: dog}", "not of the form"),
    ("{prompts: [1, 2]}", "list of non-empty strings"),
    ("{prompt: a, prompts: [b]}", "not both"),
    ("a photo", "must be a mapping"),
])
def test_error_bad_metadata(tmp_path, meta, expected):
    assert expected in error_of(tmp_path, f"tree: [a, b]\nleaves:\n  a: {meta}\n")


def test_error_duplicate_index(tmp_path):
    message = error_of(tmp_path, "tree: [a, b]\nleaves:\n  a: {index: 0}\n  b: {index: 0}\n")
    assert "index 0 is given to both 'a' and 'b'" in message


@pytest.mark.parametrize("text, expected", [
    ("name: x\n", "exactly one of `tree:`"),
    ("tree: [a]\nwordnet: [dog.n.01]\n", "exactly one of `tree:`"),
    ("tree: [a, b]\nkeep_chains: true\n", "applies to the `wordnet:` form only"),
    ("tree: [a, 1.5]\n", "quote it"),
    ("tree:\n  a: car\n", "expected a list of leaves or a mapping"),
    ("tree:\n  a: [[x, y]]\n", "bare list"),
    ("tree:\n  root: [x, y]\n", "root's id"),
    ("- a\n- b\n", "expected a mapping"),
    ("tree: [a, b]\nname: [x]\n", "`name:` must be"),
])
def test_error_structure(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)
