# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The Compose subset of wakegrid.fleet.docker_stack: parse, interpolate, hash and plan. Pure, no I/O.

A Compose document (already parsed from YAML) becomes a ``Project``: each service normalized to
plain values (lists, dicts, strings, integers), so that two spellings of the same configuration
(``environment`` as a list or a map, ``ports`` short or long) hash the same. Anything outside the
supported subset is refused with its Compose path (``services.api.build``): a key silently ignored
would deploy something else than the file says.

The plan compares the desired services with what runs (the Compose labels of the existing
containers) and says which service to create, recreate (and which keys changed), keep or remove.
The names and labels are those of the Compose tools (docker/compose pkg/api/labels.go), so that
``docker compose ls/ps`` see a stack deployed here.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import posixpath
import re
import shlex

# Written into com.docker.compose.version: the Compose file format level this subset follows.
COMPOSE_VERSION = "2.20.0"
PROJECT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
SERVICE_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$")
CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")

TOP_LEVEL_KEYS = ("services", "networks", "volumes", "name", "version")
SERVICE_KEYS = (
    "image", "command", "entrypoint", "environment", "env_file", "ports", "volumes", "networks", "labels",
    "restart", "healthcheck", "depends_on", "user", "working_dir", "stop_grace_period", "deploy",
)
NETWORK_KEYS = ("driver", "internal", "labels", "external", "name")
VOLUME_KEYS = ("driver", "labels", "external", "name")
HEALTHCHECK_KEYS = ("test", "interval", "timeout", "retries", "start_period", "disable")
DEPENDS_ON_KEYS = ("condition", "restart", "required")
PORT_KEYS = ("target", "published", "host_ip", "protocol", "mode")
MOUNT_KEYS = ("type", "source", "target", "read_only")

# Labels the Compose tools read (docker/compose pkg/api/labels.go), and ours.
LABEL_PROJECT = "com.docker.compose.project"
LABEL_SERVICE = "com.docker.compose.service"
LABEL_NUMBER = "com.docker.compose.container-number"
LABEL_ONEOFF = "com.docker.compose.oneoff"
LABEL_CONFIG_HASH = "com.docker.compose.config-hash"
LABEL_CONFIG_FILES = "com.docker.compose.project.config_files"
LABEL_WORKING_DIR = "com.docker.compose.project.working_dir"
LABEL_DEPENDS_ON = "com.docker.compose.depends_on"
LABEL_VERSION = "com.docker.compose.version"
LABEL_IMAGE = "com.docker.compose.image"
LABEL_NETWORK = "com.docker.compose.network"
LABEL_VOLUME = "com.docker.compose.volume"
# One short digest per configuration key: says *which* key changed, without storing any value.
LABEL_KEY_DIGESTS = "io.wakegrid.stack.config-keys"

DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|h|m|s)")
DURATION_UNITS_NS = {"ns": 1, "us": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmg]?)b?$", re.I)
SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BRACED_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?$", re.S)


class ComposeError(Exception):
    """A Compose document the module refuses: ``path`` (services.api.ports[0]) and why."""

    def __init__(self, path, reason):
        super(ComposeError, self).__init__("%s: %s" % (path, reason) if path else reason)
        self.path = path
        self.reason = reason


# --------------------------------------------------------------------------- interpolation


def parse_dotenv(text, source=".env", variables=None):
    """KEY=VALUE lines (``export``, comments, single and double quotes) as a dict.

    Unquoted and double-quoted values may refer to variables defined before them (or in
    ``variables``), as Compose allows; single-quoted values are literal.
    """
    known = dict(variables or {})
    result = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        where = "%s line %d" % (source, number)
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]*$", key):
            raise ComposeError(where, "expected KEY=VALUE, got %r" % raw.strip()[:40].split("=")[0])
        value = value.strip()
        if value[:1] == "'" and value.endswith("'") and len(value) >= 2:
            value = value[1:-1]
        elif value[:1] == '"' and value.endswith('"') and len(value) >= 2:
            value = value[1:-1].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            value = interpolate_string(value, dict(known, **result), where)
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].rstrip()
            value = interpolate_string(value, dict(known, **result), where)
        result[key] = value
    return result


