"""Writing and reading taxonomies: node-link JSON, GraphML and Newick.

* **json**: networkx node-link data, edges under ``"edges"`` (parent -> child, in child order),
  nodes in pre-order, graph attributes ``name`` and ``root``. Every node attribute is kept;
  non-finite floats are written as ``null`` so the file is strict JSON.
* **graphml**: node attributes of type str, int, float and bool are native GraphML data;
  list-valued attributes (``prompts``, ``window``, ...) are stored as JSON strings and their keys
  listed in the graph attribute ``json_attributes``, so reading decodes them back.
* **newick**: topology and node names only (all nodes named, internal ones after their ``)``),
  with optional branch lengths from ``branch_length(parent, child)``. Names are quoted with single
  quotes when they hold blanks, ``()[]':;,`` or underscores (which unquoted Newick reads as
  blanks); a quote inside is doubled.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import networkx as nx

from probes.errors import ProbesError
from probes.fileio import read_text
from probes.taxonomy.tree import MAX_DEPTH, Taxonomy

FORMATS = ("json", "graphml", "newick")
SUFFIXES = {".json": "json", ".graphml": "graphml", ".xml": "graphml", ".nwk": "newick",
            ".newick": "newick", ".tree": "newick", ".tre": "newick"}


def format_for(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` checked, or the format implied by the file suffix."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ProbesError(f"{path}: unknown taxonomy format '{fmt}' (expected {', '.join(FORMATS)})")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ProbesError(f"{path}: cannot tell the format from the suffix; use one of "
                          f"{', '.join(sorted(SUFFIXES))} or give the format")
    return SUFFIXES[suffix]


# -- node-link JSON ---------------------------------------------------------------------------
def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _json_safe(value.item())
    return value


def to_node_link(tax: Taxonomy) -> dict:
    """networkx node-link data (edges under ``"edges"``), nodes and edges in pre-order."""
    g = nx.DiGraph()
    g.graph.update(tax.graph.graph)
    g.graph.update(name=tax.name, root=tax.root)
    for n in tax.nodes:
        g.add_node(n, **tax.graph.nodes[n])
    for n in tax.internal_nodes:
        for c in tax.children(n):
            g.add_edge(n, c, **tax.graph.edges[n, c])
    return _json_safe(nx.node_link_data(g, edges="edges"))


def from_node_link(data: dict, source: str = "<node-link>") -> Taxonomy:
    if not isinstance(data, dict):
        raise ProbesError(f"{source}: not node-link taxonomy data (expected a JSON object)")
    try:
        graph = nx.node_link_graph(data, directed=True, multigraph=False, edges="edges")
    except (KeyError, TypeError, AttributeError, ValueError, nx.NetworkXError) as exc:
        raise ProbesError(f"{source}: not node-link taxonomy data ({exc!r})") from None
    return _taxonomy(graph, source)


def _taxonomy(graph: nx.DiGraph, source: str) -> Taxonomy:
    graph = nx.relabel_nodes(graph, str) if any(not isinstance(n, str) for n in graph) else graph
    try:
        return Taxonomy(graph, name=graph.graph.get("name", Path(source).stem))
    except ProbesError as exc:
        raise ProbesError(f"{source}: {exc}") from None


# -- GraphML ----------------------------------------------------------------------------------
_NATIVE = (str, int, float, bool)


def _graphml_graph(tax: Taxonomy) -> nx.DiGraph:
    data = to_node_link(tax)
    encoded = sorted({k for node in data["nodes"] for k, v in node.items()
                      if k != "id" and v is not None and not isinstance(v, _NATIVE)})
    g = nx.DiGraph()
    for k, v in data["graph"].items():
        if v is not None:
            g.graph[k] = v if isinstance(v, _NATIVE) else json.dumps(v)
    if encoded:
        g.graph["json_attributes"] = json.dumps(encoded)
    for node in data["nodes"]:
        attrs = {k: (json.dumps(v) if k in encoded else v)
                 for k, v in node.items() if k != "id" and v is not None}
        g.add_node(node["id"], **attrs)
    for edge in data["edges"]:
        attrs = {k: v for k, v in edge.items() if k not in ("source", "target") and v is not None}
        g.add_edge(edge["source"], edge["target"], **attrs)
    return g


def _from_graphml(path: Path) -> Taxonomy:
    try:
        graph = nx.read_graphml(path, node_type=str)
    except Exception as exc:  # ElementTree and networkx raise several types
        raise ProbesError(f"{path}: not a readable GraphML file ({exc})") from None
    try:
        encoded = json.loads(graph.graph.pop("json_attributes", "[]"))
        for _, attrs in graph.nodes(data=True):
            for key in encoded:
                if key in attrs:
                    attrs[key] = json.loads(attrs[key])
    except (ValueError, TypeError, RecursionError):
        raise ProbesError(f"{path}: GraphML attributes marked as JSON are not valid JSON") from None
    return _taxonomy(graph, str(path))  # document order: children keep their written order


# -- Newick -----------------------------------------------------------------------------------
_NEEDS_QUOTES = re.compile(r"[\s()\[\]':;,_]")


def newick_name(name: str) -> str:
    """``name`` as a Newick label, quoted when the Newick spec requires it."""
    if name and not _NEEDS_QUOTES.search(name):
        return name
    return "'" + name.replace("'", "''") + "'"


def to_newick(tax: Taxonomy, branch_length: Callable[[str, str], float] | None = None) -> str:
    """The tree as one Newick line; ``branch_length(parent, child)`` adds ``:length``."""

    def length(n):
        if branch_length is None or n == tax.root:
            return ""
        value = float(branch_length(tax.parent(n), n))
        return f":{value!r}" if math.isfinite(value) else ""

    out = {}
    for n in reversed(tax.nodes):  # children before parents
        kids = tax.children(n)
        inner = "(" + ",".join(out.pop(c) for c in kids) + ")" if kids else ""
        out[n] = inner + newick_name(n) + length(n)
    return out[tax.root] + ";"


def from_newick(text: str, name: str = "newick", source: str = "<newick>") -> Taxonomy:
    """Parse one Newick tree; unnamed nodes get ids ``node1``, ``node2``, ... in pre-order.

    Branch lengths are kept as the edge attribute ``branch_length``; ``[...]`` comments are skipped.
    """
    tokens = _newick_tokens(text, source)
    pos = 0
    graph = nx.DiGraph()
    counter = [0]
    pending = []  # (node key, parent key) in pre-order, keys are temporary until named

    def peek():
        return tokens[pos][0] if pos < len(tokens) else None

    def parse_node(parent, depth=0):
        nonlocal pos
        if depth > MAX_DEPTH:
            raise ProbesError(f"{source}: Newick: nested deeper than {MAX_DEPTH} levels")
        counter[0] += 1
        key = counter[0]
        pending.append([key, parent, None, None])
        me = pending[-1]
        if peek() == "(":
            pos += 1
            while True:
                parse_node(key, depth + 1)
                kind = peek()
                pos += 1
                if kind == ")":
                    break
                if kind != ",":
                    raise ProbesError(f"{source}: Newick: expected ',' or ')' in a child list")
        if peek() == "name":
            me[2] = tokens[pos][1]
            pos += 1
        if peek() == ":":
            pos += 1
            if peek() != "name":
                raise ProbesError(f"{source}: Newick: a ':' without a branch length")
            try:
                me[3] = float(tokens[pos][1])
            except ValueError:
                raise ProbesError(f"{source}: Newick: bad branch length '{tokens[pos][1]}'") from None
            pos += 1

    parse_node(None)
    if peek() != ";" or pos != len(tokens) - 1:
        raise ProbesError(f"{source}: Newick: expected a single tree ending with ';'")
    names, used, taken = {}, set(), {n for _, _, n, _ in pending if n}
    auto = 0
    for key, _, label, _ in pending:
        if not label:
            auto += 1
            while f"node{auto}" in taken:
                auto += 1
            label = f"node{auto}"
        if label in used:
            raise ProbesError(f"{source}: Newick: node name '{label}' appears twice")
        names[key] = label
        used.add(label)
    for key, parent, _, length in pending:
        graph.add_node(names[key])
        if parent is not None:
            graph.add_edge(names[parent], names[key])
            if length is not None:
                graph.edges[names[parent], names[key]]["branch_length"] = length
    graph.graph["name"] = name
    return _taxonomy(graph, source)


def _newick_tokens(text: str, source: str) -> list[tuple[str, str]]:
    tokens, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "[":
            end = text.find("]", i)
            if end < 0:
                raise ProbesError(f"{source}: Newick: unclosed '[' comment")
            i = end + 1
        elif ch in "(),:;":
            tokens.append((ch, ch))
            i += 1
        elif ch == "'":
            buf, i = [], i + 1
            while True:
                if i >= n:
                    raise ProbesError(f"{source}: Newick: unclosed quoted name")
                if text[i] == "'":
                    if i + 1 < n and text[i + 1] == "'":
                        buf.append("'")
                        i += 2
                        continue
                    i += 1
                    break
                buf.append(text[i])
                i += 1
            tokens.append(("name", "".join(buf)))
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in "(),:;[]'":
                i += 1
            tokens.append(("name", text[start:i].replace("_", " ")))
    return tokens


# -- files ------------------------------------------------------------------------------------
def write_taxonomy(tax: Taxonomy, path: str | Path, fmt: str | None = None,
                   branch_length: Callable[[str, str], float] | None = None) -> Path:
    """Write ``tax`` as json, graphml or newick (``fmt`` None: from the suffix)."""
    path = Path(path)
    fmt = format_for(path, fmt)
    if branch_length is not None and fmt != "newick":
        raise ProbesError(f"{path}: branch lengths apply to the newick format only")
    try:
        if fmt == "json":
            path.write_text(json.dumps(to_node_link(tax), indent=1, allow_nan=False) + "\n",
                            encoding="utf-8")
        elif fmt == "graphml":
            nx.write_graphml(_graphml_graph(tax), path, infer_numeric_types=True)
        else:
            path.write_text(to_newick(tax, branch_length) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ProbesError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


def read_taxonomy(path: str | Path, fmt: str | None = None) -> Taxonomy:
    """Read a taxonomy written by :func:`write_taxonomy` (or any tree in these formats)."""
    path = Path(path)
    fmt = format_for(path, fmt)
    text = read_text(path, "taxonomy file")
    if fmt == "graphml":
        return _from_graphml(path)
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProbesError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        except RecursionError:
            raise ProbesError(f"{path}: JSON nested too deeply") from None
        return from_node_link(data, source=str(path))
    return from_newick(text, name=path.stem, source=str(path))
