"""YAML taxonomies: the nested form and the WordNet-backed form (docs/taxonomies.md).

Nested form::

    name: animals-and-vehicles
    tree:
      animal:
        dog: [beagle, poodle]       # a mapping is an internal node, a list holds leaves
        cat: [tabby, siamese]
      vehicle: [car, truck, {boat: [canoe, yacht]}]   # a list may hold mappings too
    leaves:                         # optional metadata per leaf
      beagle: {prompt: "a photo of a beagle", wnid: n02088364}
    nodes:                          # optional metadata per internal node (or the root)
      dog: {label: "dog", prompts: ["a photo of a dog"]}

The root's id is ``root`` unless a top-level ``root:`` names it. WordNet-backed form::

    name: imagenet-1k
    wordnet: imagenet-1k            # or a list of synset names / wnids
    keep_chains: false              # optional; true keeps single-child WordNet levels
    hypernym_policy: deepest        # optional; deepest | most-leaves | first

Every problem raises :class:`ProbesError` as ``FILE:LINE: what is wrong``.
"""

from __future__ import annotations

import re
from pathlib import Path

import networkx as nx

from probes.errors import ProbesError
from probes.fileio import read_text
from probes.taxonomy.tree import Taxonomy
from probes.taxonomy.wordnet import POLICIES, parse_wordnet_spec, resolve_synset
from probes.yamlio import StrictLoader, YamlProblem, load_yaml

TOP_KEYS = ("name", "description", "root", "tree", "leaves", "nodes", "wordnet", "keep_chains",
            "hypernym_policy")
WORDNET_ONLY = ("keep_chains", "hypernym_policy")
META_KEYS = ("label", "prompt", "prompts", "aliases", "wnid", "synset", "index", "description")
DEFAULT_ROOT = "root"
_WNID = re.compile(r"^[nvar]\d{8}$")


_Problem = YamlProblem  # a problem at a line of the file


# -- a YAML loader that remembers line numbers and refuses duplicate keys ----------------------
class _Str(str):
    line = None


class _Map(dict):
    line = None


class _List(list):
    line = None


class _Loader(StrictLoader):
    """YAML 1.2 scalars (``010`` stays the name "010") and bounds, plus line numbers on names."""


def _line(node) -> int:
    return node.start_mark.line + 1


def _construct_str(loader, node):
    value = _Str(loader.construct_scalar(node))
    value.line = _line(node)
    return value


class _Int(int):
    """An integer that remembers how it was written (``+5`` and ``5`` are one number, not one name)."""

    text = ""
    line = None


def _construct_int(loader, node):
    value = _Int(loader.construct_yaml_int(node))
    value.text, value.line = str(node.value), _line(node)
    return value


def _construct_seq(loader, node):
    value = _List(loader.construct_object(child, deep=True) for child in node.value)
    value.line = _line(node)
    return value