def interpolate_string(text, variables, path):
    """``text`` with ${VAR}, $VAR, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error},
    ${VAR:+alt}, ${VAR+alt} resolved from ``variables`` (defaults may nest) and $$ turned into $."""
    out, index = [], 0
    while True:
        dollar = text.find("$", index)
        if dollar < 0:
            out.append(text[index:])
            return "".join(out)
        out.append(text[index:dollar])
        following = text[dollar + 1:dollar + 2]
        if following == "$":
            out.append("$")
            index = dollar + 2
        elif following == "{":
            depth, end = 1, dollar + 2
            while end < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                end += 1
            if depth:
                raise ComposeError(path, "invalid interpolation format: unclosed ${ in %r" % text)
            out.append(_braced(text[dollar + 2:end - 1], variables, path))
            index = end
        else:
            name = NAME_RE.match(text, dollar + 1)
            if not name:
                raise ComposeError(path, "invalid interpolation format: a lone $ (write $$ for a literal $)")
            out.append(variables.get(name.group(0), ""))
            index = name.end()


def _braced(expression, variables, path):
    parsed = BRACED_RE.match(expression)
    if not parsed:
        raise ComposeError(path, "invalid interpolation format ${%s}" % expression)
    name, op, arg = parsed.group("name"), parsed.group("op"), parsed.group("arg")
    value = variables.get(name)
    if op is None:
        return value if value is not None else ""
    unset_or_empty = value is None or (op.startswith(":") and value == "")
    if op.endswith("-"):
        return interpolate_string(arg, variables, path) if unset_or_empty else value
    if op.endswith("+"):
        return "" if unset_or_empty else interpolate_string(arg, variables, path)
    if unset_or_empty:  # ? and :?
        arg = interpolate_string(arg, variables, path)
        raise ComposeError(path, "required variable %s is missing a value%s" % (name, ": %s" % arg if arg else ""))
    return value


def interpolate(node, variables, path=""):
    """The document with every string value interpolated (keys are left as written, as in Compose)."""
    if isinstance(node, dict):
        return dict((k, interpolate(v, variables, _join(path, k))) for k, v in node.items())
    if isinstance(node, list):
        return [interpolate(v, variables, "%s[%d]" % (path, i)) for i, v in enumerate(node)]
    if isinstance(node, str):
        return interpolate_string(node, variables, path)
    return node


# --------------------------------------------------------------------------- small value parsers


def _join(path, key):
    return "%s.%s" % (path, key) if path else str(key)


def _refuse_unknown(mapping, allowed, path):
    if not isinstance(mapping, dict):
        raise ComposeError(path, "must be a mapping, not %s" % _kind(mapping))
    for key in mapping:
        if not isinstance(key, str):
            raise ComposeError(_join(path, key), "keys must be strings")
        if key.startswith("x-"):
            continue  # extension fields: ignored by definition of the Compose specification
        if key not in allowed:
            raise ComposeError(
                _join(path, key), "not supported by wakegrid.fleet.docker_stack (supported here: %s)"
                % ", ".join(allowed)
            )


def _kind(value):
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), "null" if value is None else type(value).__name__)


def _scalar(value, path):
    """A string for a scalar (Compose writes numbers and booleans as their YAML text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise ComposeError(path, "must be a string or a number, not %s" % _kind(value))


def _string(value, path):
    if not isinstance(value, str) or not value:
        raise ComposeError(path, "must be a non-empty string, not %s" % _kind(value))
    return value


def _bool(value, path):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ComposeError(path, "must be true or false, not %r" % (value,))


def parse_duration_ns(value, path):
    """A Compose duration (``1m30s``, ``500ms``, ``10``: seconds) in nanoseconds."""
    if isinstance(value, bool):
        raise ComposeError(path, "must be a duration such as 10s or 1m30s")
    if isinstance(value, (int, float)):
        return int(value * 10**9)
    text = str(value).strip()
    if re.match(r"^\d+(\.\d+)?$", text):
        return int(float(text) * 10**9)
    parts = DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ComposeError(path, "must be a duration such as 10s or 1m30s, not %r" % text)
    return int(sum(float(n) * DURATION_UNITS_NS[u] for n, u in parts))


def parse_size(value, path):
    """Bytes from 512m, 1g, 1024k, 1048576."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = SIZE_RE.match(str(value).strip())
    if not match:
        raise ComposeError(path, "must be a size such as 512m or 1g, not %r" % (value,))
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


