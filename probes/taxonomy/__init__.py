"""Taxonomies: rooted trees over leaf classes, from YAML or WordNet (docs/taxonomies.md).

``load_taxonomy(source)`` accepts

* a YAML file (nested form or WordNet-backed form): ``"taxonomies/digits-shape.yaml"``;
* the name of a shipped taxonomy (``taxonomies/``, ``probes taxonomies`` lists them): ``"digits-shape"``;
* a file written by :func:`write_taxonomy` (``.json``, ``.graphml``, ``.nwk``/``.newick``);
* a WordNet spec: ``"wordnet:imagenet-1k"`` or ``"wordnet:dog.n.01,cat.n.01,n02958343"``;
* a :class:`Taxonomy` (returned as is).
"""

from __future__ import annotations

from pathlib import Path

from probes.errors import ProbesError, os_errors_named
from probes.resources import TAXONOMIES, find_shipped, is_bare_name, shipped_names
from probes.taxonomy.export import (
    from_newick,
    from_node_link,
    read_taxonomy,
    to_newick,
    to_node_link,
    write_taxonomy,
)
from probes.taxonomy.tree import Taxonomy, collapse_chains
from probes.taxonomy.wordnet import imagenet_taxonomy, parse_wordnet_spec, wordnet_taxonomy
from probes.taxonomy.yaml_source import from_nested, load_yaml_taxonomy, parse_yaml_taxonomy

WORDNET_PREFIX = "wordnet:"

__all__ = [
    "Taxonomy",
    "collapse_chains",
    "from_nested",
    "from_newick",
    "from_node_link",
    "imagenet_taxonomy",
    "load_taxonomy",
    "load_yaml_taxonomy",
    "parse_yaml_taxonomy",
    "read_taxonomy",
    "shipped_taxonomies",
    "to_newick",
    "to_node_link",
    "wordnet_taxonomy",
    "write_taxonomy",
]


def shipped_taxonomies() -> list[str]:
    """Names of the YAML taxonomies shipped in the package (``probes taxonomy show NAME``)."""
    return shipped_names(TAXONOMIES)


@os_errors_named()
def load_taxonomy(source) -> Taxonomy:
    """A taxonomy from a path, a shipped name, a ``wordnet:`` spec or a Taxonomy (see above)."""
    if isinstance(source, Taxonomy):
        return source
    if not isinstance(source, (str, Path)):
        raise ProbesError(f"taxonomy source must be a path or a spec string, got {type(source).__name__}")
    text = str(source).strip()
    if text.startswith(WORDNET_PREFIX):
        return parse_wordnet_spec(text[len(WORDNET_PREFIX):])
    path = Path(text)
    if not path.exists() and is_bare_name(text):
        shipped = find_shipped(TAXONOMIES, text)
        if shipped is not None:
            path = shipped
        else:
            known = ", ".join(shipped_taxonomies()) or "none"
            raise ProbesError(f"{text}: no such taxonomy file or shipped taxonomy (shipped: {known})")
    if path.suffix.lower() in (".yaml", ".yml") or not path.suffix:
        return load_yaml_taxonomy(path)
    return read_taxonomy(path)
