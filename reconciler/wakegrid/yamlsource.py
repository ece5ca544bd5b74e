"""YAML loading that remembers where each value came from.

The fleet model reports every problem as ``path: reason`` with the line of the
file it comes from, so loading keeps a map from value paths to line numbers.
PyYAML silently keeps the last of two equal keys; here a duplicate key is a
problem of its own, since a fleet with two ``nas`` nodes is almost always a
copy-paste mistake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


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


class _Loader(yaml.SafeLoader):
    # YAML 1.1 reads 52:54:00:12:34:56 and 23:30 as base-60 numbers; a fleet is full of MACs
    # and times, so ints and floats are resolved as in YAML 1.2 (no sexagesimal forms).
    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_Loader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _construct_vault(loader: yaml.SafeLoader, node: yaml.Node) -> VaultValue:
    return VaultValue(str(loader.construct_scalar(node)))  # type: ignore[arg-type]


_Loader.add_constructor("!vault", _construct_vault)


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, line: int | None):
        super().__init__(message)
        self.line = line


def load_yaml(text: str) -> YamlDocument:
    """Parse ``text``; raise YamlSyntaxError with the line on malformed YAML."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return YamlDocument(None, {}, [])
        # Walk before constructing: construction flattens merge keys (<<) into the mapping,
        # which would make every overridden merged key look like a duplicate.
        lines: dict[Path, int] = {}
        duplicates: list[tuple[Path, int, int]] = []
        _walk(root, (), lines, duplicates)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        message = str(exc.problem or exc)
        if exc.context and exc.context_mark and exc.context_mark is not mark:
            message += f" ({exc.context} on line {exc.context_mark.line + 1})"
        raise YamlSyntaxError(message, line) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc), None) from None
    finally:
        loader.dispose()
    return YamlDocument(data, lines, duplicates)


def _walk(node: yaml.Node, path: Path, lines: dict[Path, int], duplicates: list) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = str(key_node.value)
            child = (*path, key)
            line = key_node.start_mark.line + 1
            if key in seen:
                duplicates.append((child, line, seen[key]))
                # The last copy is the one that counts: point later problems at it.
                for stale in [p for p in lines if p[: len(child)] == child]:
                    del lines[stale]
            seen[key] = line
            lines[child] = line
            _walk(value_node, child, lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines, duplicates)