def _string_map(value, path, separator="="):
    """environment/labels: a list of KEY=VALUE (or KEY) or a mapping; None values stay None."""
    result = {}
    if isinstance(value, list):
        for index, item in enumerate(value):
            item = _string(item, "%s[%d]" % (path, index))
            key, sep, val = item.partition(separator)
            result[key] = val if sep else None
    elif isinstance(value, dict):
        for key, val in value.items():
            result[str(key)] = None if val is None else _scalar(val, _join(path, key))
    else:
        raise ComposeError(path, "must be a list of KEY=VALUE or a mapping, not %s" % _kind(value))
    return result


def _command(value, path):
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ComposeError(path, "cannot split into arguments: %s" % exc)
    if isinstance(value, list):
        return [_scalar(v, "%s[%d]" % (path, i)) for i, v in enumerate(value)]
    raise ComposeError(path, "must be a string or a list, not %s" % _kind(value))


# --------------------------------------------------------------------------- services


def _ports(value, path):
    if not isinstance(value, list):
        raise ComposeError(path, "must be a list")
    ports = []
    for index, item in enumerate(value):
        where = "%s[%d]" % (path, index)
        if isinstance(item, dict):
            _refuse_unknown(item, PORT_KEYS, where)
            if item.get("mode", "ingress") not in ("ingress", "host"):
                raise ComposeError(_join(where, "mode"), "must be ingress or host")
            target = item.get("target")
            published = item.get("published")
            host_ip = item.get("host_ip")
            protocol = item.get("protocol", "tcp")
        elif isinstance(item, (str, int)) and not isinstance(item, bool):
            text = str(item)
            protocol = "tcp"
            if "/" in text:
                text, protocol = text.rsplit("/", 1)
            host_ip = None
            if text.startswith("["):  # [::1]:8080:80
                host_ip, rest = text[1:].split("]", 1)
                text = rest.lstrip(":")
            parts = text.split(":")
            if len(parts) > 3 or (host_ip is not None and len(parts) != 2):
                raise ComposeError(where, "expected [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL], got %r" % str(item))
            if len(parts) == 3:
                host_ip = parts.pop(0)
            target = parts[-1]
            published = parts[0] if len(parts) == 2 else None
        else:
            raise ComposeError(where, "must be a string, a number or a mapping")
        for name, number in (("target", target), ("published", published)):
            if number is None or number == "":
                continue
            if "-" in str(number):
                raise ComposeError(where, "port ranges are not supported; list each port")
            if not str(number).isdigit() or not 0 < int(number) < 65536:
                raise ComposeError(where, "%s port must be 1-65535, not %r" % (name, number))
        if target in (None, ""):
            raise ComposeError(where, "needs a target (container) port")
        if protocol not in ("tcp", "udp", "sctp"):
            raise ComposeError(where, "protocol must be tcp, udp or sctp, not %r" % protocol)
        ports.append({
            "target": int(target),
            "published": int(published) if published not in (None, "") else None,
            "host_ip": host_ip or None,
            "protocol": protocol,
        })
    return sorted(ports, key=lambda p: (p["target"], p["protocol"], p["host_ip"] or "", p["published"] or 0))


