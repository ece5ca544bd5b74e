# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Proxmox VE client code shared by the wakegrid.fleet Proxmox modules.

Two layers:

* pure helpers (guest lookup, power planning, tag parsing, fleet classification and pre-filled
  fleet entries): plain data in, plain data out, unit-tested without any server;
* ``ProxmoxClient``: a thin wrapper around proxmoxer that turns every failure into a
  ``ProxmoxError`` with a message naming the step, the guest and the node, and never a secret.

Python 3.8 compatible. proxmoxer and requests are imported in guards, so that a module run on a
host without them fails with ``missing_required_lib`` (install advice) instead of a traceback.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import time
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib
from ansible_collections.wakegrid.fleet.plugins.module_utils.fleet_entries import suggest_name

PROXMOXER_IMP_ERR = None
try:
    from proxmoxer import ProxmoxAPI, ResourceException
    from proxmoxer.core import AuthenticationError

    HAS_PROXMOXER = True
except ImportError:
    PROXMOXER_IMP_ERR = traceback.format_exc()
    HAS_PROXMOXER = False

    class ResourceException(Exception):  # placeholder, so that except clauses stay valid
        pass

    class AuthenticationError(Exception):  # placeholder, so that except clauses stay valid
        pass

REQUESTS_IMP_ERR = None
try:
    import requests

    HAS_REQUESTS = True
except ImportError:
    REQUESTS_IMP_ERR = traceback.format_exc()
    HAS_REQUESTS = False

# PVE's two guest types, as /cluster/resources and the API paths name them, and the fleet kinds.
PVE_TYPE_TO_KIND = {"qemu": "vm", "lxc": "lxc"}
KIND_TO_PVE_TYPE = {"vm": "qemu", "lxc": "lxc"}
# How PVE itself names a guest in its messages ("CT 201 not running", "VM 101 already running").
TYPE_LABEL = {"qemu": "VM", "lxc": "CT"}

POWER_STATES = ("started", "stopped", "shutdown", "restarted")

# Task logs of power actions are a few lines; ask for an explicit limit because PVE versions
# disagree on what limit=0 means (all lines on recent ones, 50 on older ones).
TASK_LOG_LIMIT = 1000
# Extra time granted to a shutdown task beyond the guest's own timeout: PVE needs a moment to
# force the stop (force_stop) and to finish the task.
TASK_GRACE = 30


class ProxmoxError(Exception):
    """A failure to report with fail_json: ``msg`` plus extra result keys (task_log, upid, ...)."""

    def __init__(self, msg, **result):
        super(ProxmoxError, self).__init__(msg)
        self.msg = msg
        self.result = result


# ----------------------------------------------------------------------------------------
# Module arguments
# ----------------------------------------------------------------------------------------


def proxmox_argument_spec():
    """Connection options shared by the modules (documented in the wakegrid.fleet.proxmox fragment).

    The environment variables are community.proxmox's, so that a shell or an execution environment
    set up for one collection serves the other.
    """
    return dict(
        api_host=dict(type="str", required=True, fallback=(env_fallback, ["PROXMOX_HOST"])),
        api_port=dict(type="int", default=8006, fallback=(env_fallback, ["PROXMOX_PORT"])),
        api_user=dict(type="str", fallback=(env_fallback, ["PROXMOX_USER"])),
        api_password=dict(type="str", no_log=True, fallback=(env_fallback, ["PROXMOX_PASSWORD"])),
        api_token_id=dict(type="str", no_log=False, fallback=(env_fallback, ["PROXMOX_TOKEN_ID"])),
        api_token_secret=dict(type="str", no_log=True, fallback=(env_fallback, ["PROXMOX_TOKEN_SECRET"])),
        validate_certs=dict(type="bool", default=True, fallback=(env_fallback, ["PROXMOX_VALIDATE_CERTS"])),
        api_timeout=dict(type="int", default=10),
    )


PROXMOX_REQUIRED_ONE_OF = [("api_password", "api_token_secret")]
PROXMOX_REQUIRED_TOGETHER = [("api_token_id", "api_token_secret")]
PROXMOX_MUTUALLY_EXCLUSIVE = [("api_password", "api_token_secret"), ("api_password", "api_token_id")]


