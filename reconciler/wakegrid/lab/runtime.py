"""The lab's shell: applies a :class:`~wakegrid.lab.topology.LabPlan` with the Docker SDK.

Everything decided is decided in :mod:`wakegrid.lab.topology`; this module only
does I/O (Docker, the state directory, readiness waits). Every object it creates
carries the label ``wakegrid.lab=<lab name>``, which is how ``down`` finds what to
remove even after an ``up`` that failed half-way.
"""

from __future__ import annotations

import http.client
import io
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import docker
import docker.errors

from wakegrid.lab import dind
from wakegrid.lab import topology as topo
from wakegrid.lab.image import ImageSpec, ensure_image, remove_images
from wakegrid.model import Fleet, load_fleet

DOCKER_CLI = "/usr/bin/docker"  # /usr/local/bin/docker may be an older client
DOCKERD_LOG = "/var/log/wakegrid-dockerd.log"  # the same as scripts/setup.sh
SSH_WAIT = 60.0  # seconds a booting lab host may take before its sshd answers
L_NODE, L_ROLE, L_SPEC, L_SITE = "wakegrid.lab.node", "wakegrid.lab.role", "wakegrid.lab.spec", "wakegrid.lab.site"


class LabError(RuntimeError):
    """Something the user can act on; the message says what and where."""


Log = Callable[[str], None]


# --------------------------------------------------------------------------- Docker daemon


def ensure_dockerd(log: Log = print, timeout: float = 60.0) -> docker.DockerClient:
    """A client of a running Docker daemon, starting (and if needed installing) one first."""
    client = _try_client()
    if client is not None:
        return client
    if os.geteuid() != 0:
        raise LabError("the Docker daemon is not running and starting it needs root")
    if not shutil.which("dockerd"):
        log("installing docker.io (Debian)")
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "docker.io"]):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                raise LabError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    log(f"starting dockerd (log: {DOCKERD_LOG})")
    # No systemd on CI machines: run dockerd detached, in its own session, so it outlives us.
    with open(DOCKERD_LOG, "ab") as out:
        subprocess.Popen(["dockerd"], stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = _try_client()
        if client is not None:
            return client
        time.sleep(0.5)
    raise LabError(f"dockerd did not answer within {timeout:.0f}s; see {DOCKERD_LOG}")


def _try_client() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=120)
        client.ping()
        return client
    except docker.errors.DockerException:
        return None


# --------------------------------------------------------------------------- the lab


@dataclass
class HostState:
    plan: topo.HostPlan
    status: str  # running | exited | created | absent
    addresses: dict[str, str]  # network → address as Docker sees it now