def _mounts(value, path, declared_volumes, working_dir):
    if not isinstance(value, list):
        raise ComposeError(path, "must be a list")
    mounts = []
    for index, item in enumerate(value):
        where = "%s[%d]" % (path, index)
        if isinstance(item, dict):
            _refuse_unknown(item, MOUNT_KEYS, where)
            kind = item.get("type", "volume")
            source = item.get("source")
            target = item.get("target")
            read_only = _bool(item.get("read_only", False), _join(where, "read_only"))
        elif isinstance(item, str):
            parts = item.split(":")
            if len(parts) == 1:
                raise ComposeError(where, "anonymous volumes are not supported: name the volume (NAME:%s)" % item)
            if len(parts) > 3:
                raise ComposeError(where, "expected SOURCE:TARGET[:ro|rw], got %r" % item)
            source, target = parts[0], parts[1]
            mode = parts[2] if len(parts) == 3 else "rw"
            if mode not in ("ro", "rw"):
                raise ComposeError(where, "access mode must be ro or rw, not %r" % mode)
            read_only = mode == "ro"
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            raise ComposeError(where, "must be a string or a mapping")
        if kind not in ("volume", "bind"):
            raise ComposeError(where, "type %r is not supported (volume or bind)" % (kind,))
        target = _string(target, _join(where, "target"))
        if not target.startswith("/"):
            raise ComposeError(where, "target must be an absolute path, not %r" % target)
        source = _string(source, _join(where, "source"))
        if kind == "bind":
            if source.startswith("~"):
                raise ComposeError(where, "~ is not expanded here: give an absolute or relative path")
            if not source.startswith("/"):
                if not working_dir:
                    raise ComposeError(where, "relative bind path %r needs project_src" % source)
                source = posixpath.join(working_dir, source)
            source = posixpath.normpath(source)
        elif source not in declared_volumes:
            raise ComposeError(where, "volume %r is not declared under the top-level volumes" % source)
        mounts.append({"type": kind, "source": source, "target": target, "read_only": read_only})
    targets = [m["target"] for m in mounts]
    for target in targets:
        if targets.count(target) > 1:
            raise ComposeError(path, "two mounts on %s" % target)
    return sorted(mounts, key=lambda m: m["target"])


def _service_networks(value, path, declared_networks):
    if value is None:
        return {"default": {"aliases": []}}
    networks = {}
    if isinstance(value, list):
        for index, name in enumerate(value):
            networks[_string(name, "%s[%d]" % (path, index))] = {"aliases": []}
    elif isinstance(value, dict):
        for name, spec in value.items():
            where = _join(path, name)
            spec = spec or {}
            _refuse_unknown(spec, ("aliases",), where)
            aliases = spec.get("aliases") or []
            if not isinstance(aliases, list):
                raise ComposeError(_join(where, "aliases"), "must be a list")
            networks[name] = {"aliases": sorted(_string(a, _join(where, "aliases")) for a in aliases)}
    else:
        raise ComposeError(path, "must be a list or a mapping")
    for name in networks:
        if name != "default" and name not in declared_networks:
            raise ComposeError(_join(path, name), "network %r is not declared under the top-level networks" % name)
    if not networks:
        raise ComposeError(path, "must name at least one network")
    return networks


def _healthcheck(value, path):
    _refuse_unknown(value, HEALTHCHECK_KEYS, path)
    if _bool(value.get("disable", False), _join(path, "disable")):
        return {"test": ["NONE"]}
    result = {}
    test = value.get("test")
    if isinstance(test, str):
        result["test"] = ["CMD-SHELL", test]
    elif isinstance(test, list) and test:
        test = [_scalar(t, _join(path, "test")) for t in test]
        if test[0] not in ("CMD", "CMD-SHELL", "NONE"):
            raise ComposeError(_join(path, "test"), "a list must start with CMD, CMD-SHELL or NONE")
        result["test"] = test
    elif test is not None:
        raise ComposeError(_join(path, "test"), "must be a string or a list")
    for key in ("interval", "timeout", "start_period"):
        if value.get(key) is not None:
            result[key] = parse_duration_ns(value[key], _join(path, key))
    if value.get("retries") is not None:
        retries = value["retries"]
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ComposeError(_join(path, "retries"), "must be a whole number")
        result["retries"] = retries
    return result


def _depends_on(value, path, service_names):
    result = {}
    if isinstance(value, list):
        value = dict((_string(v, "%s[%d]" % (path, i)), None) for i, v in enumerate(value))
    if not isinstance(value, dict):
        raise ComposeError(path, "must be a list or a mapping")
    for name, spec in value.items():
        where = _join(path, name)
        spec = spec or {}
        _refuse_unknown(spec, DEPENDS_ON_KEYS, where)
        condition = spec.get("condition", "service_started")
        if condition not in CONDITIONS:
            raise ComposeError(_join(where, "condition"), "must be one of %s" % ", ".join(CONDITIONS))
        if not _bool(spec.get("required", True), _join(where, "required")):
            raise ComposeError(_join(where, "required"), "only required dependencies are supported")
        if _bool(spec.get("restart", False), _join(where, "restart")):
            raise ComposeError(
                _join(where, "restart"), "restart: true is not supported (dependants are not restarted when a "
                "dependency is recreated; they are recreated only when their own configuration changes)"
            )
        if name not in service_names:
            raise ComposeError(where, "no service named %r in this file" % name)
        result[name] = {"condition": condition, "restart": False}
    return result


