"""YAML loading that remembers where each value came from.

The fleet model reports every problem as ``path: reason`` with the line of the
file it comes from, so loading keeps a map from value paths to line numbers.
PyYAML silently keeps the last of two equal keys; here a duplicate key is a
problem of its own, since a fleet with two ``nas`` nodes is almost always a
copy-paste mistake.

Parsing uses libyaml when PyYAML was built with it (about ten times faster, with
the same marks, resolvers and constructors), else PyYAML's pure-Python parser.
Hostile input is refused as a YAML problem with its line, never by running out
of time, memory or stack: nesting is limited to :data:`MAX_DEPTH` levels, and
aliases may add at most :data:`MAX_ALIAS_VALUES` values to the document once
expanded (a few KB of nested aliases can otherwise expand to billions).
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]

MAX_DEPTH = 100
MAX_ALIAS_VALUES = 100_000


@dataclass(frozen=True)
class VaultValue:
    """An Ansible Vault ``!vault`` value, kept encrypted until it is needed."""

    ciphertext: str = field(repr=False)

    def __repr__(self) -> str:
        return "VaultValue(<encrypted>)"


@dataclass
class YamlDocument:
    data: Any
    lines: dict[Path, int]
    duplicates: list[tuple[Path, int, int]]  # (path, line, line of the first occurrence)

    def line_of(self, path: Path) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"
# YAML 1.1 reads 52:54:00:12:34:56 and 23:30 as base-60 numbers; a fleet is full of MACs
# and times, so ints and floats are resolved as in YAML 1.2 (no sexagesimal forms).
_RESOLVERS = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_INT_RE = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


def _construct_vault(loader: yaml.SafeLoader, node: yaml.Node) -> VaultValue:
    return VaultValue(str(loader.construct_scalar(node)))  # type: ignore[arg-type]


class _PyLoader(yaml.SafeLoader):
    """The pure-Python fallback; its composer recurses, so depth is limited while composing."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# libyaml's parser and composer keep every mark, and libyaml refuses more than 1,000 levels by itself.
_CLoader = type("_CLoader", (yaml.CSafeLoader,), {}) if getattr(yaml, "CSafeLoader", None) is not None else None
_LOADERS: list[type] = [_CLoader, _PyLoader] if _CLoader is not None else [_PyLoader]
for _loader in _LOADERS:
    _loader.yaml_implicit_resolvers = {first: list(resolvers) for first, resolvers in _RESOLVERS.items()}
    _loader.add_implicit_resolver(_INT, _INT_RE, list("-+0123456789"))
    _loader.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))
    _loader.add_constructor("!vault", _construct_vault)


@contextmanager
def bulk_allocation() -> Iterator[None]:
    """Pause the cyclic garbage collector while building a large tree of fresh objects.

    Building a big fleet allocates hundreds of thousands of containers, none garbage; every
    allocation threshold crossed would scan the whole growing heap again (five times the work
    of parsing a 2 MB fleet).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.line = line


def load_yaml(text: str, *, pure: bool = False) -> YamlDocument:
    """Parse ``text``; raise YamlSyntaxError with the line on malformed or hostile YAML.

    ``pure``: use the pure-Python parser even where libyaml is available (tests).
    """
    with bulk_allocation():
        return _load(text, _PyLoader if pure else _LOADERS[0])


def _load(text: str, loader_class: type) -> YamlDocument:
    loader = None
    try:
        loader = loader_class(text)
        root = loader.get_single_node()
        if root is None:
            return YamlDocument(None, {}, [])
        # Walk before constructing: construction flattens merge keys (<<) into the mapping,
        # which would make every overridden merged key look like a duplicate.
        lines, duplicates = _walk(root)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        message = str(exc.problem or exc)
        if exc.context and exc.context_mark and exc.context_mark.line != mark.line:
            message += f" ({exc.context} on line {exc.context_mark.line + 1})"
        elif exc.context:
            message += f" ({exc.context})"
        raise YamlSyntaxError(message, line) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc), None) from None
    except UnicodeError as exc:  # a str that is not valid Unicode (lone surrogates)
        raise YamlSyntaxError(f"not valid Unicode text ({exc.reason})", None) from None
    finally:
        if loader is not None:
            loader.dispose()
    return YamlDocument(data, lines, duplicates)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded_sizes(root: yaml.Node) -> dict[int, int]:
    """How many values each collection stands for once its aliases are expanded, keyed by id.

    The node graph is shared (an alias is the anchored node itself), so this is linear in its
    size. Raises on an alias inside its own anchor (a recursive document).
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes.get(id(child), 1) for child in _children(node))
            continue
        if key in sizes or isinstance(node, yaml.ScalarNode):
            continue
        if key in on_path:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to its own anchor (recursive structure)", node.start_mark
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if not isinstance(child, yaml.ScalarNode))
    return sizes


def _walk(root: yaml.Node) -> tuple[dict[Path, int], list[tuple[Path, int, int]]]:
    """Lines of every value path and the duplicate keys, with depth and alias expansion bounded."""
    lines: dict[Path, int] = {}
    duplicates: list[tuple[Path, int, int]] = []
    # Later siblings are walked first and ``setdefault`` keeps the first line recorded, so the
    # last copy of a duplicated key is the one problems point at (it is the one that counts).
    stack: list[tuple[yaml.Node, Path, int, int]] = [(root, (), root.start_mark.line + 1, 0)]
    seen: set[int] = set()
    repeated = 0  # values walked again through aliases
    while stack:
        node, path, line, depth = stack.pop()
        lines.setdefault(path, line)
        if isinstance(node, yaml.ScalarNode):
            continue
        if id(node) in seen:
            repeated += len(node.value)
            if repeated > MAX_ALIAS_VALUES:
                _refuse_alias_expansion(root, _expanded_sizes(root))
        seen.add(id(node))
        if depth >= MAX_DEPTH:
            _expanded_sizes(root)  # an alias inside its own anchor is the likelier cause: say so
            raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", node.start_mark)
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = str(key_node.value)
                key_line = key_node.start_mark.line + 1
                if key in first:
                    duplicates.append(((*path, key), key_line, first[key]))
                first.setdefault(key, key_line)
                stack.append((value_node, (*path, key), key_line, depth + 1))
        else:
            for index, item in enumerate(node.value):
                stack.append((item, (*path, index), item.start_mark.line + 1, depth + 1))
    duplicates.sort(key=lambda entry: entry[1])
    return lines, duplicates


def _refuse_alias_expansion(root: yaml.Node, sizes: dict[int, int]) -> None:
    """Raise at the first alias, in file order, past which the expansion exceeds the limit."""
    added = 0
    seen: set[int] = set()
    # (node, line of the place that uses it): a key's line, else the enclosing collection's.
    stack: list[tuple[yaml.Node, int]] = [(root, root.start_mark.line + 1)]
    while stack:
        node, line = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            continue
        if id(node) in seen:  # an alias: its values count again, without walking them
            added += sizes[id(node)] - 1
            if added > MAX_ALIAS_VALUES:
                raise YamlSyntaxError(
                    f"aliases expand the document by more than {MAX_ALIAS_VALUES:,} values (alias expansion bomb?)",
                    line,
                )
            continue
        seen.add(id(node))
        here = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            pairs = [(value, key.start_mark.line + 1) for key, value in node.value]
        else:
            pairs = [(item, here if id(item) in seen else item.start_mark.line + 1) for item in node.value]
        stack.extend(reversed(pairs))