def split_token_id(api_user, api_token_id):
    """Return (user, token name) from either the full PVE token ID or a user and a token name.

    PVE names a token C(user@realm!name) (the fleet file's ``token_id``); community.proxmox
    passes the user and the bare name separately. Both forms are accepted.
    """
    if "!" in api_token_id:
        user, name = api_token_id.split("!", 1)
        if api_user and api_user != user:
            raise ProxmoxError(
                "api_token_id %r belongs to user %r but api_user is %r; give one or make them agree"
                % (api_token_id, user, api_user)
            )
    else:
        user, name = api_user, api_token_id
    if not user:
        raise ProxmoxError("api_user is required unless api_token_id is the full token ID user@realm!name")
    if "@" not in user:
        raise ProxmoxError("the API user %r has no realm; write it user@realm, for example root@pam" % user)
    if not name:
        raise ProxmoxError("api_token_id %r has an empty token name" % api_token_id)
    return user, name


# ----------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------


def split_tags(value):
    """PVE tags as a list: the API gives one string, separated by ';' (',' and spaces accepted)."""
    if not value:
        return []
    if isinstance(value, (list, tuple)):
        return [str(tag) for tag in value if str(tag)]
    return [tag for tag in re.split(r"[;,\s]+", str(value)) if tag]


def guest_label(guest):
    """'CT 201' or 'VM 101', like PVE's own messages."""
    return "%s %s" % (TYPE_LABEL.get(guest.get("type"), "guest"), guest.get("vmid"))


def find_guest(resources, vmid=None, name=None):
    """The one /cluster/resources?type=vm entry for ``vmid`` (or ``name``), or a ProxmoxError.

    Templates are skipped for a name lookup (they cannot run), and a name must be unique:
    PVE does not enforce unique names, so a duplicate is an error that lists the vmids.
    """
    guests = [r for r in resources if r.get("type") in PVE_TYPE_TO_KIND]
    if vmid is not None:
        matches = [g for g in guests if int(g.get("vmid", -1)) == int(vmid)]
        if not matches:
            raise ProxmoxError("no VM or CT with vmid %s in this Proxmox VE cluster" % vmid, vmid=vmid)
        found = matches[0]
        if name is not None and found.get("name") != name:
            raise ProxmoxError(
                "%s is named %r, not %r" % (guest_label(found), found.get("name"), name), vmid=int(vmid)
            )
        return found
    matches = [g for g in guests if g.get("name") == name and not g.get("template")]
    if not matches:
        raise ProxmoxError("no VM or CT named %r in this Proxmox VE cluster" % name)
    if len(matches) > 1:
        raise ProxmoxError(
            "%d guests are named %r (vmids %s); give vmid instead"
            % (len(matches), name, ", ".join(str(g["vmid"]) for g in sorted(matches, key=lambda g: g["vmid"])))
        )
    return matches[0]


def is_running(status):
    return status == "running"


def plan_power(state, status):
    """The PVE actions that bring a guest with ``status`` to ``state``, in order.

    ``started``: start unless running. ``stopped``: hard stop unless stopped. ``shutdown``:
    clean shutdown unless stopped. ``restarted``: clean shutdown then start when running, start
    when stopped (always a change). An empty list means nothing to do.
    """
    if state not in POWER_STATES:
        raise ValueError("unknown state %r" % state)
    running = is_running(status)
    if state == "started":
        return [] if running else ["start"]
    if state == "stopped":
        return ["stop"] if running else []
    if state == "shutdown":
        return ["shutdown"] if running else []
    return ["shutdown", "start"] if running else ["start"]


def expected_status(state):
    return "running" if state in ("started", "restarted") else "stopped"


def task_failed(task_status):
    """True when a finished task did not end OK (PVE writes 'OK', or 'WARNINGS: n' for a success).

    Like PVE::UPID::status_is_error (pve-common src/PVE/UPID.pm): anything else is an error message.
    """
    exitstatus = str(task_status.get("exitstatus") or "")
    return not (exitstatus == "OK" or re.match(r"^WARNINGS: \d+$", exitstatus))


