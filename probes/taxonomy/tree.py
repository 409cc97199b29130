"""`Taxonomy`: a rooted tree over leaf classes.

The tree is a networkx ``DiGraph`` with edges parent -> child. Children keep the order in which
their edges were added ("definition order"); every ordered view (``leaves``, ``internal_nodes``,
``nodes``) is a pre-order walk in that order, so leaf order is deterministic and every
``[..., L]`` tensor in the toolkit can use it.

Node ids are strings. Node attributes carry metadata: ``label`` (display name, defaults to the
id), ``prompts`` (list of text prompts; a ``prompt`` string is normalised to ``prompts``),
``aliases``, ``wnid``, ``synset`` and ``index`` (the classifier output index). Other modules may
add attributes (e.g. ``decision_sigma``) on a copy's graph.

The structure is read once at construction and derived tables are cached: build a new
`Taxonomy` rather than adding or removing nodes of ``tax.graph``. Attributes may be changed freely.
"""

from __future__ import annotations

import unicodedata

import networkx as nx

from probes.errors import ProbesError

LIST_ATTRS = ("prompts", "aliases")
TEXT_ATTRS = ("label", "description", "prompt", "prompts", "aliases")
# WordNet is ~20 levels deep; anything past this is a generated file gone wrong, and deep
# recursion in the readers (Newick, JSON) would fail without a useful message.
MAX_DEPTH = 100
MAX_NAME_LENGTH = 500


def name_problem(text: str) -> str | None:
    """Why ``text`` cannot be a node name or label (it must survive JSON, GraphML's XML, Newick and
    a terminal unchanged), or ``None`` if it can."""
    if len(text) > MAX_NAME_LENGTH:
        return f"is longer than {MAX_NAME_LENGTH} characters"
    for ch in text:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cs", "Zl", "Zp") or ch in "\ufffe\uffff":
            return f"holds the control character {ch!r}"
    return None


def _normalise_attrs(attrs: dict) -> None:
    if "prompt" in attrs:
        prompt = attrs.pop("prompt")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        attrs["prompts"] = prompts + [p for p in attrs.get("prompts", []) if p not in prompts]
    for key in LIST_ATTRS:
        if key in attrs and isinstance(attrs[key], str):
            attrs[key] = [attrs[key]]


