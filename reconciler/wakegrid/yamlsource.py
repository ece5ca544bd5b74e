"""YAML loading that remembers where each value came from.

The fleet model reports every problem as ``path: reason`` with the line of the
file it comes from, so loading keeps a map from value paths to line numbers.
PyYAML silently keeps the last of two equal keys; here a duplicate key is a
problem of its own, since a fleet with two ``nas`` nodes is almost always a
copy-paste mistake.
"""

from __future__ import annotations

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


class _Loader(yaml.SafeLoader):
    pass


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
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise YamlSyntaxError(f"{exc.problem or exc}", line) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc), None) from None
    finally:
        loader.dispose()
    lines: dict[Path, int] = {}
    duplicates: list[tuple[Path, int, int]] = []
    _walk(root, (), lines, duplicates)
    return YamlDocument(data, lines, duplicates)


def _walk(node: yaml.Node, path: Path, lines: dict[Path, int], duplicates: list) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*path, key)
            line = key_node.start_mark.line + 1
            if key in seen:
                duplicates.append((child, line, seen[key]))
                continue
            seen[key] = line
            lines[child] = line
            _walk(value_node, child, lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines, duplicates)