def task_running(task):
    """True for an entry of GET /nodes/{node}/tasks that is still running.

    PVE lists a running task with ``status: "RUNNING"`` and no ``endtime``; a finished one carries its
    exit status there ("OK", "WARNINGS: 2", an error message) and its ``endtime`` (pve-manager
    PVE/API2/Tasks.pm node_tasks). Not to be confused with /nodes/{node}/tasks/{upid}/status, whose
    ``status`` is "running" or "stopped" and whose exit status is ``exitstatus``.
    """
    return not task.get("endtime") and str(task.get("status") or "RUNNING").upper() == "RUNNING"


def log_lines(entries):
    """Task log entries ([{'n': 1, 't': 'text'}]) as a list of strings, in line order."""
    return [str(entry.get("t", "")) for entry in sorted(entries or [], key=lambda e: int(e.get("n", 0)))]


def upid_node(upid):
    """The node that runs a task: the second field of its UPID (UPID:node:pid:...)."""
    parts = str(upid).split(":")
    if len(parts) < 3 or parts[0] != "UPID":
        raise ProxmoxError("not a Proxmox VE task id: %r" % upid)
    return parts[1]


def with_live_status(resources, nodes, listings):
    """/cluster/resources entries with each guest's status from its own node, where that node answered.

    The status in /cluster/resources is pvestatd's last broadcast, up to ~10 s old, and pmxcfs keeps a
    powered-off node's for 5 minutes (pve-manager PVE/API2/Cluster.pm resources); a node's own guest
    lists (``listings``: node -> GET /nodes/{node}/qemu + lxc) are live. Guests of a node that is not
    online get V(unknown): nothing current is known about them.
    """
    online = set(n.get("node") for n in nodes if n.get("status") == "online")
    live = {}
    for node, entries in (listings or {}).items():
        for entry in entries or []:
            live[(node, int(entry["vmid"]))] = entry
    out = []
    for resource in resources:
        if resource.get("type") not in PVE_TYPE_TO_KIND:
            out.append(resource)
            continue
        resource = dict(resource)
        node = resource.get("node")
        entry = live.get((node, int(resource["vmid"])))
        if node not in online:
            resource.update(status="unknown", uptime=0)
        elif entry is not None:
            for key in ("status", "uptime", "name"):
                if entry.get(key) is not None:
                    resource[key] = entry[key]
        out.append(resource)
    return out


def guest_summary(resource, parents=None):
    """A discovered guest as the modules return it, from one /cluster/resources entry."""
    pve_type = resource.get("type")
    node = resource.get("node")
    return {
        "vmid": int(resource["vmid"]),
        "name": resource.get("name"),
        "type": pve_type,
        "kind": PVE_TYPE_TO_KIND.get(pve_type),
        "node": node,
        "parent": (parents or {}).get(node, node),
        "status": resource.get("status"),
        "lock": resource.get("lock"),
        "template": bool(resource.get("template")),
        "maxmem": resource.get("maxmem"),
        "cpus": resource.get("maxcpu"),
        "maxdisk": resource.get("maxdisk"),
        "uptime": resource.get("uptime", 0),
        "tags": split_tags(resource.get("tags")),
    }


def fleet_parents(fleet_nodes):
    """Map PVE node names to the fleet machines that carry them.

    A fleet machine with ``proxmox`` runs the PVE node ``proxmox.node``, which defaults to the
    machine's own name (docs/fleet.md).
    """
    parents = {}
    for name, spec in (fleet_nodes or {}).items():
        if not isinstance(spec, dict) or spec.get("kind") != "machine":
            continue
        proxmox = spec.get("proxmox")
        if not isinstance(proxmox, dict):
            continue
        parents[str(proxmox.get("node") or name)] = str(name)
    return parents


def suggest_fleet_name(guest, taken):
    """A fleet node name for a discovered guest: its PVE name made valid and unique (else kind-vmid)."""
    return suggest_name(guest.get("name"), guest["vmid"], taken, "%s-%s" % (guest["kind"], guest["vmid"]))


def prefill_entry(guest):
    """The fleet ``nodes`` entry for a discovered guest: what the API knows, nothing invented.

    What the API cannot tell (address, dependencies, services) is left for the user.
    """
    return {"kind": guest["kind"], "parent": guest["parent"], "vmid": guest["vmid"], "tags": list(guest["tags"])}


