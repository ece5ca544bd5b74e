"""Worker tasks: UPIDs, and each task's log and status record in ``nodes/<node>/tasks`` of the cluster directory."""

from __future__ import annotations

import re
import time

from .store import ClusterState, _read_json, _write_json

# PVE::UPID::decode's pattern (pve-common src/PVE/UPID.pm)
UPID_RE = re.compile(
    r"^UPID:(?P<node>[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?):(?P<pid>[0-9A-Fa-f]{8}):(?P<pstart>[0-9A-Fa-f]{8,9}):"
    r"(?P<starttime>[0-9A-Fa-f]{8}):(?P<type>[^:\s/]+):(?P<id>[^:\s/]*):(?P<user>[^:\s/]+):$"
)
TASK_STATUS_TYPES = ("ok", "warning", "error", "unknown")  # the pve-task-status-type format


def _upid_file(upid: str) -> str:
    return upid.replace(":", "_").rstrip("_")


class Task:
    """A worker task: an UPID, a log file and a status record in ``nodes/<node>/tasks``."""

    def __init__(self, state: ClusterState, node: str, pid: int, ttype: str, tid: str, user: str):
        self.state = state
        self.node = node
        self.starttime = int(time.time())
        self.pstart = int(time.monotonic() * 100) & 0xFFFFFFFF  # like a process start time in clock ticks
        self.upid = f"UPID:{node}:{pid:08X}:{self.pstart:08X}:{self.starttime:08X}:{ttype}:{tid}:{user}:"
        self.record = {
            "upid": self.upid,
            "node": node,
            "pid": pid,
            "pstart": self.pstart,
            "starttime": self.starttime,
            "type": ttype,
            "id": tid,
            "user": user.split("!")[0],
            "status": "running",
        }
        if "!" in user:
            self.record["tokenid"] = user.split("!", 1)[1]
        self.dir = state.node_dir(node) / "tasks"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{_upid_file(self.upid)}.log"
        self.log_path.touch()
        _write_json(self.dir / f"{_upid_file(self.upid)}.json", self.record)

    def log(self, text: str) -> None:
        with self.log_path.open("a") as fh:
            for line in str(text).rstrip("\n").split("\n"):
                fh.write(line + "\n")

    def migrate_log(self, text: str, error: bool = False) -> None:
        """PVE::AbstractMigrate's log lines: a timestamp, and ``ERROR:`` for errors."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for line in str(text).rstrip("\n").split("\n"):
            self.log(f"{stamp} ERROR: {line}" if error else f"{stamp} {line}")

    def finish(self, error: str | None) -> None:
        self.log("TASK OK" if error is None else f"TASK ERROR: {error}")
        self.record.update(status="stopped", exitstatus="OK" if error is None else error, endtime=int(time.time()))
        _write_json(self.dir / f"{_upid_file(self.upid)}.json", self.record)


def read_task(state: ClusterState, node: str, upid: str) -> tuple[dict, list[str]] | None:
    """The task's status record and log lines on ``node`` (tasks live in each node's /var/log/pve/tasks), or None."""
    base = state.node_dir(node) / "tasks" / _upid_file(upid)
    record = _read_json(base.with_suffix(".json"))
    if record is None:
        return None
    try:
        lines = base.with_suffix(".log").read_text().splitlines()
    except FileNotFoundError:
        lines = []
    return record, lines


def normalize_status_type(status: str | None) -> str:
    """PVE::UPID::normalize_status_type: a task's exit status as ok, warning, error or unknown."""
    if not status:
        return "unknown"
    if status == "OK":
        return "ok"
    if re.fullmatch(r"WARNINGS: \d+", status):
        return "warning"
    return "unknown" if status == "unexpected status" else "error"


def list_tasks(
    state: ClusterState,
    node: str,
    *,
    start: int = 0,
    limit: int = 50,
    userfilter: str | None = None,
    typefilter: str | None = None,
    vmid: int | None = None,
    errors: bool = False,
    source: str = "archive",
    since: int | None = None,
    until: int | None = None,
    statusfilter: str | None = None,
) -> tuple[list[dict], int]:
    """pve-manager PVE/API2/Tasks.pm ``node_tasks``: the entries of one page, and ``total`` (all that matched).

    Running tasks come from the active list, first, with ``status: "RUNNING"`` and the user as
    written in the UPID (``user@realm!token``) and ``saved: "0"``; finished ones from the archive
    index, most recently finished first, with ``endtime``, ``status`` = the exit status and the
    token split into ``tokenid``. The status filter sees a running task as ``unknown``.
    """
    wanted = dict.fromkeys(TASK_STATUS_TYPES, True)
    if statusfilter is not None and not errors:
        wanted = dict.fromkeys(TASK_STATUS_TYPES, False)
        for item in re.sub(r"[,;]", " ", statusfilter).split():
            wanted[item.lower()] = True
    elif errors:
        wanted["ok"] = False

    running, finished = [], []
    for path in (state.node_dir(node) / "tasks").glob("*.json"):
        record = _read_json(path)
        if record:
            (running if record.get("status") == "running" else finished).append(record)
    running.sort(key=lambda r: (r["starttime"], r["pid"]))  # the active file: in the order they started
    finished.sort(key=lambda r: (r.get("endtime", 0), r["starttime"]), reverse=True)  # the index, read backwards

    count = 0
    out: list[dict] = []

    def keep(task: dict, status: str | None) -> bool:
        nonlocal count, limit
        if userfilter and userfilter.lower() not in task["user"].lower():
            return False
        if typefilter and task["type"] != typefilter:
            return False
        if vmid and task["id"] != str(vmid):
            return False
        if since is not None and task["starttime"] < since:
            return False
        if until is not None and task["starttime"] > until:
            return False
        if not wanted.get(normalize_status_type(status)):
            return False
        count += 1
        if count <= start or limit <= 0:
            return False
        limit -= 1
        return True

    fields = ("node", "pid", "pstart", "starttime", "type", "id")
    if source in ("active", "all"):
        for record in running:
            task = {k: record[k] for k in fields}
            user = record["user"] + (f"!{record['tokenid']}" if record.get("tokenid") else "")
            task.update(upid=record["upid"], user=user, saved="0")
            if keep(task, None):
                out.append({**task, "status": "RUNNING"})
    if source != "active":
        for record in finished:
            task = {k: record[k] for k in fields}
            task.update(upid=record["upid"], user=record["user"], endtime=record.get("endtime"))
            task["status"] = record.get("exitstatus")
            if record.get("tokenid"):
                task["tokenid"] = record["tokenid"]
            if keep(task, task["status"]):
                out.append(task)
    return out, count
