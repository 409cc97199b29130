"""YAML as users write it, read strictly and within bounds.

PyYAML's safe loader follows YAML 1.1, whose implicit types surprise: ``010`` is the octal 8,
``0x1F`` is 31, ``1:20`` is the sexagesimal 80, ``yes``/``off`` are booleans, ``2024-01-01`` is a
date, while ``1e12`` (no dot) stays a string. :class:`StrictLoader` resolves plain scalars the
YAML 1.2 way instead: decimal integers without leading zeros, decimal floats (``1e12``, ``.5``,
``.inf``, ``.nan``), ``true``/``false``, ``null``/``~``; everything else is a string, as written.

It also refuses what a hand-written file never means: a key given twice in one mapping (PyYAML
keeps the last silently), nesting deeper than :data:`MAX_DEPTH`, and alias "bombs" whose
expansion exceeds :data:`MAX_NODES` nodes (aliases are shared objects in memory, but every
consumer that walks or serialises the data expands them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import yaml

from probes.errors import ProbesError
from probes.fileio import read_text

MAX_DEPTH = 200  # nested collections; PyYAML composes recursively, ~2 frames a level
MAX_NODES = 200_000  # scalars and collections after alias expansion

_RESOLVED_TAGS = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                  "tag:yaml.org,2002:timestamp"}
_YAML12 = [
    ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")),
    ("tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")),
    ("tag:yaml.org,2002:float",
     re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
                r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
     list("-+.0123456789")),
]


class YamlProblem(Exception):
    """A problem found while loading, with the 1-based line it is on (None if unknown)."""

    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line, self.message = line, message


class StrictLoader(yaml.SafeLoader):
    """Safe loading with YAML 1.2 scalars, duplicate-key refusal and size/depth bounds."""

    yaml_implicit_resolvers: ClassVar[dict] = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in _RESOLVED_TAGS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlProblem(self.peek_event().start_mark.line + 1,
                                  f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node):
        _check_expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            check_unique_keys(self, node)
        return super().construct_mapping(node, deep=deep)


for _tag, _rx, _first in _YAML12:
    StrictLoader.add_implicit_resolver(_tag, _rx, _first)


def check_unique_keys(loader: yaml.SafeLoader, node: yaml.MappingNode) -> None:
    """Refuse a mapping that gives one key twice, naming both lines."""
    seen: dict = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            continue
        line = key_node.start_mark.line + 1
        if key in seen:
            raise YamlProblem(line, f"{key!r} appears twice in one mapping (lines {seen[key]} and {line}); "
                                    "the first would be silently ignored")
        seen[key] = line


def _check_expanded_size(root: yaml.Node) -> None:
    """Walk the node graph as consumers will (aliases expanded), stopping at the bounds."""
    count, stack = 0, [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise YamlProblem(None, f"expands to more than {MAX_NODES} values (aliases that repeat each other?)")
        if depth > MAX_DEPTH:
            raise YamlProblem(node.start_mark.line + 1,
                              f"nested deeper than {MAX_DEPTH} levels (an alias that contains itself?)")
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))


def load_yaml(text: str, source: str, loader: type[yaml.SafeLoader] = StrictLoader) -> Any:
    """Parse YAML text; every problem is one ``ProbesError`` line ``source:LINE: what``."""
    try:
        return yaml.load(text, Loader=loader)
    except YamlProblem as exc:
        where = f"{source}:{exc.line}" if exc.line else source
        raise ProbesError(f"{where}: {exc.message}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        raise ProbesError(f"{where}: invalid YAML: {problem}" + (f" ({context})" if context else "")) from None
    except RecursionError:
        raise ProbesError(f"{source}: nested too deeply to read") from None


def load_yaml_file(path: str | Path, what: str = "YAML file", loader: type[yaml.SafeLoader] = StrictLoader) -> Any:
    """Read and parse a user's YAML file within the size bound of :func:`probes.fileio.read_text`."""
    return load_yaml(read_text(path, what), str(path), loader)


def parse_value(text: str, source: str) -> Any:
    """A scalar or small structure given on the command line (``--set key=VALUE``)."""
    return load_yaml(text, source)


def first_comment(path: str | Path, limit: int = 110) -> str | None:
    """The first sentence of the comment block that opens a YAML file (its one-line description),
    cut at a word boundary near ``limit`` characters; None when the file opens with no comment."""
    lines = []
    for line in read_text(path, "YAML file").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(part for part in lines if part)
    if not text:
        return None
    # a sentence ends at a full stop before a capital letter, not at "et al." or "e.g."
    end = re.search(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.\s+(?=[A-Z])", text)
    sentence = text if end is None else text[: end.start() + 1]
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return sentence
