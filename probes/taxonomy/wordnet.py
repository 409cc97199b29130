"""WordNet -> taxonomy: a tree induced from the hypernyms of a list of noun synsets.

WordNet's noun hierarchy is a DAG (``dog.n.01`` is both a ``canine.n.02`` and a
``domestic_animal.n.01``; about 300 ImageNet-1k classes have several hypernym paths). A tree needs
one parent per synset. The policy is chosen per synset, not per leaf, so every leaf's path is
consistent with every other leaf's:

* ``"deepest"`` (default): a synset keeps its most specific hypernym, the one with the longest
  path up to ``entity.n.01`` (``Synset.max_depth()``); ties go to the hypernym over more requested
  leaves, then to WordNet's first-listed one. Taxonomic categories sit deeper than role
  categories, so ``dog.n.01`` goes under ``canine.n.02`` (next to wolves and foxes) rather than
  ``domestic_animal.n.01``, ``domestic_cat.n.01`` under ``cat.n.01``, and ``tank.n.01`` under
  ``armored_vehicle.n.01`` rather than ``military_vehicle.n.01`` (which WordNet lists first).
* ``"most-leaves"``: the hypernym under which the most requested leaves lie (counting every
  WordNet path); ties go to WordNet's first-listed hypernym. Groups a class with the relatives it
  shares most, but a broad role category can win (on ImageNet-1k the domestic cats leave
  ``feline.n.01`` for ``domestic_animal.n.01``).
* ``"first"``: always WordNet's first-listed hypernym (the first pointer on the synset's line of
  the data file), independent of which leaves are requested.

"First-listed" and every tie-break use the order of the WordNet data file (:func:`_hypernyms`):
nltk's own ``hypernyms()`` order changes between processes.

Instance hypernyms count as hypernyms. Single-child chains are collapsed by default (see
:func:`probes.taxonomy.tree.collapse_chains`; the root becomes the deepest synset above every leaf),
``keep_chains=True`` keeps every WordNet level from ``entity.n.01`` down.

Node ids are synset names (``dog.n.01``); every node carries ``synset``, ``wnid``
(``n`` + 8-digit offset), ``label`` (first lemma, underscores as spaces) and ``aliases`` (the other
lemmas). A requested leaf that is a hypernym of another requested leaf is an error: a leaf stays a
leaf.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import networkx as nx

from probes._compat import patch_torchvision
from probes.errors import ProbesError
from probes.taxonomy.tree import Taxonomy, collapse_chains
from probes.taxonomy.wordnet_data import ensure_wordnet

POLICIES = ("deepest", "most-leaves", "first")
NAMED_SETS = ("imagenet-1k",)
_WNID = re.compile(r"^n\d{8}$")
_SYNSET_NAME = re.compile(r"^[^\s.][^\s]*\.[nvasr]\.(0[1-9]|[1-9][0-9]*)$")  # senses count from 01


def wnid_of(synset) -> str:
    return f"{synset.pos()}{synset.offset():08d}"


def resolve_synset(spec: str):
    """A noun synset from a synset name (``dog.n.01``) or a wnid (``n02084071``)."""
    wn = ensure_wordnet()
    spec = str(spec).strip()
    synset = None
    if _WNID.match(spec):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # nltk warns before returning None
                synset = wn.synset_from_pos_and_offset("n", int(spec[1:]))
        except Exception:  # nltk raises WordNetError, or fails to parse a line at a bad offset
            synset = None
        if synset is None or wnid_of(synset) != spec:
            raise ProbesError(f"wordnet: unknown wnid '{spec}'")
        return synset
    if not _SYNSET_NAME.match(spec):
        raise ProbesError(
            f"wordnet: '{spec}' is neither a synset name like dog.n.01 nor a wnid like n02084071"
        )
    try:
        synset = wn.synset(spec)
    except Exception:  # WordNetError for unknown lemma or sense number
        raise ProbesError(f"wordnet: unknown synset '{spec}'") from None
    if synset.pos() != "n":
        raise ProbesError(f"wordnet: '{spec}' is not a noun synset; only nouns form one hierarchy")
    return synset


def _hypernyms(synset) -> list:
    """Hypernyms and instance hypernyms in WordNet's own listing order.

    nltk keeps a synset's pointers in a set, so ``synset.hypernyms()`` comes back in an order
    that changes from one process to the next. Policies and tie-breaks need the order of the
    WordNet data file, read here from the synset's line; readers without that file fall back to
    increasing offset, which is at least reproducible.
    """
    found = synset.hypernyms() + synset.instance_hypernyms()
    order = _pointer_order(synset)
    return sorted(found, key=lambda h: (order.get(h.offset(), len(order)), h.offset()))


def _pointer_order(synset) -> dict[int, int]:
    """{offset: position} of the ``@``/``@i`` pointers on the synset's line in ``data.noun``."""
    reader = synset._wordnet_corpus_reader
    try:
        data = reader._data_file(synset.pos())
        data.seek(synset.offset())
        fields = data.readline().split()
    except (AttributeError, OSError, ValueError):
        return {}
    # offset lex_filenum ss_type w_cnt (word lex_id)*w_cnt p_cnt (symbol offset pos source_target)*
    words = int(fields[3], 16)
    start = 4 + 2 * words
    pointers = [fields[start + 1 + 4 * i: start + 5 + 4 * i] for i in range(int(fields[start]))]
    hyper = [int(offset) for symbol, offset, *_ in pointers if symbol in ("@", "@i")]
    return {offset: i for i, offset in enumerate(hyper)}


