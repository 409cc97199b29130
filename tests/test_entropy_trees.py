"""Small taxonomies for the entropy, decision and report tests, from nested dicts.

``{"A": ["a1", "a2"], "b": None}`` is a root with children A (leaves a1, a2) and leaf b; every
node gets an upper-case ``label``.
"""

import networkx as nx

from probes.taxonomy.tree import Taxonomy


def _add(graph, parent, spec):
    items = spec.items() if isinstance(spec, dict) else ((k, None) for k in spec)
    for name, sub in items:
        graph.add_node(name, label=name.upper())
        graph.add_edge(parent, name)
        if sub:
            _add(graph, name, sub)


def make_taxonomy(spec, root="root", name="test"):
    graph = nx.DiGraph()
    graph.add_node(root, label=root)
    _add(graph, root, spec)
    return Taxonomy(graph, name=name)