def _deploy(value, path):
    _refuse_unknown(value, ("resources",), path)
    resources = value.get("resources") or {}
    _refuse_unknown(resources, ("limits",), _join(path, "resources"))
    limits = resources.get("limits") or {}
    where = _join(path, "resources.limits")
    _refuse_unknown(limits, ("memory", "cpus"), where)
    result = {}
    if limits.get("memory") is not None:
        result["memory"] = parse_size(limits["memory"], _join(where, "memory"))
    if limits.get("cpus") is not None:
        try:
            cpus = float(limits["cpus"])
        except (TypeError, ValueError):
            raise ComposeError(_join(where, "cpus"), "must be a number of CPUs such as 0.5")
        if cpus <= 0:
            raise ComposeError(_join(where, "cpus"), "must be more than 0")
        result["nano_cpus"] = int(round(cpus * 10**9))
    return result


def _restart(value, path):
    text = _scalar(value, path)
    name, sep, count = text.partition(":")
    if name not in RESTART_POLICIES or (sep and (name != "on-failure" or not count.isdigit())):
        raise ComposeError(path, "must be no, always, unless-stopped, on-failure or on-failure:N, not %r" % text)
    return {"name": name, "max_retries": int(count) if sep else 0}


def normalize_service(name, spec, project, read_env_file=None):
    """The service's configuration as plain values, every supported key present (None when unset).

    ``read_env_file(path)`` returns the text of an env_file (a path already joined to the working dir).
    """
    path = "services.%s" % name
    if spec is None:
        spec = {}
    _refuse_unknown(spec, SERVICE_KEYS, path)
    if not SERVICE_NAME_RE.match(name):
        raise ComposeError(path, "service names are letters, digits, '.', '_' and '-'")
    if "image" not in spec:
        raise ComposeError(_join(path, "image"), "is required (build is not supported: load images from tarballs)")
    environment = {}
    if spec.get("env_file") is not None:
        env_files = spec["env_file"]
        env_files = [env_files] if isinstance(env_files, str) else env_files
        if not isinstance(env_files, list):
            raise ComposeError(_join(path, "env_file"), "must be a path or a list of paths")
        for index, env_path in enumerate(env_files):
            where = "%s.env_file[%d]" % (path, index)
            env_path = _string(env_path, where)
            full = env_path if env_path.startswith("/") else posixpath.join(project["working_dir"] or "", env_path)
            if read_env_file is None:
                raise ComposeError(where, "env_file cannot be read here")
            environment.update(parse_dotenv(read_env_file(full), source=env_path))
    if spec.get("environment") is not None:
        for key, value in _string_map(spec["environment"], _join(path, "environment")).items():
            if value is None:  # KEY alone: taken from the variables, unset when there is none
                value = project["variables"].get(key)
                if value is None:
                    environment.pop(key, None)
                    continue
            environment[key] = value
    service = {
        "image": _string(spec["image"], _join(path, "image")),
        "command": _command(spec.get("command"), _join(path, "command")),
        "entrypoint": _command(spec.get("entrypoint"), _join(path, "entrypoint")),
        "environment": environment,
        "ports": _ports(spec.get("ports") or [], _join(path, "ports")),
        "volumes": _mounts(spec.get("volumes") or [], _join(path, "volumes"), project["volumes"],
                           project["working_dir"]),
        "networks": _service_networks(spec.get("networks"), _join(path, "networks"), project["networks"]),
        "labels": dict((k, v or "") for k, v in _string_map(spec.get("labels") or {}, _join(path, "labels")).items()),
        "restart": _restart(spec["restart"], _join(path, "restart")) if spec.get("restart") is not None else None,
        "healthcheck": _healthcheck(spec["healthcheck"], _join(path, "healthcheck"))
        if spec.get("healthcheck") is not None else None,
        "depends_on": _depends_on(spec.get("depends_on") or {}, _join(path, "depends_on"), project["service_names"]),
        "user": _scalar(spec["user"], _join(path, "user")) if spec.get("user") is not None else None,
        "working_dir": _string(spec["working_dir"], _join(path, "working_dir"))
        if spec.get("working_dir") is not None else None,
        "stop_grace_period": parse_duration_ns(spec["stop_grace_period"], _join(path, "stop_grace_period"))
        // 10**9 if spec.get("stop_grace_period") is not None else None,
        "limits": _deploy(spec["deploy"], _join(path, "deploy")) if spec.get("deploy") is not None else {},
    }
    for label in service["labels"]:
        if label.startswith("com.docker.compose.") or label.startswith("io.wakegrid.stack."):
            raise ComposeError(_join(path, "labels.%s" % label), "this label is set by the module itself")
    return service