def classify_guests(resources, cluster_nodes, known_vmids=None, fleet_nodes=None):
    """Mark each discovered guest as configured in the fleet or not; pre-fill the others.

    ``cluster_nodes`` are the PVE node names of the cluster. A fleet vm/lxc belongs to this cluster
    when its parent is a machine carrying one of those nodes; when no machine of the fleet carries
    any of them (a fleet that describes the machines differently), fleet guests are matched by
    vmid alone and a warning says so. ``known_vmids`` are configured vmids given directly.

    Returns a dict: ``guests`` (sorted by vmid), ``unconfigured`` (suggested name -> entry),
    ``missing`` (fleet guests of this cluster that the cluster does not have) and ``warnings``.
    """
    fleet_nodes = fleet_nodes or {}
    parents = fleet_parents(fleet_nodes)
    cluster_machines = set(machine for node, machine in parents.items() if node in set(cluster_nodes))
    warnings = []

    fleet_guests = {}  # vmid -> (fleet name, spec) for guests of this cluster
    fleet_guest_specs = [
        (str(name), spec)
        for name, spec in sorted(fleet_nodes.items(), key=lambda item: str(item[0]))
        if isinstance(spec, dict) and spec.get("kind") in KIND_TO_PVE_TYPE and spec.get("vmid") is not None
    ]
    if fleet_guest_specs and not cluster_machines:
        warnings.append(
            "no machine in fleet_nodes carries a node of this cluster (%s) through proxmox.node; "
            "fleet guests were matched by vmid alone" % ", ".join(sorted(cluster_nodes))
        )
    for name, spec in fleet_guest_specs:
        if cluster_machines and spec.get("parent") not in cluster_machines:
            continue
        try:
            vmid = int(spec["vmid"])
        except (TypeError, ValueError):
            warnings.append("fleet node %s has a vmid that is not a number: %r" % (name, spec["vmid"]))
            continue
        if vmid in fleet_guests:
            warnings.append("fleet nodes %s and %s share vmid %d" % (fleet_guests[vmid][0], name, vmid))
            continue
        fleet_guests[vmid] = (name, spec)
    known = set(int(v) for v in (known_vmids or []))

    taken = set(str(name) for name in fleet_nodes)
    guests = []
    unconfigured = {}
    for resource in sorted(
        (r for r in resources if r.get("type") in PVE_TYPE_TO_KIND), key=lambda r: int(r["vmid"])
    ):
        guest = guest_summary(resource, parents)
        vmid = guest["vmid"]
        fleet = fleet_guests.get(vmid)
        guest["configured"] = fleet is not None or vmid in known
        guest["fleet_node"] = fleet[0] if fleet else None
        guest["fleet_entry"] = None
        guest["notes"] = []
        if fleet:
            spec = fleet[1]
            if spec.get("kind") != guest["kind"]:
                guest["notes"].append(
                    "the fleet says kind %s, Proxmox VE has a %s" % (spec.get("kind"), guest["kind"])
                )
            if cluster_machines and spec.get("parent") != guest["parent"]:
                guest["notes"].append(
                    "the fleet says parent %s, the guest is on node %s (%s)"
                    % (spec.get("parent"), guest["node"], guest["parent"])
                )
        elif not guest["configured"]:
            if guest["template"]:
                guest["notes"].append("a template: it cannot run, so it is not offered as a fleet node")
            else:
                name = suggest_fleet_name(guest, taken)
                taken.add(name)
                guest["fleet_entry"] = prefill_entry(guest)
                guest["suggested_name"] = name
                unconfigured[name] = guest["fleet_entry"]
        guests.append(guest)

    present = set(g["vmid"] for g in guests)
    missing = [
        {"fleet_node": name, "vmid": vmid} for vmid, (name, _spec) in sorted(fleet_guests.items()) if vmid not in present
    ]
    missing.extend({"fleet_node": None, "vmid": vmid} for vmid in sorted(known - present - set(fleet_guests)))
    return {"guests": guests, "unconfigured": unconfigured, "missing": missing, "warnings": warnings}


# ----------------------------------------------------------------------------------------
# The client
# ----------------------------------------------------------------------------------------


def check_libraries(module):
    """fail_json with install advice when proxmoxer or requests is missing on the managed host."""
    if not HAS_PROXMOXER:
        module.fail_json(msg=missing_required_lib("proxmoxer"), exception=PROXMOXER_IMP_ERR)
    if not HAS_REQUESTS:
        module.fail_json(msg=missing_required_lib("requests"), exception=REQUESTS_IMP_ERR)


