"""wakegrid.fleet.wireguard_interface and wireguard_peer against real WireGuard, as Ansible runs them.

Topology (created here, removed at the end even on failure), a small hub and spoke:

    spoke B  --veth 10.241.1.0/24--  hub A  --veth 10.241.2.0/24--  spoke C
    tunnel 10.242.0.2             10.242.0.1                      10.242.0.3

Each node is a network namespace of its own. The modules run inside it exactly as Ansible
runs them on a host: ``ip netns exec <ns> ansible localhost -c local -m wakegrid.fleet.…``,
with a temporary collections path linking to this repository and a temporary ``config_dir``.
WireGuard is real: the kernel module when there is one, else ``wireguard-go`` + ``wg``.

The tests share the topology and run in file order, each building on the previous one
(up → peers → idempotence → live changes → preshared key → removal).

Needs root, ip (iproute2), wg (wireguard-tools) and, without the kernel module, wireguard-go.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # the helper next to this file, whatever the rootdir or import mode

RUN_ID = uuid.uuid4().hex[:6]
NODES = ("a", "b", "c")  # a is the hub
LISTEN_PORT = 51820
TUNNEL_IP = {"a": "10.242.0.1", "b": "10.242.0.2", "c": "10.242.0.3"}
UNDERLAY = {"b": ("10.241.1.1", "10.241.1.2"), "c": ("10.241.2.1", "10.241.2.2")}  # (hub side, spoke side)


def _skip_reason() -> str | None:
    if reason := support.root_reason("(network namespaces, WireGuard interfaces)"):
        return reason
    missing = [tool for tool in ("ip", "wg") if not shutil.which(tool)]
    if missing:
        return f"needs {', '.join(missing)} (apt-get install iproute2 wireguard-tools)"
    if not shutil.which("wireguard-go") and not Path("/sys/module/wireguard").exists():
        return "needs the WireGuard kernel module or wireguard-go (apt-get install wireguard-go)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def sh(*args: str, check: bool = True, data: str | None = None) -> str:
    proc = subprocess.run(args, input=data, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return proc.stdout


@dataclass
class Run:
    """One module run: its parsed result and everything Ansible printed."""

    status: str
    result: dict
    output: str

    @property
    def changed(self) -> bool:
        return self.status == "CHANGED"


@dataclass
class Lab:
    root: Path
    ns: dict[str, str]
    iface: dict[str, str]
    outputs: list[str] = field(default_factory=list)
    private_keys: dict[str, str] = field(default_factory=dict)
    public_keys: dict[str, str] = field(default_factory=dict)

    def config_dir(self, node: str) -> Path:
        return self.root / "etc" / node

    def conf(self, node: str) -> Path:
        return self.config_dir(node) / f"{self.iface[node]}.conf"

    def key_file(self, node: str) -> Path:
        return self.config_dir(node) / f"{self.iface[node]}.key"

    def ansible(self, node: str, module: str, args: dict, *flags: str, expect_failure: bool = False) -> Run:
        """Run a module in the node's namespace as `ansible localhost -c local -m` does."""
        env = support.ansible_env(
            self.root / "collections",
            self.root / "ansible.cfg",
            ANSIBLE_HOME=str(self.root / "ansible-home"),
            ANSIBLE_LOCALHOST_WARNING="false",
            ANSIBLE_FORCE_COLOR="0",
        )
        prefix = ("ip", "netns", "exec", self.ns[node])
        cmd = support.adhoc_command(module, args, *flags, prefix=prefix, inventory=False, python=None)
        status, result, output = support.run_adhoc(cmd, env, self.root, timeout=60)
        self.outputs.append(output)
        assert status in ("CHANGED", "SUCCESS", "FAILED!"), output
        if expect_failure:
            assert status == "FAILED!", output
        else:
            assert status != "FAILED!", output
        return Run(status, result, output)

    def parallel(self, calls: list[tuple]) -> list[Run]:
        """Independent runs (different namespaces) side by side: Ansible's start-up dominates."""
        with ThreadPoolExecutor(len(calls)) as pool:
            return list(pool.map(lambda call: self.ansible(*call), calls))

    def interface_args(self, node: str, **extra) -> dict:
        return {
            "name": self.iface[node],
            "address": [f"{TUNNEL_IP[node]}/24"],
            "listen_port": LISTEN_PORT,
            "config_dir": str(self.config_dir(node)),
            **extra,
        }

    def peer_args(self, node: str, peer: str, **extra) -> dict:
        """`node`'s view of `peer`: the hub routes one /32 per spoke; spokes reach the hub."""
        args = {
            "interface": self.iface[node],
            "name": f"node-{peer}",
            "public_key": self.public_keys[peer],
            "config_dir": str(self.config_dir(node)),
        }
        if node == "a":
            args["allowed_ips"] = [f"{TUNNEL_IP[peer]}/32"]
        else:
            args.update(
                allowed_ips=["10.242.0.0/24"], endpoint=f"{UNDERLAY[node][0]}:{LISTEN_PORT}", persistent_keepalive=25
            )
        return {**args, **extra}

    def peer_settings(self, node: str) -> dict[str, list[str]]:
        """Configured fields only (key, psk, endpoint, allowed ips, keepalive): no counters."""
        return {key: [f[0], f[1], f[2], f[3], f[7]] for key, f in self.dump(node).items()}

    def dump(self, node: str) -> dict[str, list[str]]:
        """Peers of the node's interface as `wg show dump` fields, keyed by public key."""
        lines = sh("ip", "netns", "exec", self.ns[node], "wg", "show", self.iface[node], "dump").splitlines()
        return {line.split("\t")[0]: line.split("\t") for line in lines[1:]}

    def link(self, node: str) -> dict:
        return json.loads(sh("ip", "-n", self.ns[node], "-j", "link", "show", "dev", self.iface[node]))[0]

    def ping(self, node: str, address: str, attempts: int = 10) -> bool:
        for _ in range(attempts):
            proc = subprocess.run(
                ["ip", "netns", "exec", self.ns[node], "ping", "-c", "1", "-W", "1", address],
                capture_output=True,
                timeout=10,
            )
            if proc.returncode == 0:
                return True
        return False

    def assert_no_secret_in_outputs(self, *secrets: str) -> None:
        for secret in (*self.private_keys.values(), *secrets):
            for output in self.outputs:
                assert secret not in output, "key material in Ansible output"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("wg")
    support.collections_path(root / "collections")
    # Names unique per run: wireguard-go's sockets in /var/run/wireguard are shared by every
    # namespace, and a crashed earlier run must not collide with this one.
    lab = Lab(root=root, ns={n: f"wgtest-{RUN_ID}-{n}" for n in NODES}, iface={n: f"wgt{RUN_ID}{n}" for n in NODES})
    try:
        for node in NODES:
            sh("ip", "netns", "add", lab.ns[node])
            sh("ip", "-n", lab.ns[node], "link", "set", "lo", "up")
        for spoke, (hub_ip, spoke_ip) in UNDERLAY.items():
            hub_end, spoke_end = f"wv{RUN_ID}a{spoke}", f"wv{RUN_ID}{spoke}"
            sh(
                "ip",
                "link",
                "add",
                hub_end,
                "netns",
                lab.ns["a"],
                "type",
                "veth",
                "peer",
                "name",
                spoke_end,
                "netns",
                lab.ns[spoke],
            )
            for node, dev, address in (("a", hub_end, hub_ip), (spoke, spoke_end, spoke_ip)):
                sh("ip", "-n", lab.ns[node], "address", "add", f"{address}/24", "dev", dev)
                sh("ip", "-n", lab.ns[node], "link", "set", dev, "up")
        # the hub routes spoke to spoke, as the VPS does between sites
        sh("ip", "netns", "exec", lab.ns["a"], "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        yield lab
    finally:
        for node in NODES:
            # deleting the link makes wireguard-go exit (its tun device is gone); whatever this
            # test started that still runs in the namespace is ended by pid, then the namespace goes
            subprocess.run(["ip", "-n", lab.ns[node], "link", "delete", "dev", lab.iface[node]], capture_output=True)
            time.sleep(0.2)
            pids = subprocess.run(["ip", "netns", "pids", lab.ns[node]], capture_output=True, text=True).stdout
            for pid in pids.split():
                subprocess.run(["kill", pid], capture_output=True)
            subprocess.run(["ip", "netns", "delete", lab.ns[node]], capture_output=True)
        deadline = time.time() + 5
        sockets = [Path(f"/var/run/wireguard/{lab.iface[n]}.sock") for n in NODES]
        while any(s.exists() for s in sockets) and time.time() < deadline:
            time.sleep(0.1)


def test_interfaces_come_up_with_keys_generated_on_their_host(lab):
    runs = lab.parallel([(node, "wireguard_interface", lab.interface_args(node)) for node in NODES])
    for node, run in zip(NODES, runs, strict=True):
        assert run.changed
        key_file = lab.key_file(node)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        private_key = key_file.read_text().strip()
        lab.private_keys[node] = private_key
        assert run.result["public_key"] == sh("wg", "pubkey", data=private_key + "\n").strip()
        lab.public_keys[node] = run.result["public_key"]
        assert run.result["implementation"] in ("kernel", "userspace")
        assert run.result["addresses"] == [f"{TUNNEL_IP[node]}/24"]
        assert run.result["listen_port"] == LISTEN_PORT
        link = lab.link(node)
        assert "UP" in link["flags"]
        # the key is referenced by path, never copied into the persisted configuration
        conf = lab.conf(node).read_text()
        assert private_key not in conf
        assert f"PostUp = wg set %i private-key {key_file}" in conf
        assert stat.S_IMODE(lab.conf(node).stat().st_mode) == 0o600
    lab.assert_no_secret_in_outputs()


def test_peers_both_ways_carry_traffic_through_the_hub(lab):
    runs = lab.parallel(
        [
            ("a", "wireguard_peer", lab.peer_args("a", "b")),
            ("b", "wireguard_peer", lab.peer_args("b", "a")),
            ("c", "wireguard_peer", lab.peer_args("c", "a")),
        ]
    )
    runs.append(lab.ansible("a", "wireguard_peer", lab.peer_args("a", "c")))  # same file as the first run
    assert all(run.changed for run in runs)
    assert lab.ping("b", TUNNEL_IP["a"])
    assert lab.ping("c", TUNNEL_IP["a"])
    assert lab.ping("b", TUNNEL_IP["c"]), "spoke to spoke through the hub"
    hub_conf = lab.conf("a").read_text()
    assert "# wakegrid: node-b" in hub_conf and "# wakegrid: node-c" in hub_conf
    lab.assert_no_secret_in_outputs()


def test_second_run_changes_nothing(lab):
    confs = {node: lab.conf(node).read_bytes() for node in NODES}
    runs = lab.parallel([(node, "wireguard_interface", lab.interface_args(node), "--diff") for node in NODES])
    runs += lab.parallel(
        [
            ("a", "wireguard_peer", lab.peer_args("a", "b"), "--diff"),
            ("b", "wireguard_peer", lab.peer_args("b", "a"), "--diff"),
            ("c", "wireguard_peer", lab.peer_args("c", "a"), "--diff"),
        ]
    )
    runs.append(lab.ansible("a", "wireguard_peer", lab.peer_args("a", "c"), "--diff"))
    for run in runs:
        assert not run.changed, run.output
        assert run.result["actions"] == []
    assert {node: lab.conf(node).read_bytes() for node in NODES} == confs


def test_check_mode_reports_but_changes_nothing(lab):
    conf = lab.conf("a").read_bytes()
    peers = lab.peer_settings("a")
    mtu = lab.link("a")["mtu"]
    peer_run = lab.ansible("a", "wireguard_peer", lab.peer_args("a", "c", persistent_keepalive=7), "--check", "--diff")
    iface_run = lab.ansible("a", "wireguard_interface", lab.interface_args("a", mtu=1280), "--check", "--diff")
    assert peer_run.changed and "set persistent-keepalive" in peer_run.result["actions"]
    assert "+persistent_keepalive: 7" in peer_run.output  # the diff
    assert iface_run.changed and "set mtu 1280" in iface_run.result["actions"]
    assert "+MTU = 1280" in iface_run.output
    assert lab.conf("a").read_bytes() == conf
    assert lab.peer_settings("a") == peers
    assert lab.link("a")["mtu"] == mtu


def test_live_change_keeps_the_interface_and_other_handshakes(lab):
    # A hand-written peer, as an operator (or a run managing other hosts) may leave: must survive.
    hand_written = (
        "\n# added by hand, keep me\n[Peer]\nPublicKey = "
        f"{sh('wg', 'pubkey', data=sh('wg', 'genkey')).strip()}\nAllowedIPs = 10.242.0.99/32\n"
    )
    lab.conf("a").write_text(lab.conf("a").read_text() + hand_written)
    assert lab.ping("b", TUNNEL_IP["a"]) and lab.ping("c", TUNNEL_IP["a"])
    before = lab.dump("a")
    handshake_b = before[lab.public_keys["b"]][4]
    handshake_c = before[lab.public_keys["c"]][4]
    assert handshake_b != "0" and handshake_c != "0"
    ifindex = lab.link("a")["ifindex"]
    section_b = re.search(r"\[Peer\]\n# wakegrid: node-b\n.*?\n\n", lab.conf("a").read_text(), re.DOTALL).group(0)

    run = lab.ansible(
        "a",
        "wireguard_peer",
        lab.peer_args("a", "c", allowed_ips=[f"{TUNNEL_IP['c']}/32", "10.242.9.0/24"], persistent_keepalive=15),
        "--diff",
    )

    assert run.changed
    assert run.result["actions"] == ["set persistent-keepalive", "set allowed-ips", f"write {lab.conf('a')}"]
    after = lab.dump("a")
    assert after[lab.public_keys["c"]][3] == f"{TUNNEL_IP['c']}/32,10.242.9.0/24"
    assert after[lab.public_keys["c"]][7] == "15"
    assert lab.link("a")["ifindex"] == ifindex, "interface was recreated"
    assert after[lab.public_keys["b"]][4] == handshake_b, "other peer's handshake was reset"
    assert after[lab.public_keys["c"]][4] == handshake_c, "the changed peer's session was reset"
    assert lab.ping("b", TUNNEL_IP["a"], attempts=1), "other peer's tunnel disturbed"
    conf = lab.conf("a").read_text()
    assert hand_written.strip() in conf
    assert section_b in conf, "another managed peer's section was rewritten"
    # idempotent again, with the hand-written section still there
    assert not lab.ansible(
        "a",
        "wireguard_peer",
        lab.peer_args("a", "c", allowed_ips=[f"{TUNNEL_IP['c']}/32", "10.242.9.0/24"], persistent_keepalive=15),
    ).changed


def test_preshared_key_works_and_never_shows(lab):
    psk = sh("wg", "genpsk").strip()
    psk_file = lab.config_dir("b") / "hub.psk"
    psk_file.write_text(psk + "\n")
    psk_file.chmod(0o600)
    hub_run = lab.ansible("a", "wireguard_peer", lab.peer_args("a", "b", preshared_key=psk), "--diff")
    spoke_run = lab.ansible("b", "wireguard_peer", lab.peer_args("b", "a", preshared_key_file=str(psk_file)), "--diff")
    for run in (hub_run, spoke_run):
        assert run.changed and "set preshared-key" in run.result["actions"]
        assert run.result["peer"]["preshared_key"] == "set"
    assert f"{lab.public_keys['b']}\t{psk}" in sh(
        "ip", "netns", "exec", lab.ns["a"], "wg", "show", lab.iface["a"], "preshared-keys"
    )
    # Recreate the spoke's interface: its peers, preshared key included, come back from the
    # persisted file, and the fresh handshake with the hub only succeeds if both keys agree.
    lab.ansible("b", "wireguard_interface", lab.interface_args("b", state="absent"))
    with pytest.raises(AssertionError):
        lab.link("b")
    recreated = lab.ansible("b", "wireguard_interface", lab.interface_args("b"), "--diff")
    assert recreated.changed and recreated.result["public_key"] == lab.public_keys["b"], "identity kept"
    assert lab.dump("b")[lab.public_keys["a"]][1] == psk
    assert lab.ping("b", TUNNEL_IP["a"])
    assert int(lab.dump("a")[lab.public_keys["b"]][4]) > 0
    again = lab.ansible("a", "wireguard_peer", lab.peer_args("a", "b", preshared_key=psk))
    assert not again.changed
    lab.assert_no_secret_in_outputs(psk)


def test_wg_quick_up_from_the_persisted_file_handshakes_at_once(lab):
    """What a boot or `systemctl restart wg-quick@…` does with the file the modules wrote.

    wg-quick raises the link before its PostUp sets the key: without the handshake PostUp the
    spoke's first initiation fails for want of a key and WireGuard holds the next one back for its
    5 s rekey timeout (measured here: 4.9-5.2 s); with it the handshake takes a round trip.
    """
    spoke, iface = "b", lab.iface["b"]
    sh("ip", "-n", lab.ns[spoke], "link", "delete", "dev", iface)
    # wireguard-go exits once its tun device is gone; its control socket goes with it
    support.wait_for(
        lambda: not Path(f"/var/run/wireguard/{iface}.sock").exists(), 10, what="the old wireguard-go to exit"
    )
    sh("ip", "netns", "exec", lab.ns[spoke], "wg-quick", "up", str(lab.conf(spoke)))
    support.wait_for(
        lambda: lab.dump(spoke)[lab.public_keys["a"]][4] != "0",
        2.5,
        what="a handshake with the hub after wg-quick up (WireGuard's 5 s hold-back is what it must not wait)",
    )
    assert lab.ping(spoke, TUNNEL_IP["a"], attempts=2)
    # the keepalive was turned off and on: it is back at what the file says
    assert lab.dump(spoke)[lab.public_keys["a"]][7] == "25"
    # and the modules see the interface wg-quick made as theirs: nothing to change
    again = lab.ansible(spoke, "wireguard_interface", lab.interface_args(spoke))
    assert not again.changed, again.result["actions"]


def test_remove_peer_leaves_the_others(lab):
    run = lab.ansible(
        "a",
        "wireguard_peer",
        {"interface": lab.iface["a"], "name": "node-c", "state": "absent", "config_dir": str(lab.config_dir("a"))},
        "--diff",
    )
    assert run.changed and run.result["public_key"] == lab.public_keys["c"]
    peers = lab.dump("a")
    assert lab.public_keys["c"] not in peers and lab.public_keys["b"] in peers
    conf = lab.conf("a").read_text()
    assert "node-c" not in conf and "# wakegrid: node-b" in conf and "# added by hand, keep me" in conf
    assert lab.ping("b", TUNNEL_IP["a"], attempts=2)
    assert not lab.ansible(
        "a",
        "wireguard_peer",
        {"interface": lab.iface["a"], "name": "node-c", "state": "absent", "config_dir": str(lab.config_dir("a"))},
    ).changed


def test_a_removed_peer_can_no_longer_handshake(lab):
    # The hub no longer lists node-c among its managed peers (the hand-written one never is)...
    hub = lab.ansible("a", "wireguard_interface", lab.interface_args("a"))
    assert [p["name"] for p in hub.result["managed_peers"]] == ["node-b"]
    assert hub.result["managed_peers"][0]["public_key"] == lab.public_keys["b"]
    assert hub.result["managed_peers"][0]["allowed_ips"] == [f"{TUNNEL_IP['b']}/32"]
    # ...and c, re-created with the same key and its hub peer, cannot open a session any more,
    # while b, re-created the same way, does at once.
    for node in ("c", "b"):
        lab.ansible(node, "wireguard_interface", lab.interface_args(node, state="absent"))
        assert (
            lab.ansible(node, "wireguard_interface", lab.interface_args(node)).result["public_key"]
            == (lab.public_keys[node])
        )
    # At once when the first initiation gets through; a lost one is retried after REKEY_TIMEOUT (5 s + jitter).
    support.wait_for(lambda: lab.dump("b")[lab.public_keys["a"]][4] != "0", 20, what="b's handshake with the hub")
    assert not lab.ping("c", TUNNEL_IP["a"], attempts=3)
    assert lab.dump("c")[lab.public_keys["a"]][4] == "0", "the hub accepted a handshake from a removed peer"


def test_interface_absent_removes_link_and_optionally_config(lab):
    run = lab.ansible("c", "wireguard_interface", lab.interface_args("c", state="absent", remove_config=True))
    assert run.changed
    with pytest.raises(AssertionError):
        lab.link("c")
    assert not lab.conf("c").exists() and not lab.key_file("c").exists()
    assert not lab.ansible("c", "wireguard_interface", lab.interface_args("c", state="absent")).changed
    lab.assert_no_secret_in_outputs()