def _resources(kind, value, path, allowed, project_name):
    value = value or {}
    if not isinstance(value, dict):
        raise ComposeError(path, "must be a mapping of %s" % kind)
    result = {}
    for key, spec in value.items():
        where = _join(path, key)
        spec = spec or {}
        _refuse_unknown(spec, allowed, where)
        external = _bool(spec.get("external", False), _join(where, "external"))
        name = spec.get("name")
        if name is not None:
            name = _string(name, _join(where, "name"))
        entry = {
            "name": name or (key if external else "%s_%s" % (project_name, key)),
            "external": external,
            "driver": spec.get("driver"),
            "labels": dict((k, v or "") for k, v in _string_map(spec.get("labels") or {}, _join(where, "labels")).items()),
        }
        if kind == "networks":
            entry["internal"] = _bool(spec.get("internal", False), _join(where, "internal"))
        if external and (entry["driver"] or entry["labels"] or entry.get("internal")):
            raise ComposeError(where, "an external %s takes no driver, labels or internal" % kind[:-1])
        result[key] = entry
    return result


def load_project(document, project_name, working_dir=None, config_files=(), variables=None, read_env_file=None):
    """A validated, interpolated project from a parsed Compose ``document``; ComposeError when refused.

    ``variables``: the interpolation variables (.env files merged with the module's options).
    """
    variables = dict(variables or {})
    if not isinstance(document, dict):
        raise ComposeError("", "a Compose file is a mapping with a services key, not %s" % _kind(document))
    _refuse_unknown(document, TOP_LEVEL_KEYS, "")
    document = interpolate(document, variables)
    name = project_name or document.get("name")
    if not name:
        raise ComposeError("name", "no project name: set project_name (or name: in the Compose file)")
    if not PROJECT_NAME_RE.match(name):
        raise ComposeError("name", "project name %r must be lowercase letters, digits, '_' and '-'" % name)
    services = document.get("services")
    if not isinstance(services, dict) or not services:
        raise ComposeError("services", "at least one service is required")
    project = {
        "name": name,
        "working_dir": working_dir,
        "config_files": list(config_files),
        "variables": variables,
        "service_names": set(services),
    }
    project["networks"] = _resources("networks", document.get("networks"), "networks", NETWORK_KEYS, name)
    project["volumes"] = _resources("volumes", document.get("volumes"), "volumes", VOLUME_KEYS, name)
    project["services"] = dict(
        (service, normalize_service(service, spec, project, read_env_file)) for service, spec in services.items()
    )
    used = set(n for s in project["services"].values() for n in s["networks"])
    if "default" in used and "default" not in project["networks"]:
        project["networks"]["default"] = {
            "name": "%s_default" % name, "external": False, "driver": None, "labels": {}, "internal": False,
        }
    project["networks"] = dict((k, v) for k, v in project["networks"].items() if k in used)
    project["order"] = start_order(project["services"])
    del project["service_names"], project["variables"]  # the variables may hold secrets: not kept
    return project


# --------------------------------------------------------------------------- order, hash, plan


def start_order(services):
    """Service names so that each comes after what it depends on (alphabetical among equals)."""
    order, state = [], {}

    def visit(name, chain):
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = chain[chain.index(name):] + [name]
            raise ComposeError("services.%s.depends_on" % name, "dependency cycle: %s" % " -> ".join(cycle))
        state[name] = "visiting"
        for dependency in sorted(services[name]["depends_on"]):
            visit(dependency, chain + [name])
        state[name] = "done"
        order.append(name)

    for name in sorted(services):
        visit(name, [])
    return order