class ProxmoxClient:
    """proxmoxer with errors that say what failed, where, and what to check.

    ``params`` are the module parameters of ``proxmox_argument_spec``. Connecting checks the
    credentials at once (GET /version), so a wrong token fails before anything else happens.
    """

    def __init__(self, params, sleep=time.sleep, clock=time.monotonic):
        self.sleep = sleep
        self.clock = clock
        self.host = params["api_host"]
        self.port = params["api_port"]
        self.endpoint = "https://%s:%s" % (self.host, self.port)
        if params.get("api_token_secret"):
            user, token_name = split_token_id(params.get("api_user"), params["api_token_id"])
            self.identity = "API token %s!%s" % (user, token_name)
            auth = dict(user=user, token_name=token_name, token_value=params["api_token_secret"])
        else:
            if not params.get("api_user"):
                raise ProxmoxError("api_user is required with api_password")
            self.identity = "user %s" % params["api_user"]
            auth = dict(user=params["api_user"], password=params["api_password"])
        if not params["validate_certs"] and HAS_REQUESTS:
            # The user chose not to verify (PVE's default self-signed certificate); do not warn on
            # every request.
            requests.packages.urllib3.disable_warnings(requests.packages.urllib3.exceptions.InsecureRequestWarning)
        try:
            # Password auth logs in here (POST /access/ticket); token auth only on first use.
            self.api = ProxmoxAPI(
                self.host,
                port=self.port,
                verify_ssl=params["validate_certs"],
                timeout=params["api_timeout"],
                service="PVE",
                **auth
            )
        except Exception as exc:  # pylint: disable=broad-except
            raise self.error("log in", exc)
        self.call("check the credentials", self.api.version.get)

    # ---- errors

    def error(self, step, exc):
        """A ProxmoxError for ``exc`` raised while doing ``step``; never includes a secret."""
        where = "%s at %s as %s" % (step, self.endpoint, self.identity)
        if isinstance(exc, AuthenticationError) or (isinstance(exc, ResourceException) and exc.status_code == 401):
            detail = getattr(exc, "content", None) or str(exc)
            return ProxmoxError(
                "Proxmox VE authentication failed (%s): %s. Check api_user, api_token_id and "
                "api_token_secret (or api_password)" % (where, detail)
            )
        if isinstance(exc, ResourceException):
            detail = "%s %s" % (exc.status_code, exc.content)
            if getattr(exc, "errors", None):
                detail += " (%s)" % ", ".join("%s: %s" % item for item in sorted(exc.errors.items()))
            if exc.status_code == 403:
                detail += "; the user or token lacks the permission (check its privileges and privilege separation)"
            return ProxmoxError("Failed to %s: %s" % (where, detail), status_code=exc.status_code)
        if HAS_REQUESTS and isinstance(exc, requests.exceptions.SSLError):
            return ProxmoxError(
                "Failed to %s: TLS verification failed (%s). PVE uses a self-signed certificate by "
                "default: install its CA on this host, or set validate_certs=false" % (where, exc)
            )
        if HAS_REQUESTS and isinstance(exc, requests.exceptions.RequestException):
            return ProxmoxError("Failed to %s: cannot reach the Proxmox VE API (%s)" % (where, exc))
        return ProxmoxError("Failed to %s: %s" % (where, exc))

    def call(self, step, func, *args, **kwargs):
        """``func(*args, **kwargs)``, its failure turned into a ProxmoxError naming ``step``."""
        try:
            return func(*args, **kwargs)
        except ProxmoxError:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            raise self.error(step, exc)

    # ---- reads

    def resources(self):
        """Every guest of the cluster with its current node: GET /cluster/resources?type=vm."""
        return self.call("list the cluster's guests", self.api.cluster.resources.get, type="vm")

    def nodes(self):
        return self.call("list the cluster's nodes", self.api.nodes.get)

    def node_guests(self, node):
        """The guests on ``node`` as that node sees them now: GET /nodes/{node}/qemu and /lxc."""
        step = "list the guests of node %s" % node
        api = self.api.nodes(node)
        return list(self.call(step, api.qemu.get) or []) + list(self.call(step, api.lxc.get) or [])

    def guest_api(self, guest):
        return self.api.nodes(guest["node"])(guest["type"])(guest["vmid"])

    def current(self, guest):
        """GET status/current on the guest's node: the authoritative status and config lock."""
        return self.call(
            "read the status of %s on node %s" % (guest_label(guest), guest["node"]),
            self.guest_api(guest).status.current.get,
        )

    def locate(self, vmid=None, name=None):
        """The guest's resource entry, with its current node (guests move between nodes)."""
        return find_guest(self.resources(), vmid=vmid, name=name)

    def active_tasks(self, vmid):
        """Running tasks about ``vmid`` on every online node.

        A migration task runs on the source node even after the configuration has moved to the
        target, and a restart migration shuts the guest down before it takes the config lock:
        looking at the guest's own node and lock alone would miss both.
        """
        tasks = []
        for node in self.nodes():
            if node.get("status") != "online":
                continue
            tasks.extend(
                self.call(
                    "list the running tasks of node %s" % node["node"],
                    self.api.nodes(node["node"]).tasks.get,
                    source="active",
                    vmid=vmid,
                )
            )
        return [t for t in tasks if str(t.get("id")) == str(vmid) and task_running(t)]

    # ---- tasks

    def post_action(self, guest, action, **params):
        """POST status/<action>; returns the task's UPID."""
        step = "%s %s on node %s" % (action, guest_label(guest), guest["node"])
        return self.call(step, getattr(self.guest_api(guest).status, action).post, **params)

    def task_status(self, upid):
        node = upid_node(upid)
        return self.call("read the status of task %s" % upid, self.api.nodes(node).tasks(upid).status.get)

    def task_log(self, upid):
        """The task's log lines; a failure to read them is reported inside the log, not raised."""
        node = upid_node(upid)
        try:
            entries = self.api.nodes(node).tasks(upid).log.get(start=0, limit=TASK_LOG_LIMIT)
        except Exception as exc:  # pylint: disable=broad-except
            return ["(could not read the task log: %s)" % self.error("read the task log", exc).msg]
        return log_lines(entries)

    def wait_task(self, upid, timeout, interval=0.5):
        """Poll a task until it stops; returns its final status, or None when ``timeout`` passed.

        Polls fast at first (power actions usually take a second or two), then every ``interval``.
        """
        deadline = self.clock() + timeout
        delay = 0.1
        while True:
            status = self.task_status(upid)
            if status.get("status") == "stopped":
                return status
            if self.clock() >= deadline:
                return None
            self.sleep(min(delay, max(0.0, deadline - self.clock())))
            delay = min(delay * 2, interval)

    # ---- LXC migration

    def lxc_config(self, guest):
        """GET .../lxc/{vmid}/config on the guest's node: its mount points and their sizes."""
        return self.call(
            "read the configuration of %s on node %s" % (guest_label(guest), guest["node"]),
            self.guest_api(guest).config.get,
        )

    def migrate_lxc(self, guest, target, **params):
        """POST .../lxc/{vmid}/migrate on the source node; returns the UPID of the vzmigrate task."""
        step = "migrate %s from node %s to node %s" % (guest_label(guest), guest["node"], target)
        return self.call(step, self.guest_api(guest).migrate.post, target=target, **params)

    def task_log_from(self, upid, start):
        """The task's log lines from line ``start`` (0-based) on, one page (PVE's start/limit paging)."""
        node = upid_node(upid)
        step = "read the log of task %s" % upid
        entries = self.call(step, self.api.nodes(node).tasks(upid).log.get, start=start, limit=TASK_LOG_LIMIT)
        return log_lines(entries)

    def follow_task(self, upid, on_lines, timeout, interval=0.25):
        """Poll a task and hand its new log lines to ``on_lines`` as they appear, until it stops.

        Returns the final status, or None after ``timeout`` seconds. The log is read after the
        status, so the lines a stopped task wrote last are never missed.
        """
        deadline = self.clock() + timeout
        seen = 0
        while True:
            status = self.task_status(upid)
            while True:
                lines = self.task_log_from(upid, seen)
                # An empty or unreadable log is one placeholder line (pve-common dump_logfile).
                if seen == 0 and lines in (["no content"], ["unable to open file - No such file or directory"]):
                    lines = []
                if not lines:
                    break
                seen += len(lines)
                on_lines(lines)
                if len(lines) < TASK_LOG_LIMIT:
                    break
            if status.get("status") == "stopped":
                return status
            if self.clock() >= deadline:
                return None
            self.sleep(interval)