class Lab:
    """One lab, built from one fleet file."""

    def __init__(self, fleet_path: str | Path, *, log: Log = print, client: docker.DockerClient | None = None):
        self.fleet_path = Path(fleet_path)
        self.fleet: Fleet = load_fleet(self.fleet_path)
        self.config = topo.parse_lab_config(self.fleet, self.fleet_path)
        self.log = log
        self._client = client
        self.plan = self._plan()

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = ensure_dockerd(self.log)
        return self._client

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def state_dir(self) -> Path:
        return Path(self.config.state_dir)

    def _plan(self) -> topo.LabPlan:
        key = self.fleet.defaults.ssh.private_key_file
        pub = Path(f"{key}.pub") if key else None
        secureon = {}
        for name, node in self.fleet.nodes.items():
            if node.wol and node.wol.secureon:
                secureon[name] = node.wol.secureon.reveal()
        return topo.plan_lab(
            self.fleet,
            fleet_path=self.fleet_path,
            ssh_public_key=pub.read_text() if pub and pub.exists() else "",
            secureon=secureon,
        )

    # ----------------------------------------------------------------- up

    def up(self) -> None:
        started = time.monotonic()
        if os.geteuid() != 0:
            raise LabError("lab up needs root (Docker, debootstrap, /var/lib/wakegrid-lab)")
        self._ensure_secrets()
        self.plan = self._plan()  # now with the public key
        image = ensure_image(self.client, ImageSpec(self.config.suite, self.config.mirror), self.log)
        for net in self.plan.networks:
            self._ensure_network(net)
            self._allow_forwarding_within(net.name)
        for cluster in self.plan.clusters:
            self._ensure_cluster(cluster)
        changed: list[str] = []
        # Parents before children: PVE hosts before guests (their order in the plan).
        for host in self.plan.hosts:
            if self._ensure_host(host, image):
                changed.append(host.node)
        for cluster in self.plan.clusters:
            self._register_guests(cluster)
        self._start_hosts()
        self._wait_ready([h for h in self.plan.hosts if h.ssh and self._status(h.container) == "running"])
        for inner in self.plan.inner:
            if self._ensure_inner(inner, image, parent_is_new=inner.parent in changed):
                changed.append(inner.node)
        self._wait_apps()
        took = time.monotonic() - started
        self.log(
            f"lab {self.name} is up ({len(changed)} created or recreated: {', '.join(changed) or 'none'}; {took:.1f}s)"
        )

    def _ensure_secrets(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        key = self.plan.ssh_key
        if not Path(key).exists():
            Path(key).parent.mkdir(parents=True, exist_ok=True)
            self.log(f"generating the lab SSH key {key}")
            comment = f"wakegrid-lab-{self.name}"
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", key], check=True)
        token = self.plan.pve_token_file
        if token and not Path(token).exists():
            Path(token).parent.mkdir(parents=True, exist_ok=True)
            Path(token).write_text(f"{_uuid()}\n")
            os.chmod(token, 0o600)

    def _labels(self, **extra: str) -> dict[str, str]:
        return {topo.LABEL: self.name, **extra}

    def _ensure_network(self, net: topo.NetworkPlan) -> None:
        try:
            existing = self.client.networks.get(net.name)
        except docker.errors.NotFound:
            existing = None
        if existing is not None:
            configs = (existing.attrs.get("IPAM") or {}).get("Config") or []
            subnets = {c.get("Subnet") for c in configs}
            if subnets != {net.subnet}:
                raise LabError(
                    f"network {net.name} exists with subnet {', '.join(map(str, subnets))}, "
                    f"the fleet wants {net.subnet}: run `wakegrid lab down` first"
                )
            return
        self.log(f"creating network {net.name} ({net.subnet}, host {net.gateway})")
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=net.subnet, gateway=net.gateway)])
        try:
            self.client.networks.create(
                net.name,
                driver="bridge",
                internal=True,
                ipam=ipam,  # internal: nothing leaves the machine
                labels=self._labels(**{L_ROLE: net.role, L_SITE: net.site or ""}),
            )
        except docker.errors.APIError as exc:
            raise LabError(f"cannot create network {net.name} ({net.subnet}): {exc.explanation}") from None

    def _allow_forwarding_within(self, network: str) -> None:
        """Let a lab network forward like a switch, whatever the source address.

        Docker's isolation rules drop frames on an internal bridge whose source is outside the
        bridge's subnet (bridged traffic goes through iptables here), so replies routed through
        a gateway, e.g. to the WireGuard range, would never reach the LAN hosts.
        """
        bridge = f"br-{self.client.networks.get(network).id[:12]}"
        rule = ["DOCKER-USER", "-i", bridge, "-o", bridge, "-m", "comment", "--comment", self._rule_tag, "-j", "ACCEPT"]
        if subprocess.run(["iptables", "-C", *rule], capture_output=True).returncode != 0:
            subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)

    @property
    def _rule_tag(self) -> str:
        return f"{topo.LABEL}={self.name}"

    def _remove_forwarding_rules(self) -> None:
        listed = subprocess.run(["iptables", "-S", "DOCKER-USER"], capture_output=True, text=True)
        for line in listed.stdout.splitlines():
            if self._rule_tag in line and line.startswith("-A "):
                subprocess.run(["iptables", "-D", *shlex.split(line)[1:]], capture_output=True)

    def _ensure_cluster(self, cluster: topo.PveClusterPlan) -> None:
        from wakegrid.lab import pve

        token = Path(self.plan.pve_token_file or "").read_text().strip()
        votes = dict(cluster.votes)
        pve.init_cluster(
            cluster.directory,
            cluster.name,
            {n: {"ip": ip, "port": 8006, "votes": votes.get(n, 1)} for n, ip in cluster.nodes},
            tokens=dict.fromkeys(cluster.token_ids, token),
            qdevice={"ip": cluster.qdevice[0], "port": cluster.qdevice[1], "votes": 1} if cluster.qdevice else None,
            expected_votes=cluster.expected_votes,
        )

    def _register_guests(self, cluster: topo.PveClusterPlan) -> None:
        from wakegrid.lab import pve

        state = pve.ClusterState(cluster.directory)
        for guest in cluster.guests:
            # Never rewrite a known guest: it may have migrated to another node since.
            if state.guest(guest.vmid) is None:
                pve.write_guest(
                    cluster.directory,
                    guest.vmid,
                    type=guest.type,
                    node=guest.pve_node,
                    name=guest.node,
                    container=guest.container,
                )

    def _resolved_files(self, host: topo.HostPlan) -> dict[str, str]:
        files = {}
        for f in host.files:
            package = resources.files("wakegrid.lab").joinpath(f.resource) if f.resource else None
            if package is not None and package.is_dir():  # a package: its modules, run as a directory
                for module in sorted(package.iterdir(), key=lambda m: m.name):
                    if module.name.endswith(".py") and module.is_file():
                        files[f"{f.path}/{module.name}"] = module.read_text()
                continue
            files[f.path] = _resource(f.resource) if f.resource else f.content
        return files

    def _ensure_host(self, host: topo.HostPlan, image: str) -> bool:
        """Create the container if missing or out of date; True when it was (re)created."""
        files = self._resolved_files(host)
        spec = topo.spec_hash(host, image, files)
        container = self._container(host.container)
        if container is not None:
            if container.labels.get(L_SPEC) == spec:
                return False
            self.log(f"recreating {host.node}: its definition changed")
            container.remove(force=True)
        self._create(host, image, spec, files)
        return True

    def _create(self, host: topo.HostPlan, image: str, spec: str, files: dict[str, str]) -> None:
        api = self.client.api
        binds = [f"{src}:{dst}:{mode}" for src, dst, mode in host.binds]
        binds += [f"{vol}:{dst}" for vol, dst in host.volumes]
        for src, _dst, _mode in host.binds:
            if src.startswith(self.config.state_dir):
                Path(src).mkdir(parents=True, exist_ok=True)
        kwargs = {}
        if host.systemd:
            binds.append("/sys/fs/cgroup:/sys/fs/cgroup:rw")
            kwargs = {"tmpfs": dict(topo.SYSTEMD_RUN), "cgroupns": "host"}
        host_config = api.create_host_config(
            binds=binds,
            cap_add=list(host.cap_add) or None,
            security_opt=list(host.security_opt) or None,
            devices=[f"{d}:{d}:rwm" for d in host.devices] or None,
            sysctls=dict(host.sysctls) or None,
            network_mode=host.networks[0].network,
            **kwargs,
        )
        first = host.networks[0]
        endpoint = api.create_endpoint_config(ipv4_address=first.address)
        networking = api.create_networking_config({first.network: endpoint})
        for vol, _ in host.volumes:
            self.client.volumes.create(vol, labels=self._labels(**{L_NODE: host.node}))
        try:
            created = api.create_container(
                image,
                name=host.container,
                hostname=host.node,
                command=list(host.command) if host.command else None,
                mac_address=host.mac,
                labels=self._labels(**{L_NODE: host.node, L_ROLE: host.role, L_SPEC: spec, L_SITE: host.site or ""}),
                stop_signal="SIGRTMIN+3" if host.systemd else "SIGTERM",  # systemd halts on SIGRTMIN+3
                stop_timeout=_stop_timeout(host),
                host_config=host_config,
                networking_config=networking,
                detach=True,
            )
        except docker.errors.APIError as exc:
            raise LabError(f"cannot create {host.container}: {exc.explanation}") from None
        for extra in host.networks[1:]:
            api.connect_container_to_network(created["Id"], extra.network, ipv4_address=extra.address)
        api.put_archive(created["Id"], "/", _tar(files, host))
        self.log(f"created {host.container} ({host.role}, {', '.join(a.address for a in host.networks)})")

    def _start_hosts(self) -> None:
        for host in self.plan.hosts:
            container = self._container(host.container)
            state = container.attrs["State"]
            never_started = state.get("StartedAt", "").startswith("0001-")
            # Infrastructure always runs; other hosts get their planned power once, then keep
            # whatever power state the tests or the reconciler left them in.
            wanted = host.keep_running or (never_started and host.power)
            if host.role == "guest" and host.parent and not self.is_on(host.parent):
                wanted = False  # a guest cannot run on a powered-off Proxmox host
            if wanted and not state.get("Running"):
                container.start()

    def _wait_ready(self, hosts: list[topo.HostPlan]) -> None:
        deadline = time.monotonic() + SSH_WAIT
        pending = {h.node: h for h in hosts}
        while pending and time.monotonic() < deadline:
            for name, host in list(pending.items()):
                if _port_open(host.address or "", 22):
                    del pending[name]
            time.sleep(0.2)
        if pending:
            raise LabError(
                f"no SSH answer within {SSH_WAIT:.0f}s from: {', '.join(sorted(pending))} "
                f"(look at `docker logs` / `docker exec … journalctl -b` of their containers)"
            )

    def _wait_apps(self, timeout: float = 30.0) -> None:
        """Every app on a running host answers its health check: then `up` is really done."""
        pending = {(a.address, a.port): a for a in self.plan.apps if self.is_on(a.node)}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for key, app in list(pending.items()):
                if _http_ok(app.address, app.port, app.health_path):
                    del pending[key]
            time.sleep(0.2)
        if pending:
            late = ", ".join(f"{a.service} on {a.node} ({a.address}:{a.port})" for a in pending.values())
            raise LabError(f"these apps do not answer their health check after {timeout:.0f}s: {late}")

    def wait_ssh(self, node: str, timeout: float = SSH_WAIT) -> None:
        host = self.plan.host(node)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _port_open(host.address or "", 22):
                return
            time.sleep(0.2)
        raise LabError(f"{node} ({host.address}) does not answer SSH after {timeout:.0f}s")

    # ----------------------------------------------------------------- Docker inside a guest

    def _ensure_inner(self, inner: topo.InnerContainerPlan, image: str, parent_is_new: bool = False) -> bool:
        if self._status(inner.parent_container) != "running":
            self.log(f"skipping {inner.node}: its parent {inner.parent} is off")
            return False
        self._wait_inner_daemon(inner.parent_container)
        if self._inner_exec(inner.parent_container, ["docker", "image", "inspect", image]).returncode != 0:
            self.log(f"loading {image} into {inner.parent}'s Docker (docker save | load, no registry)")
            save = subprocess.Popen([DOCKER_CLI, "save", image], stdout=subprocess.PIPE)
            load = subprocess.run(
                [DOCKER_CLI, "exec", "-i", inner.parent_container, "docker", "load", "-q"],
                stdin=save.stdout,
                capture_output=True,
                text=True,
            )
            save.wait()
            if load.returncode or save.returncode:
                raise LabError(f"loading the lab image into {inner.parent} failed: {load.stderr.strip()}")
        spec = topo.spec_hash(
            topo.HostPlan(inner.node, inner.name, "inner", "container", None, ()),
            image,
            {"command": " ".join(inner.command)},
        )
        label = '{{index .Config.Labels "%s"}}' % L_SPEC  # noqa: UP031 (Go template braces)
        current = self._inner_exec(inner.parent_container, ["docker", "inspect", "-f", label, inner.name])
        if current.returncode == 0 and current.stdout.strip() == spec:
            if parent_is_new and inner.power:  # a rebuilt parent boots with its containers stopped
                self._inner_exec(inner.parent_container, ["docker", "start", inner.name])
            return False
        if current.returncode == 0:
            self._inner_exec(inner.parent_container, ["docker", "rm", "-f", inner.name])
        # Host networking: the container's ports are the VM's, as with a published port.
        cmd = ["docker", "create", "--name", inner.name, "--hostname", inner.name, "--network", "host"]
        for key, value in ((topo.LABEL, self.name), (L_SPEC, spec), (L_NODE, inner.node)):
            cmd += ["--label", f"{key}={value}"]
        for src, dst, mode in inner.binds:
            cmd += ["-v", f"{src}:{dst}:{mode}"]
        cmd += [image, *inner.command]
        proc = self._inner_exec(inner.parent_container, cmd)
        if proc.returncode:
            raise LabError(f"cannot create container {inner.name} in {inner.parent}: {proc.stderr.strip()}")
        if inner.power:
            started = self._inner_exec(inner.parent_container, ["docker", "start", inner.name])
            if started.returncode:
                raise LabError(f"cannot start container {inner.name} in {inner.parent}: {started.stderr.strip()}")
        self.log(f"created container {inner.name} inside {inner.parent}")
        return True

    def _wait_inner_daemon(self, container: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._inner_exec(container, ["docker", "info", "--format", "{{.ServerVersion}}"]).returncode == 0:
                return
            time.sleep(0.5)
        raise LabError(
            f"the Docker daemon inside {container} did not come up within {timeout:.0f}s "
            f"(see `docker exec {container} journalctl -u docker`)"
        )

    def _inner_exec(self, container: str, cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([DOCKER_CLI, "exec", container, *cmd], capture_output=True, text=True)

    # ----------------------------------------------------------------- down

    def down(self, purge: bool = False) -> None:
        client = self.client
        filters = {"label": f"{topo.LABEL}={self.name}"}
        for container in client.containers.list(all=True, filters=filters):
            self.log(f"removing {container.name}")
            container.remove(force=True, v=True)
        self._remove_forwarding_rules()
        for net in client.networks.list(filters=filters):
            self.log(f"removing network {net.name}")
            net.remove()
        for vol in client.volumes.list(filters=filters):
            self.log(f"removing volume {vol.name}")
            vol.remove(force=True)
        if self.state_dir.exists():
            self.log(f"removing {self.state_dir}")
            shutil.rmtree(self.state_dir)
        if purge:
            remove_images(client, self.log)
        self.log(f"lab {self.name} is down")

    # ----------------------------------------------------------------- status and power

    def _container(self, name: str):
        try:
            return self.client.containers.get(name)
        except docker.errors.NotFound:
            return None

    def _status(self, name: str) -> str:
        container = self._container(name)
        return "absent" if container is None else container.status

    def host_states(self) -> list[HostState]:
        states = []
        for host in self.plan.hosts:
            container = self._container(host.container)
            if container is None:
                states.append(HostState(host, "absent", {}))
                continue
            nets = container.attrs["NetworkSettings"]["Networks"] or {}
            addresses = {
                name: info.get("IPAMConfig", {}).get("IPv4Address") or info.get("IPAddress", "")
                for name, info in nets.items()
            }
            states.append(HostState(host, container.status, addresses))
        return states

    def inner_status(self, inner: topo.InnerContainerPlan) -> str:
        if self._status(inner.parent_container) != "running":
            return "off (parent off)"
        proc = self._inner_exec(inner.parent_container, ["docker", "inspect", "-f", "{{.State.Status}}", inner.name])
        return proc.stdout.strip() if proc.returncode == 0 else "absent"

    def is_on(self, node: str) -> bool:
        for inner in self.plan.inner:
            if inner.node == node:
                return self.inner_status(inner) == "running"
        return self._status(self.plan.host(node).container) == "running"

    def power(self, node: str, on: bool, wait: bool = True) -> None:
        """Power a node on or off directly (tests; the reconciler uses WoL, PVE, Docker and SSH)."""
        inner = next((i for i in self.plan.inner if i.node == node), None)
        if inner is not None:
            if on and self._status(inner.parent_container) != "running":
                raise LabError(f"cannot start {node}: its parent {inner.parent} is off")
            verb = "start" if on else "stop"
            proc = self._inner_exec(inner.parent_container, ["docker", verb, inner.name])
            if proc.returncode:
                raise LabError(f"docker {verb} {inner.name} in {inner.parent}: {proc.stderr.strip()}")
            return
        if node not in {h.node for h in self.plan.hosts}:
            known = ", ".join(sorted(h.node for h in self.plan.hosts if h.role not in ("listener",)))
            raise LabError(f"no lab host named {node!r} (known: {known})")
        host = self.plan.host(node)
        container = self._container(host.container)
        if container is None:
            raise LabError(f"{node} does not exist: run `wakegrid lab up` first")
        if on:
            if host.parent and self._status(self.plan.host(host.parent).container) != "running":
                raise LabError(f"cannot start {node}: its parent {host.parent} is off")
            container.start()
            if wait and host.ssh:
                self.wait_ssh(node)
            return
        # A machine going off takes what it hosts with it: children first, deepest first.
        if node in self.fleet.nodes:
            for child in self.fleet.descendants(node):
                if any(i.node == child for i in self.plan.inner):
                    continue  # dies with its parent's dockerd
                child_container = self._container(self.plan.host(child).container)
                if child_container is not None and child_container.status == "running":
                    child_container.stop()
        container.stop()

    # ----------------------------------------------------------------- site cuts

    def _gateway(self, site: str) -> topo.HostPlan:
        if site not in self.fleet.sites:
            raise LabError(f"unknown site {site!r} (sites: {', '.join(self.fleet.sites)})")
        return self.plan.host(self.fleet.sites[site].gateway)

    def is_cut(self, site: str) -> bool:
        gw = self._container(self._gateway(site).container)
        wan = self.plan.network("wan").name
        return gw is not None and wan not in (gw.attrs["NetworkSettings"]["Networks"] or {})

    def cut_site(self, site: str) -> None:
        """The site loses its Internet link: the gateway's WAN link and WireGuard tunnels go down."""
        gw_plan = self._gateway(site)
        gw = self._container(gw_plan.container)
        if gw is None:
            raise LabError(f"{gw_plan.node} does not exist: run `wakegrid lab up` first")
        if gw.status == "running":
            for iface in self._wg_interfaces(gw_plan.container):
                self._inner_exec(gw_plan.container, ["ip", "link", "set", iface, "down"])
        if not self.is_cut(site):
            # Disconnecting (rather than `ip link set down`) keeps the cut across a gateway reboot.
            self.client.networks.get(self.plan.network("wan").name).disconnect(gw)
        self.log(f"site {site} is cut off (gateway {gw_plan.node} lost its WAN link)")

    def restore_site(self, site: str) -> None:
        gw_plan = self._gateway(site)
        gw = self._container(gw_plan.container)
        if gw is None:
            raise LabError(f"{gw_plan.node} does not exist: run `wakegrid lab up` first")
        if self.is_cut(site):
            wan = next(a for a in gw_plan.networks if a.network == self.plan.network("wan").name)
            self.client.networks.get(wan.network).connect(gw, ipv4_address=wan.address)
        if gw.status == "running":
            for iface in self._wg_interfaces(gw_plan.container):
                # wg-quick owns the routes of its interface: restart it rather than just raise the link.
                unit = f"wg-quick@{iface}.service"
                if self._inner_exec(gw_plan.container, ["systemctl", "is-enabled", "--quiet", unit]).returncode == 0:
                    self._inner_exec(gw_plan.container, ["systemctl", "restart", unit])
                else:
                    self._inner_exec(gw_plan.container, ["ip", "link", "set", iface, "up"])
        self.log(f"site {site} is back online")

    def _wg_interfaces(self, container: str) -> list[str]:
        proc = self._inner_exec(container, ["ip", "-o", "link", "show"])
        names = [line.split(":")[1].strip().split("@")[0] for line in proc.stdout.splitlines() if ":" in line]
        return [n for n in names if n.startswith("wg")]

    # ----------------------------------------------------------------- helpers for users and tests

    def exec(self, node: str, cmd: list[str], check: bool = False) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside a lab host (docker exec)."""
        proc = self._inner_exec(self.plan.host(node).container, cmd)
        if check and proc.returncode:
            raise LabError(f"{' '.join(cmd)} on {node} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def ssh_command(self, node: str) -> list[str]:
        host = self.plan.host(node)
        ssh = self.fleet.ssh_of(node) if node in self.fleet.nodes or node == self.fleet.edge.host else None
        user = (ssh.user if ssh else None) or "root"
        return [
            "ssh",
            "-i",
            self.plan.ssh_key,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
            f"{user}@{host.address}",
        ]

    def ssh(self, node: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([*self.ssh_command(node), command], capture_output=True, text=True, timeout=timeout)

    def write_ini_inventory(self, path: str | Path | None = None) -> Path:
        """An INI inventory of the lab's SSH hosts (for Ansible before the fleet plugin is installed)."""
        path = Path(path or self.state_dir / "inventory.ini")
        path.write_text(topo.ini_inventory(self.fleet, self.plan))
        return path

    def memory_bytes(self) -> dict[str, int]:
        """Memory used per running lab container, page cache excluded (what `docker stats` shows)."""
        used = {}
        for container in self.client.containers.list(filters={"label": f"{topo.LABEL}={self.name}"}):
            # The cgroup first: instant, and Docker 20.10 returns empty memory stats for these
            # containers on cgroup v1 (their systemd moves PID 1 into init.scope).
            used[container.name] = _cgroup_memory(container.id)
            if not used[container.name]:
                mem = container.stats(stream=False).get("memory_stats") or {}
                detail = mem.get("stats") or {}
                cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
                used[container.name] = max(int(mem.get("usage") or 0) - int(cache or 0), 0)
        return used


# --------------------------------------------------------------------------- small helpers


def _cgroup_memory(container_id: str) -> int:
    v1 = Path("/sys/fs/cgroup/memory/docker") / container_id
    if v1.is_dir():
        usage = int((v1 / "memory.usage_in_bytes").read_text())
        stat = dict(line.split() for line in (v1 / "memory.stat").read_text().splitlines())
        return max(usage - int(stat.get("total_inactive_file", 0)), 0)
    for v2 in (
        Path("/sys/fs/cgroup/docker") / container_id,
        Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope"),
    ):
        if v2.is_dir():
            stat = dict(line.split() for line in (v2 / "memory.stat").read_text().splitlines())
            return max(int((v2 / "memory.current").read_text()) - int(stat.get("inactive_file", 0)), 0)
    return 0


def _stop_timeout(host: topo.HostPlan) -> int:
    """Seconds `docker stop` waits before SIGKILL: enough for a host to stop what it runs."""
    if "wakegrid-lab-pve.service" in host.units:
        return 60  # the PVE emulator stops the node's guests first
    if "docker.service" in host.units:
        return dind.GUEST_STOP_TIMEOUT
    return 15


def _resource(name: str) -> str:
    try:
        return resources.files("wakegrid.lab").joinpath(name).read_text()
    except FileNotFoundError:
        raise LabError(f"wakegrid/lab/{name} is missing from the installed package") from None


def _tar(files: dict[str, str], host: topo.HostPlan) -> bytes:
    """Files and unit symlinks of a host as a tar for put_archive (parent dirs included)."""
    modes = {f.path: f.mode for f in host.files}
    buf = io.BytesIO()
    dirs: set[str] = set()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dirs(path: str) -> None:
            parts = Path(path).parent.parts[1:]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o700 if d == "root/.ssh" else 0o755
                    tar.addfile(info)

        for path, content in files.items():
            add_dirs(path)
            data = content.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), modes.get(path, 0o644), int(time.time())
            tar.addfile(info, io.BytesIO(data))
        for link, target in topo.unit_wants(host.units):
            add_dirs(link)
            info = tarfile.TarInfo(link.lstrip("/"))
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def _port_open(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            # sshd accepting is not enough: wait for its banner (keys are generated at first boot).
            sock.settimeout(2)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def _http_ok(address: str, port: int, path: str) -> bool:
    try:
        conn = http.client.HTTPConnection(address, port, timeout=1)
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False


def _uuid() -> str:
    raw = secrets.token_hex(16)
    return f"{raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]}"