def _hashed_view(service):
    # depends_on only orders the start: changing it does not recreate a container (as in Compose).
    return dict((k, v) for k, v in service.items() if k != "depends_on")


def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def config_hash(service):
    """The com.docker.compose.config-hash of a normalized service: equal configurations, equal hashes."""
    return _digest(_hashed_view(service))


def key_digests(service):
    """A short digest per configuration key (per variable for environment, per label for labels)."""
    digests = {}
    for key, value in _hashed_view(service).items():
        if key in ("environment", "labels"):
            for name, item in value.items():
                digests["%s.%s" % (key, name)] = _digest(item)[:12]
        elif value not in (None, {}, []):
            digests[key] = _digest(value)[:12]
    return digests


def changed_keys(before, after):
    """Keys whose digest differs, appeared or disappeared, sorted."""
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def depends_on_label(service):
    return ",".join(
        "%s:%s:%s" % (name, dep["condition"], "true" if dep["restart"] else "false")
        for name, dep in sorted(service["depends_on"].items())
    )


def container_labels(project, name, service, image_id):
    """The labels of a service's container: the service's own, then Compose's and ours."""
    labels = dict(service["labels"])
    labels.update({
        LABEL_PROJECT: project["name"],
        LABEL_SERVICE: name,
        LABEL_NUMBER: "1",
        LABEL_ONEOFF: "False",
        LABEL_CONFIG_HASH: config_hash(service),
        LABEL_CONFIG_FILES: ",".join(project["config_files"]),
        LABEL_WORKING_DIR: project["working_dir"] or "",
        LABEL_DEPENDS_ON: depends_on_label(service),
        LABEL_VERSION: COMPOSE_VERSION,
        LABEL_IMAGE: image_id or "",
        LABEL_KEY_DIGESTS: json.dumps(key_digests(service), sort_keys=True, separators=(",", ":")),
    })
    return labels


def container_name(project_name, service_name):
    return "%s-%s-1" % (project_name, service_name)


def one_shot_services(services):
    """Services that others wait on to complete: an exited one with code 0 is done, not down."""
    return set(
        dep for s in services.values() for dep, spec in s["depends_on"].items()
        if spec["condition"] == "service_completed_successfully"
    )


def plan(project, existing, image_ids):
    """What to do with each service.

    ``existing``: service name -> {config_hash, key_digests (dict or None), image_id, status, exit_code}
    of its current container (from its labels and inspect data). ``image_ids``: service -> the image
    ID it should run. Returns {create: [..], recreate: {service: [keys]}, start: [..], keep: [..],
    remove: [..]}, services in start order (remove: alphabetical).
    """
    result = {"create": [], "recreate": {}, "start": [], "keep": [], "remove": sorted(set(existing) - set(project["services"]))}
    done_when_exited = one_shot_services(project["services"])
    for name in project["order"]:
        service = project["services"][name]
        current = existing.get(name)
        if current is None:
            result["create"].append(name)
            continue
        why = []
        if current.get("config_hash") != config_hash(service):
            if current.get("key_digests") is None:
                why = ["config-hash"]  # created by another tool: no per-key digests to compare
            else:
                why = changed_keys(current["key_digests"], key_digests(service)) or ["config-hash"]
        if image_ids.get(name) and current.get("image_id") != image_ids[name]:
            why.append("image_id")
        if why:
            result["recreate"][name] = why
        elif current.get("status") == "running" or (
            name in done_when_exited and current.get("status") == "exited" and current.get("exit_code") == 0
        ):
            result["keep"].append(name)
        else:
            result["start"].append(name)
    return result


def plan_summary(result):
    """One line per action, for the diff: ``+ create db``, ``~ recreate api (environment.TOKEN)``."""
    lines = ["+ create %s" % name for name in result["create"]]
    lines += ["~ recreate %s (changed: %s)" % (n, ", ".join(k)) for n, k in sorted(result["recreate"].items())]
    lines += ["> start %s (not running)" % name for name in result["start"]]
    lines += ["- remove %s" % name for name in result["remove"]]
    return "\n".join(lines) + ("\n" if lines else "")


def mask(text, secrets):
    """``text`` with every secret value replaced by ********, longest first (a secret inside another)."""
    if not text:
        return text
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "********")
    return text