# ----------------------------------------------------------------------------------------
# LXC migration: the guest's volumes, and the migration task's log read as phases
# ----------------------------------------------------------------------------------------

# The phases of a migration task, in order (pve-guest-common src/PVE/AbstractMigrate.pm ``migrate``
# runs prepare, phase1, phase3 and final_cleanup; pve-container src/PVE/LXC/Migrate.pm logs them):
# ``prepare`` until the first line, ``shutdown`` (restart mode), ``copy`` (phase1: the volumes),
# ``start`` (final_cleanup: unlock and start on the target), then ``done`` or ``failed``.
MIGRATION_PHASES = ("prepare", "shutdown", "copy", "start", "done", "failed")
# The overall percentage each phase begins at; the copy fills 10..90 by bytes copied.
_PHASE_PERCENT = {"prepare": 0, "shutdown": 5, "copy": 10, "start": 90, "done": 100}
_COPY_SPAN = 80

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_MOUNT_KEY = re.compile(r"^(rootfs|mp\d+|unused\d+)$")
_LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (ERROR: )?(.*)$")
# dd's progress and summary lines, as pve-storage's storage_migrate logs them (src/PVE/Storage.pm).
_DD_BYTES = re.compile(r"^(\d+) bytes? (?:\([^)]*\) )?copied, ([\d.]+) s, ([^ ]+ ?[^ ]*)/s$")


