"""API parameters: their types (:class:`P`), PVE::JSONSchema's validation, and the vmid and target-storage formats."""

from __future__ import annotations

import re

from .errors import param_error


class P:
    """One API parameter: JSON-schema-like type (boolean, integer, number, string, or an enum list)."""

    def __init__(self, kind: str | list[str] = "string", optional: bool = True, minimum: int | None = None):
        self.kind = kind
        self.optional = optional
        self.minimum = minimum


def check_params(raw: dict[str, object], schema: dict[str, P]) -> dict[str, object]:
    """Validate like PVE::JSONSchema: unknown, missing and badly typed values are 400 errors."""
    errors: dict[str, str] = {}
    out: dict[str, object] = {}
    for key, value in raw.items():
        spec = schema.get(key)
        if spec is None:
            errors[key] = "property is not defined in schema and the schema does not allow additional properties"
            continue
        if isinstance(value, bool):  # a JSON body's true/false
            value = "1" if value else "0"
        value = str(value)
        kind = spec.kind
        if isinstance(kind, list):
            if value not in kind:
                errors[key] = f"value '{value}' does not have a value in the enumeration '{', '.join(kind)}'"
            else:
                out[key] = value
        elif kind == "boolean":
            # PVE's type check is strict: only 0 and 1 (so Python's True, sent as "True", fails)
            if value not in ("0", "1"):
                errors[key] = f"type check ('boolean') failed - got '{value}'"
            else:
                out[key] = value == "1"
        elif kind == "integer":
            if not re.fullmatch(r"[+-]?\d+", value):
                errors[key] = f"type check ('integer') failed - got '{value}'"
            elif spec.minimum is not None and int(value) < spec.minimum:
                errors[key] = f"value must have a minimum value of {spec.minimum}"
            else:
                out[key] = int(value)
        elif kind == "number":
            if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", value):
                errors[key] = f"type check ('number') failed - got '{value}'"
            elif spec.minimum is not None and float(value) < spec.minimum:
                errors[key] = f"value must have a minimum value of {spec.minimum}"
            else:
                out[key] = float(value)
        else:
            out[key] = value
    for key, spec in schema.items():
        if not spec.optional and key not in raw:
            errors[key] = "property is missing and it is not optional"
    if errors:
        raise param_error(errors)
    return out


def _check_vmid(value: str) -> int:
    if not re.fullmatch(r"\d+", value):
        raise param_error({"vmid": f"type check ('integer') failed - got '{value}'"})
    if int(value) < 100:
        raise param_error({"vmid": "value must have a minimum value of 100"})
    return int(value)


def _parse_storage_map(value: object) -> dict[str, str]:
    """``target-storage``: ``STORE`` (everything there) or ``SRC:DST,SRC2:DST2``; ``"*"`` is the catch-all key."""
    mapping: dict[str, str] = {}
    if not value:
        return mapping
    for item in str(value).split(","):
        src, sep, dst = item.partition(":")
        if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9\-_.]*", dst if sep else src):
            raise param_error({"target-storage": f"invalid format - storage ID '{item}' is not valid"})
        mapping["*" if not sep else src] = dst if sep else src
    return mapping