def look_alike_key(text: str) -> str:
    """What a name looks like on screen: compatibility-normalised (``é`` composed or not, ``ﬁ``
    and ``fi``), invisible format characters (zero-width spaces) dropped."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text) if unicodedata.category(ch) != "Cf")


def _check_names(name: str, graph: nx.DiGraph) -> None:
    problem = name_problem(name)
    if problem:
        raise ProbesError(f"taxonomy name {name!r} {problem}")
    looks: dict[str, str] = {}
    for node, attrs in graph.nodes(data=True):
        problem = name_problem(node) or ("is empty" if not node.strip() else None)
        if problem:
            raise ProbesError(f"taxonomy '{name}': node name {node!r} {problem}")
        twin = looks.setdefault(look_alike_key(node), node)
        if twin != node:  # two classes a reader (and a prompt) cannot tell apart
            raise ProbesError(f"taxonomy '{name}': node names {twin!a} and {node!a} look the same (they "
                              "differ only in Unicode normalisation or invisible characters)")
        for key in TEXT_ATTRS:
            values = attrs.get(key)
            if values is None:
                continue
            many = key in LIST_ATTRS or key == "prompt"
            if not (isinstance(values, str) or (many and isinstance(values, (list, tuple))
                                                and all(isinstance(v, str) for v in values))):
                kind = "a string or a list of strings" if many else "a string"
                raise ProbesError(f"taxonomy '{name}': {key} of {node!r} must be {kind}, got {values!r}")
            for value in [values] if isinstance(values, str) else values:
                problem = name_problem(str(value))
                if problem:
                    raise ProbesError(f"taxonomy '{name}': {key} of {node!r} {problem}")


class Taxonomy:
    """A rooted tree over leaf classes (see module docstring).

    ``Taxonomy(graph, name=None)`` takes ownership of ``graph`` (a ``DiGraph`` that is a tree,
    edges parent -> child) and checks that it is one.
    """

    def __init__(self, graph: nx.DiGraph, name: str | None = None):
        if not isinstance(graph, nx.DiGraph) or graph.is_multigraph():
            raise ProbesError(f"taxonomy '{name or 'taxonomy'}': expected a networkx DiGraph, got "
                              f"{type(graph).__name__}")
        self.name = str(name if name is not None else graph.graph.get("name", "taxonomy"))
        if graph.number_of_nodes() == 0:
            raise ProbesError(f"taxonomy '{self.name}': the tree is empty")
        bad = next((n for n in graph if not isinstance(n, str)), None)
        if bad is not None:
            raise ProbesError(f"taxonomy '{self.name}': node id {bad!r} is not a string")
        _check_names(self.name, graph)
        if not nx.is_arborescence(graph):
            raise ProbesError(f"taxonomy '{self.name}': {_why_not_a_tree(graph)}")
        self.graph = graph
        self.root = next(n for n, d in graph.in_degree() if d == 0)
        graph.graph["name"] = self.name
        graph.graph["root"] = self.root
        for _, attrs in graph.nodes(data=True):
            _normalise_attrs(attrs)
        self._index()
        if self.max_depth > MAX_DEPTH:
            raise ProbesError(f"taxonomy '{self.name}': {self.max_depth} levels deep; "
                              f"at most {MAX_DEPTH} are supported")

    def _index(self) -> None:
        g = self.graph
        self._children = {n: tuple(g.successors(n)) for n in g}
        self._parent = {c: p for p, kids in self._children.items() for c in kids}
        self._depth = {self.root: 0}
        self._span: dict[str, tuple[int, int]] = {}
        order, leaves = [], []
        stack = [(self.root, False)]
        while stack:  # iterative pre-order; a node's leaf span is closed on the way back up
            n, done = stack.pop()
            if done:
                self._span[n] = (self._span[n][0], len(leaves))
                continue
            order.append(n)
            self._span[n] = (len(leaves), len(leaves))
            kids = self._children[n]
            if not kids:
                leaves.append(n)
                self._span[n] = (len(leaves) - 1, len(leaves))
                continue
            stack.append((n, True))
            for c in reversed(kids):
                self._depth[c] = self._depth[n] + 1
                stack.append((c, False))
        self._nodes = order
        self._leaves = leaves
        self._internal = [n for n in order if self._children[n]]
        self._max_depth = max(self._depth[n] for n in leaves)
        self._cuts: dict[int, dict[str, str]] = {}

    # -- structure --------------------------------------------------------------------------
    @property
    def leaves(self) -> list[str]:
        """Leaf ids in pre-order (children in definition order)."""
        return list(self._leaves)

    @property
    def internal_nodes(self) -> list[str]:
        """Internal node ids in pre-order, root first."""
        return list(self._internal)

    @property
    def nodes(self) -> list[str]:
        """All node ids in pre-order."""
        return list(self._nodes)

    @property
    def max_depth(self) -> int:
        """Depth of the deepest leaf (the root has depth 0)."""
        return self._max_depth

    def _check(self, n: str) -> str:
        if n not in self._children:
            raise ProbesError(f"taxonomy '{self.name}': unknown node '{n}'")
        return n

    def __contains__(self, n) -> bool:
        return n in self._children

    def children(self, n: str) -> list[str]:
        return list(self._children[self._check(n)])

    def parent(self, n: str) -> str | None:
        """The parent of ``n``; None for the root."""
        return self._parent.get(self._check(n))

    def depth(self, n: str) -> int:
        return self._depth[self._check(n)]

    def is_leaf(self, n: str) -> bool:
        return not self._children[self._check(n)]

    def leaves_under(self, n: str) -> list[str]:
        """Leaves below ``n`` (``[n]`` for a leaf), in ``leaves`` order."""
        lo, hi = self._span[self._check(n)]
        return self._leaves[lo:hi]

    def leaf_slice(self, n: str) -> slice:
        """Positions of ``leaves_under(n)`` in ``leaves``: pre-order makes them contiguous."""
        return slice(*self._span[self._check(n)])

    def ancestors(self, n: str) -> list[str]:
        """Ancestors of ``n`` from the root down to its parent (``[]`` for the root)."""
        out = []
        p = self._parent.get(self._check(n))
        while p is not None:
            out.append(p)
            p = self._parent.get(p)
        return out[::-1]

    def lca(self, a: str, b: str) -> str:
        """Lowest common ancestor of ``a`` and ``b`` (a node is its own ancestor here)."""
        da, db = self.depth(a), self.depth(b)
        while da > db:
            a, da = self._parent[a], da - 1
        while db > da:
            b, db = self._parent[b], db - 1
        while a != b:
            a, b = self._parent[a], self._parent[b]
        return a

    def level_cut(self, level: int) -> dict[str, str]:
        """``{leaf: its ancestor at depth level}``, or the leaf itself where it is shallower."""
        if not 0 <= level <= self._max_depth:
            raise ProbesError(
                f"taxonomy '{self.name}': level {level} is outside 0..{self._max_depth}"
            )
        if level not in self._cuts:
            cut = {}
            for leaf in self._leaves:
                node, d = leaf, self._depth[leaf]
                while d > level:
                    node, d = self._parent[node], d - 1
                cut[leaf] = node
            self._cuts[level] = cut
        return dict(self._cuts[level])

    def level_nodes(self, level: int) -> list[str]:
        """The cells of ``level_cut(level)``, in leaf order, without repeats."""
        return list(dict.fromkeys(self.level_cut(level).values()))

    def partition(self, n: str) -> dict[str, list[str]]:
        """``{child: leaves under child}`` for an internal node, children in order."""
        if self.is_leaf(n):
            raise ProbesError(f"taxonomy '{self.name}': '{n}' is a leaf and has no partition")
        return {c: self.leaves_under(c) for c in self._children[n]}

    def same_tree(self, other) -> bool:
        """Whether ``other`` is a taxonomy with the same nodes, edges and leaf order (names and
        metadata aside): results over the two index their leaves and levels alike."""
        return isinstance(other, Taxonomy) and (self._leaves, self._nodes, self._children) == (
            other._leaves, other._nodes, other._children)

    def require_a_choice(self) -> None:
        """Probing measures how a sample chooses between leaves: one leaf leaves nothing to measure."""
        if len(self._leaves) < 2:
            raise ProbesError(f"taxonomy '{self.name}': a single leaf ({self._leaves[0]!r}); probing needs at least "
                              "two leaves to tell apart")

    # -- derived trees ----------------------------------------------------------------------
    def restrict(self, leaves) -> Taxonomy:
        """A new taxonomy over a subset of the leaves, in this taxonomy's order.

        Branches without kept leaves are dropped and single-child chains collapsed (see
        :func:`collapse_chains`); the root keeps its id.
        """
        keep = list(leaves)
        if not keep:
            raise ProbesError(f"taxonomy '{self.name}': cannot restrict to no leaves")
        for leaf in keep:
            if not self.is_leaf(leaf):
                raise ProbesError(f"taxonomy '{self.name}': '{leaf}' is not a leaf")
        nodes = {self.root}
        for leaf in keep:
            nodes.add(leaf)
            nodes.update(self.ancestors(leaf))
        sub = self.graph.subgraph(nodes)  # a view; iteration keeps this tree's child order
        graph, _ = collapse_chains(sub, self.root, keep_root=True)
        return Taxonomy(graph, name=self.name)

    def copy(self) -> Taxonomy:
        """An independent copy (graph and attribute values copied)."""
        g = nx.DiGraph()
        g.graph.update(_copy_value(self.graph.graph))
        for n in self._nodes:
            g.add_node(n, **_copy_value(self.graph.nodes[n]))
        for n in self._nodes:
            for c in self._children[n]:
                g.add_edge(n, c, **_copy_value(self.graph.edges[n, c]))
        return Taxonomy(g, name=self.name)

    # -- metadata and display ---------------------------------------------------------------
    def node_attrs(self, n: str) -> dict:
        """A copy of ``n``'s metadata; ``label``, ``prompts`` and ``aliases`` always present."""
        attrs = {"label": n, "prompts": [], "aliases": []}
        attrs.update(_copy_value(self.graph.nodes[self._check(n)]))
        return attrs

    def label(self, n: str) -> str:
        return str(self.graph.nodes[self._check(n)].get("label", n))

    def render(self, levels: bool = False) -> str:
        """A readable text tree; with ``levels`` also the cells of every level cut."""
        lines = [f"{self.name}: {len(self._leaves)} leaves, {len(self._internal)} internal nodes, "
                 f"depth {self._max_depth}"]
        stack = [(self.root, "", "")]
        while stack:
            n, lead, branch = stack.pop()
            lines.append(f"{lead}{branch}{self._describe(n)}")
            kids = self._children[n]
            child_lead = lead + ("" if n == self.root else ("    " if branch == "└── " else "│   "))
            for i, c in reversed(list(enumerate(kids))):
                stack.append((c, child_lead, "└── " if i == len(kids) - 1 else "├── "))
        if levels:
            lines.append("levels:")
            for level in range(1, self._max_depth + 1):
                cells = self.level_nodes(level)
                shown = ", ".join(
                    c if self.is_leaf(c) else f"{c} ({len(self.leaves_under(c))})" for c in cells
                )
                lines.append(f"  {level}: {len(cells)} cells: {shown}")
        return "\n".join(lines)

    def _describe(self, n: str) -> str:
        attrs = self.graph.nodes[n]
        text = n
        label = attrs.get("label")
        plain = n.rsplit(".", 2)[0].replace("_", " ") if attrs.get("synset") == n else n
        if label is not None and label.lower() != plain.lower():
            text += f' "{label}"'
        if "index" in attrs:
            text += f" [{attrs['index']}]"
        if self._children[n]:
            text += f" ({len(self.leaves_under(n))} leaves)"
        return text

    def __repr__(self) -> str:
        return (f"Taxonomy({self.name!r}, root={self.root!r}, leaves={len(self._leaves)}, "
                f"internal={len(self._internal)}, max_depth={self._max_depth})")