def parse_size(value):
    """A PVE disk size (``8G``, ``512M``, ``1048576``) in bytes; None when absent or not a size."""
    match = re.match(r"^(\d+(?:\.\d+)?)([KMGT]?)$", str(value or "").strip())
    if not match:
        return None
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def ct_volumes(config):
    """The mount points of an LXC configuration (GET .../lxc/{vmid}/config), as a list of dicts.

    Each has ``key`` (rootfs, mpN, unusedN), ``volume``, ``size`` (bytes or None), ``storage`` (None
    for a bind or device mount), ``type`` (``volume``, ``bind`` or ``device``, as
    PVE::LXC::Config::classify_mountpoint says) and ``shared``. pve-container's Migrate.pm refuses a
    bind or device mount point unless it is marked shared.
    """
    out = []
    for key in sorted((config or {}), key=lambda k: (k != "rootfs", k)):
        if not _MOUNT_KEY.match(key):
            continue
        parts = str(config[key]).split(",")
        options = dict(part.split("=", 1) for part in parts[1:] if "=" in part)
        volume = options.pop("volume", None) or parts[0]
        if volume.startswith("/dev/"):
            kind = "device"
        elif volume.startswith("/"):
            kind = "bind"
        else:
            kind = "volume"
        out.append(
            {
                "key": key,
                "volume": volume,
                "size": parse_size(options.get("size")),
                "storage": volume.split(":", 1)[0] if kind == "volume" else None,
                "type": kind,
                "shared": options.get("shared") in ("1", "yes", "on", "true"),
            }
        )
    return out


def storage_map(target_storage):
    """O(target_storage) as PVE's C(target-storage) string: a dict {source: target} or one storage name."""
    if not target_storage:
        return None
    if isinstance(target_storage, dict):
        return ",".join("%s:%s" % (src, dst) for src, dst in sorted(target_storage.items()))
    return str(target_storage)


def mapped_storage(storage, target_storage):
    """Where a volume of ``storage`` lands for a C(target-storage) value (PVE::JSONSchema::map_id)."""
    if not target_storage:
        return storage
    if isinstance(target_storage, dict):
        return target_storage.get(storage, target_storage.get("*", storage))
    return str(target_storage)