def _construct_map(loader, node):
    loader.flatten_mapping(node)
    value, seen = _Map(), {}
    value.line = _line(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise _Problem(_line(key_node), "a mapping key must be a name, not a list or mapping") from None
        if key in seen:
            line = _line(key_node)
            raise _Problem(line, f"'{key}' appears twice (lines {seen[key]} and {line})")
        seen[key] = _line(key_node)
        value[key] = loader.construct_object(value_node, deep=True)
    return value


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _plain(value):
    """Drop the line-carrying subclasses: plain str, list and dict all the way down."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value


# -- entry points -----------------------------------------------------------------------------
def load_yaml_taxonomy(path: str | Path) -> Taxonomy:
    """Read a taxonomy YAML file (either form)."""
    path = Path(path)
    text = read_text(path, "taxonomy file")
    return parse_yaml_taxonomy(text, source=str(path), default_name=path.stem)


def parse_yaml_taxonomy(text: str, source: str = "<yaml>", default_name: str = "taxonomy") -> Taxonomy:
    """Parse taxonomy YAML text; ``source`` names it in error messages."""
    data = load_yaml(text, source, _Loader)
    return taxonomy_from_dict(data, source=source, default_name=default_name)


def taxonomy_from_dict(data, source: str = "<dict>", default_name: str = "taxonomy") -> Taxonomy:
    """Build a taxonomy from the parsed YAML structure (a dict with ``tree:`` or ``wordnet:``)."""
    try:
        return _from_dict(data, default_name)
    except _Problem as exc:
        where = f"{source}:{exc.line}" if exc.line else source
        raise ProbesError(f"{where}: {exc.message}") from None
    except ProbesError as exc:  # from the WordNet layer or the tree check: add the file (once)
        raise ProbesError(str(exc) if str(exc).startswith(f"{source}: ") else f"{source}: {exc}") from None


def from_nested(tree, name: str = "taxonomy", root: str = DEFAULT_ROOT, leaves=None, nodes=None) -> Taxonomy:
    """A taxonomy from a nested Python structure, as under ``tree:`` in YAML.

    ``from_nested({"animal": {"dog": ["beagle", "poodle"]}, "vehicle": ["car", "truck"]})``
    """
    data = {"name": name, "root": root, "tree": tree}
    if leaves is not None:
        data["leaves"] = leaves
    if nodes is not None:
        data["nodes"] = nodes
    return taxonomy_from_dict(data, source=f"taxonomy '{name}'")


# -- the two forms ----------------------------------------------------------------------------
def _from_dict(data, default_name):
    if not isinstance(data, dict):
        raise _Problem(getattr(data, "line", None),
                       "expected a mapping with `tree:` or `wordnet:` at the top level")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise _Problem(getattr(unknown[0], "line", None),
                       f"unknown top-level key '{unknown[0]}' (expected one of: {', '.join(TOP_KEYS)})")
    if ("tree" in data) == ("wordnet" in data):
        raise _Problem(getattr(data, "line", None), "give exactly one of `tree:` (nested form) or `wordnet:`")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise _Problem(_line_of(data, "name"), "`name:` must be a non-empty string")
    name = str(name).strip()
    if "tree" in data:
        for key in WORDNET_ONLY:
            if key in data:
                raise _Problem(_line_of(data, key), f"`{key}:` applies to the `wordnet:` form only")
        graph = _nested_graph(data, name)
    else:
        graph = _wordnet_graph(data, name)
    _apply_meta(graph, data)
    return Taxonomy(graph, name=name)


def _line_of(mapping, key):
    for k in mapping:
        if k == key:
            return getattr(k, "line", None)
    return None


def _name(value, line, what="node name"):
    if isinstance(value, bool):
        raise _Problem(line, f"{what} is read by YAML as the boolean {value}; quote it")
    if value is None:
        raise _Problem(line, f"empty {what} (YAML null); quote it or remove it")
    if isinstance(value, float):
        raise _Problem(line, f"{what} {value!r} is read by YAML as a number; quote it")
    if isinstance(value, int):
        written = getattr(value, "text", str(value))
        if written != str(int(value)):  # +5 would become the name "5"
            raise _Problem(getattr(value, "line", None) or line, f"{what} {written!r} is read by YAML as the "
                           f"number {int(value)}; quote it")
        return str(int(value))
    if not isinstance(value, str):
        raise _Problem(line, f"{what} must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise _Problem(getattr(value, "line", line), f"empty {what}")
    return text


def _nested_graph(data, name) -> nx.DiGraph:
    root = _name(data.get("root", DEFAULT_ROOT), _line_of(data, "root"), "root id")
    graph = nx.DiGraph()
    graph.add_node(root)
    seen = {root: _line_of(data, "root") or 0}

    def add(parent, child_key, line, internal):
        child = _name(child_key, line)
        line = getattr(child_key, "line", line)
        if child in seen:
            if child == root:
                raise _Problem(line, f"'{child}' is the root's id; rename the node or set `root:`")
            first = f" (first at line {seen[child]})" if seen[child] else ""
            kind = "node" if internal or graph.out_degree(child) else "leaf"
            raise _Problem(line, f"{kind} '{child}' appears twice in the tree{first}")
        seen[child] = line
        graph.add_edge(parent, child)
        return child

    def expand(parent, value, line):
        line = getattr(value, "line", None) or line
        if isinstance(value, dict):
            if not value:
                raise _Problem(line, f"node '{parent}' is empty (an empty mapping)")
            for key, sub in value.items():
                expand(add(parent, key, line, True), sub, getattr(key, "line", line))
        elif isinstance(value, list):
            if not value:
                raise _Problem(line, f"node '{parent}' is empty (an empty list)")
            for item in value:
                if isinstance(item, dict):
                    if not item:
                        raise _Problem(line, f"node '{parent}' lists an empty mapping")
                    expand(parent, item, line)
                elif isinstance(item, list):
                    raise _Problem(getattr(item, "line", line),
                                   f"node '{parent}' holds a bare list; name the group: {{group: [...]}}")
                else:
                    add(parent, item, line, False)
        elif value is None:
            raise _Problem(line, f"node '{parent}' is empty; give its children as a list or mapping")
        else:
            raise _Problem(line, f"node '{parent}': expected a list of leaves or a mapping of groups, "
                                 f"got {value!r}")

    expand(root, data["tree"], _line_of(data, "tree"))
    return graph


def _wordnet_graph(data, name) -> nx.DiGraph:
    line = _line_of(data, "wordnet")
    if "root" in data:
        raise _Problem(_line_of(data, "root"), "`root:` does not apply to `wordnet:` (the root is induced)")
    keep_chains = data.get("keep_chains", False)
    if not isinstance(keep_chains, bool):
        raise _Problem(_line_of(data, "keep_chains"), "`keep_chains:` must be true or false")
    policy = data.get("hypernym_policy", POLICIES[0])
    if policy not in POLICIES:
        raise _Problem(_line_of(data, "hypernym_policy"),
                       f"unknown hypernym_policy '{policy}' (expected one of: {', '.join(POLICIES)})")
    spec = data["wordnet"]
    if isinstance(spec, list):
        if not spec:
            raise _Problem(line, "`wordnet:` is an empty list")
        items = []
        for item in spec:
            item_line = getattr(item, "line", line)
            if not isinstance(item, str):
                raise _Problem(item_line, f"`wordnet:` entry {item!r} is not a synset name or wnid")
            try:
                resolve_synset(item)
            except ProbesError as exc:
                raise _Problem(item_line, str(exc)) from None
            items.append(str(item).strip())
        spec = items
    elif not isinstance(spec, str):
        raise _Problem(line, "`wordnet:` must be a named set (imagenet-1k) or a list of synsets/wnids")
    try:
        tax = parse_wordnet_spec(_plain(spec), keep_chains=keep_chains, policy=str(policy), name=name)
    except ProbesError as exc:
        raise _Problem(line, str(exc)) from None
    return tax.graph


def _apply_meta(graph: nx.DiGraph, data) -> None:
    by_wnid = {a["wnid"]: n for n, a in graph.nodes(data=True) if "wnid" in a}
    owners = {}
    for section, want_leaf in (("leaves", True), ("nodes", False)):
        if section not in data:
            continue
        entries = data[section]
        sec_line = _line_of(data, section)
        if not isinstance(entries, dict):
            raise _Problem(sec_line, f"`{section}:` must be a mapping of node name -> metadata")
        for key, meta in entries.items():
            line = getattr(key, "line", sec_line)
            node = _name(key, line)
            node = node if node in graph else by_wnid.get(node, node)
            if node not in graph:
                raise _Problem(line, f"{section}: '{node}' is not in the tree")
            if want_leaf and graph.out_degree(node):
                raise _Problem(line, f"leaves: '{node}' is an internal node; put its metadata under `nodes:`")
            if not want_leaf and not graph.out_degree(node):
                raise _Problem(line, f"nodes: '{node}' is a leaf; put its metadata under `leaves:`")
            graph.nodes[node].update(_check_meta(node, meta, line))
    for node, attrs in graph.nodes(data=True):
        if "index" in attrs:
            if attrs["index"] in owners:
                raise _Problem(None, f"index {attrs['index']} is given to both '{owners[attrs['index']]}' "
                                     f"and '{node}'")
            owners[attrs["index"]] = node


def _check_meta(node, meta, line) -> dict:
    if not isinstance(meta, dict):
        raise _Problem(getattr(meta, "line", line), f"metadata for '{node}' must be a mapping, e.g. "
                                                    "{prompt: \"a photo of ...\"}")
    out = {}
    for key, value in meta.items():
        key_line = getattr(key, "line", line)
        if key not in META_KEYS:
            raise _Problem(key_line, f"unknown field '{key}' for '{node}' "
                                     f"(expected one of: {', '.join(META_KEYS)})")
        if key in ("label", "prompt", "wnid", "synset", "description"):
            if not isinstance(value, str) or not value.strip():
                raise _Problem(key_line, f"'{node}': `{key}` must be a non-empty string")
            if key == "wnid" and not _WNID.match(value):
                raise _Problem(key_line, f"'{node}': wnid '{value}' is not of the form n01234567")
        elif key in ("prompts", "aliases"):
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise _Problem(key_line, f"'{node}': `{key}` must be a list of non-empty strings")
        elif key == "index" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise _Problem(key_line, f"'{node}': `index` must be a non-negative integer")
        out[str(key)] = _plain(value)
    if "prompt" in out and "prompts" in out:
        raise _Problem(line, f"'{node}': give `prompt` or `prompts`, not both")
    return out