def _copy_value(value):
    if isinstance(value, dict):
        return {k: _copy_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy_value(v) for v in value]
    return value


def _why_not_a_tree(graph: nx.DiGraph) -> str:
    roots = [n for n, d in graph.in_degree() if d == 0]
    multi = [n for n, d in graph.in_degree() if d > 1]
    if multi:
        parents = sorted(graph.predecessors(multi[0]))
        return f"node '{multi[0]}' has several parents ({', '.join(parents)}); a taxonomy is a tree"
    if not roots:
        return "the graph has a cycle and no root"
    if len(roots) > 1:
        return f"the graph has several roots ({', '.join(map(str, roots[:5]))}); a taxonomy has one"
    return "the graph is not a tree (a cycle, or nodes not reachable from the root)"


def collapse_chains(graph: nx.DiGraph, root: str, keep_root: bool = True) -> tuple[nx.DiGraph, str]:
    """Remove internal nodes that have a single child, joining the child to their parent.

    Of a chain ``a -> b -> c`` where ``a`` and ``b`` have one child each, the lowest node ``c``
    (the first with several children, or a leaf) stays: it names the split that actually happens.
    With ``keep_root`` the root keeps its id and, if it has a single internal child, takes that
    child's children. Without it the root moves down to the first node with several children.
    Afterwards every internal node has at least two children, except a root over a single leaf.
    Child order and node attributes are kept. Returns ``(new_graph, new_root)``.
    """

    def lower(n):
        kids = list(graph.successors(n))
        while len(kids) == 1:
            n = kids[0]
            kids = list(graph.successors(n))
        return n

    if keep_root:
        top = [lower(c) for c in graph.successors(root)]
        if len(top) == 1 and graph.out_degree(top[0]) > 0:
            top = [lower(c) for c in graph.successors(top[0])]
    else:
        root = lower(root)
        top = [lower(c) for c in graph.successors(root)]
    out = nx.DiGraph()
    out.graph.update(graph.graph)
    out.add_node(root, **graph.nodes[root])
    stack = [(root, top)]
    while stack:
        n, kids = stack.pop()
        for c in kids:
            out.add_node(c, **graph.nodes[c])
            out.add_edge(n, c)
        for c in reversed(kids):
            grandkids = [lower(k) for k in graph.successors(c)]
            if grandkids:
                stack.append((c, grandkids))
    return out, root
