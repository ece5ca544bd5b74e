"""A stateful Proxmox VE API emulator for the lab, standard library only.

No real PVE runs in the lab, so each "Proxmox" lab host runs this server instead of
pveproxy. It answers the subset of ``/api2/json`` that the wakegrid collection and
reconciler use, with PVE's envelope, error conventions, UPID tasks, ticket and API
token auth, so that proxmoxer works against it unchanged. Guests are real Docker
containers that it starts, stops and moves between nodes.

Cluster state lives in a directory shared by every emulator of a cluster (like
/etc/pve on pmxcfs); see docs/lab-pve-emulator.md for its layout. The lab creates it
with :func:`init_cluster` and :func:`write_guest` and runs one emulator per node::

    python3 pve --node pve1 --cluster-dir /etc/pve --listen 0.0.0.0 --port 8006

It runs inside lab hosts that only have Debian's python3, so it must stay stdlib-only:
the lab copies this package's directory next to engine.py and runs the directory
(``__main__.py``); ``python3 -m wakegrid.lab.pve`` runs it from the installed package.

One concern per module, each importing only modules listed before it:
``errors`` (ApiError), ``store`` (the cluster directory), ``schema`` (API parameters),
``tasks`` (UPIDs, task logs and lists), ``auth`` (tokens, tickets, CSRF), ``tls`` (certificates),
``node`` (guests, power actions, heartbeat), ``migrate`` (LXC migration), ``handlers``
(routes and endpoints: :class:`Emulator`), ``server`` (HTTPS server, command line).
"""

from .auth import TICKET_LIFETIME, Auth
from .errors import ApiError, die, param_error
from .handlers import PVE_VERSION, Emulator
from .migrate import LxcMigration
from .node import LOCK_TIMEOUT, STATUS_EXPIRE, STATUS_INTERVAL, Node
from .schema import P, check_params
from .server import HEARTBEAT_INTERVAL, ApiHandler, ApiServer, main, serve
from .store import (
    DEFAULT_MAXDISK,
    DEFAULT_MAXMEM,
    DEFAULT_STORAGES,
    GUEST_KINDS,
    HEARTBEAT_STALE,
    NODE_RE,
    ClusterState,
    init_cluster,
    write_guest,
)
from .tasks import TASK_STATUS_TYPES, UPID_RE, Task, list_tasks, normalize_status_type, read_task
from .tls import ensure_certificate

__all__ = [
    "DEFAULT_MAXDISK",
    "DEFAULT_MAXMEM",
    "DEFAULT_STORAGES",
    "GUEST_KINDS",
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_STALE",
    "LOCK_TIMEOUT",
    "NODE_RE",
    "PVE_VERSION",
    "STATUS_EXPIRE",
    "STATUS_INTERVAL",
    "TASK_STATUS_TYPES",
    "TICKET_LIFETIME",
    "UPID_RE",
    "ApiError",
    "ApiHandler",
    "ApiServer",
    "Auth",
    "ClusterState",
    "Emulator",
    "LxcMigration",
    "Node",
    "P",
    "Task",
    "check_params",
    "die",
    "ensure_certificate",
    "init_cluster",
    "list_tasks",
    "main",
    "normalize_status_type",
    "param_error",
    "read_task",
    "serve",
    "write_guest",
]