def _node_attrs(synset) -> dict:
    lemmas = [name.replace("_", " ") for name in synset.lemma_names()]
    return {"label": lemmas[0], "aliases": lemmas[1:], "synset": synset.name(), "wnid": wnid_of(synset)}


def wordnet_taxonomy(
    synsets: Sequence[str],
    name: str = "wordnet",
    keep_chains: bool = False,
    policy: str = "deepest",
    indices: Sequence[int] | None = None,
) -> Taxonomy:
    """A taxonomy whose leaves are ``synsets`` (names or wnids), induced from WordNet.

    Children are ordered by their first leaf in ``synsets``. ``indices`` (one per synset) become
    the leaves' ``index`` attribute.
    """
    key = (tuple(str(s) for s in synsets), str(name), bool(keep_chains), policy,
           None if indices is None else tuple(int(i) for i in indices))
    return _build(*key).copy()


@functools.lru_cache(maxsize=8)
def _build(synsets, name, keep_chains, policy, indices) -> Taxonomy:
    if policy not in POLICIES:
        raise ProbesError(f"wordnet: unknown hypernym policy '{policy}' (expected {' or '.join(POLICIES)})")
    if not synsets:
        raise ProbesError("wordnet: no synsets given")
    if indices is not None and len(indices) != len(synsets):
        raise ProbesError(f"wordnet: {len(indices)} indices for {len(synsets)} synsets")
    leaves = [resolve_synset(s) for s in synsets]
    first = {}
    for spec, synset in zip(synsets, leaves):
        if synset in first:
            raise ProbesError(
                f"wordnet: '{spec}' and '{first[synset]}' are the same synset ({synset.name()})"
            )
        first[synset] = spec

    # DAG ancestors of every leaf; how many leaves lie under each synset along any path.
    under = Counter()
    leaf_set = set(leaves)
    for synset in leaves:
        above = set(synset.closure(_hypernyms))
        clash = above & leaf_set
        if clash:
            other = sorted(s.name() for s in clash)[0]
            raise ProbesError(
                f"wordnet: '{other}' is a hypernym of '{synset.name()}' and both are requested "
                "leaves; a leaf must stay a leaf, drop one of them"
            )
        under.update(above)

    parent_cache = {}

    def parent(synset):
        if synset not in parent_cache:
            candidates = _hypernyms(synset)
            if not candidates:
                parent_cache[synset] = None
            elif policy == "first" or len(candidates) == 1:
                parent_cache[synset] = candidates[0]
            elif policy == "most-leaves":  # max() keeps the first of equals: WordNet's order
                parent_cache[synset] = max(candidates, key=lambda c: under[c])
            else:
                parent_cache[synset] = max(candidates, key=lambda c: (c.max_depth(), under[c]))
        return parent_cache[synset]

    graph = nx.DiGraph()
    tops = set()
    for i, synset in enumerate(leaves):
        path = [synset]
        while path[-1].name() not in graph:
            up = parent(path[-1])
            if up is None:
                tops.add(path[-1].name())
                break
            path.append(up)
        for s in reversed(path):
            if s.name() not in graph:
                graph.add_node(s.name(), **_node_attrs(s))
        for up, down in zip(reversed(path), list(reversed(path))[1:]):
            graph.add_edge(up.name(), down.name())
        if indices is not None:
            graph.nodes[synset.name()]["index"] = indices[i]
    if len(tops) != 1:  # every noun reaches entity.n.01 in WordNet 3.0; guard other versions
        raise ProbesError(f"wordnet: the synsets have no common hypernym ({', '.join(sorted(tops))})")
    root = tops.pop()
    if not keep_chains:
        graph, root = collapse_chains(graph, root, keep_root=False)
    return Taxonomy(graph, name=name)


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in the standard (sorted) classifier order (read once)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        raise ProbesError("wordnet:imagenet-1k needs the ImageNet class list from timm: pip install timm")
    listed = Path(spec.origin).parent / "data" / "_info" / "imagenet_synsets.txt"
    if listed.is_file():  # read the file timm ships, without importing torch
        wnids = listed.read_text().split()
    else:
        patch_torchvision()
        from timm.data import ImageNetInfo

        wnids = list(ImageNetInfo().label_names())
    if len(wnids) != 1000 or len(set(wnids)) != 1000 or not all(_WNID.match(w) for w in wnids):
        raise ProbesError("wordnet:imagenet-1k: timm's ImageNet class list is not 1000 distinct wnids")
    return sorted(wnids)


def imagenet_taxonomy(keep_chains: bool = False, policy: str = "deepest") -> Taxonomy:
    """The ImageNet-1k classes as a WordNet tree; leaves carry ``index`` 0..999 and ``wnid``."""
    wnids = imagenet_wnids()
    return wordnet_taxonomy(wnids, name="imagenet-1k", keep_chains=keep_chains, policy=policy,
                            indices=range(len(wnids)))


def parse_wordnet_spec(spec: str | Sequence[str], keep_chains: bool = False,
                       policy: str = "deepest", name: str | None = None) -> Taxonomy:
    """``"imagenet-1k"``, a comma-separated string of synsets/wnids, or a list of them."""
    if isinstance(spec, str):
        spec = spec.strip()
        if spec in NAMED_SETS:
            tax = imagenet_taxonomy(keep_chains=keep_chains, policy=policy)
            if name is not None:
                tax.name = name
                tax.graph.graph["name"] = name
            return tax
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = [str(s).strip() for s in spec]
    if not items:
        raise ProbesError("wordnet: no synsets given (e.g. wordnet:dog.n.01,cat.n.01 or wordnet:imagenet-1k)")
    return wordnet_taxonomy(items, name=name or "wordnet", keep_chains=keep_chains, policy=policy)