class MigrationLog:
    """A migration task's log, fed as it grows, read as phases and percentages.

    ``sizes`` maps each local volume to its size in bytes (from the CT's configuration), so that
    dd's ``N bytes (...) copied`` lines become a copy percentage. :meth:`feed` returns one event per
    line that says something: ``{"phase", "percent", "copy_percent", "message", "pve_time"}``, plus
    ``volume``/``bytes`` for copy lines and ``error`` for errors. ``percent`` never goes down; it
    is 100 only when the migration finished successfully.
    """

    def __init__(self, sizes=None):
        self.sizes = dict(sizes or {})
        self.phase = "prepare"
        self.percent = 0
        self.copied_volumes = []  # volumes reported copied ("volume 'x' is 'y' on the target")
        self.current_bytes = 0
        self.found = []
        self.errors = []
        self.target_volumes = {}

    @property
    def total_bytes(self):
        return sum(size for size in self.sizes.values() if size)

    def copy_percent(self):
        total = self.total_bytes
        if not total:
            return 100 if self.copied_volumes and len(self.copied_volumes) >= len(self.found) else 0
        done = sum(self.sizes.get(volid) or 0 for volid in self.copied_volumes)
        return max(0, min(100, int(100 * (done + self.current_bytes) / total)))

    def _advance(self, phase, percent=None):
        if phase != "failed":
            self.phase = phase
            floor = _PHASE_PERCENT.get(phase, self.percent)
            self.percent = max(self.percent, floor if percent is None else percent)
        else:
            self.phase = "failed"

    def feed(self, lines):
        events = []
        for line in lines:
            event = self.feed_line(line)
            if event is not None:
                events.append(event)
        return events

    def feed_line(self, line):
        text = str(line).rstrip("\n")
        stamp, error, message = None, False, text.strip()
        match = _LOG_STAMP.match(text)
        if match:
            stamp, error, message = match.group(1), bool(match.group(2)), match.group(3).strip()
        event = {"message": message, "pve_time": stamp}
        if message.startswith("TASK ERROR: "):
            self._advance("failed")
            event["error"] = message[len("TASK ERROR: ") :]
        elif message == "TASK OK":
            return None
        elif error:
            self.errors.append(message)
            event["error"] = message
            if message.startswith("migration aborted") or message.startswith("migration finished with problems"):
                self._advance("failed")
        elif re.match(r"^shutdown CT \d+$", message):
            self._advance("shutdown")
        elif message.startswith("starting migration of CT "):
            self._advance("copy")
        elif message.startswith("found local volume '"):
            volid = message.split("'")[1]
            self.found.append(volid)
            event["volume"] = volid
        elif _DD_BYTES.match(message):
            copied = int(_DD_BYTES.match(message).group(1))
            # The sender's and the receiver's dd both report; a volume's count only grows.
            self.current_bytes = max(self.current_bytes, copied)
            event["bytes"] = copied
            self._advance("copy", 10 + _COPY_SPAN * self.copy_percent() // 100)
        elif re.match(r"^volume '[^']+' is '[^']+' on the target$", message):
            parts = message.split("'")
            self.copied_volumes.append(parts[1])
            self.target_volumes[parts[1]] = parts[3]
            self.current_bytes = 0
            event["volume"] = parts[1]
            self._advance("copy", 10 + _COPY_SPAN * self.copy_percent() // 100)
        elif message == "start final cleanup":
            self._advance("start")
        elif message == "start container on target node":
            self._advance("start", 95)
        elif message == "start container on source node":
            event["rollback"] = True
        elif message.startswith("migration finished successfully"):
            self._advance("done", 100)
        elif not message:
            return None
        # any other line (a command, LVM's output) is passed on as it is: the phase does not move
        return self._with_state(event)

    def _with_state(self, event):
        event.update(phase=self.phase, percent=self.percent, copy_percent=self.copy_percent())
        return event


def migration_error(lines):
    """PVE's own reason for a failed migration, from its log: the ``migration aborted (...): reason``
    part (pve-guest-common AbstractMigrate.pm), else the last ``ERROR:`` line, else the task's error."""
    reason = None
    for line in lines:
        match = _LOG_STAMP.match(str(line))
        if match and match.group(2):
            message = match.group(3).strip()
            aborted = re.match(r"^migration aborted \(duration [\d:]+\): (.*)$", message)
            reason = aborted.group(1) if aborted else (reason or message)
        elif str(line).startswith("TASK ERROR: ") and reason is None:
            reason = str(line)[len("TASK ERROR: ") :]
    return reason
