"""``wakegrid lab …``: build, inspect and break the one-machine lab.

The lead's ``wakegrid`` CLI wires :func:`add_lab_commands`; ``python -m wakegrid.lab``
runs :func:`main` on its own.
"""

from __future__ import annotations

import argparse
import sys
import time

from wakegrid.lab.topology import LabConfigError
from wakegrid.model import FleetError

DEFAULT_FLEET = "inventories/lab/lab.fleet.yml"
DAEMON_PORT = 9380  # wakegrid.lab.daemon.DEFAULT_PORT (not imported: it needs the Docker SDK)
DESCRIPTION = (
    "Build a fleet on this machine out of real parts (containers with systemd and sshd, Docker networks, "
    "Wake-on-LAN, a Proxmox API emulator, Docker in a guest), then power, cut and restore it. Needs root."
)


def add_lab_commands(subparsers) -> argparse.ArgumentParser:
    """Add ``lab`` and its subcommands to an argparse subparsers object."""
    lab = subparsers.add_parser("lab", help="build and drive the one-machine lab", description=DESCRIPTION)
    configure(lab)
    return lab


def configure(lab: argparse.ArgumentParser) -> None:
    """The lab's subcommands, on ``lab`` (the ``wakegrid lab`` parser or a top-level one)."""
    sub = lab.add_subparsers(dest="lab_command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("fleet", nargs="?", default=DEFAULT_FLEET, help=f"the *.fleet.yml (default: {DEFAULT_FLEET})")
        return p

    cmd("up", "build the fleet's lab (idempotent: reuses what exists, recreates what changed)")
    down = cmd("down", "remove the lab: containers, networks, volumes, state (images only with --purge)")
    down.add_argument("--purge", action="store_true", help="also remove the lab images (the rootfs cache stays)")
    cmd("status", "each host, its power state and addresses")
    cmd("inventory", "write an INI inventory of the lab hosts (before the fleet plugin is installed)")
    for name, help_ in (
        ("cut-site", "make a whole site unreachable (its gateway's WAN link and tunnels go down)"),
        ("restore-site", "bring a cut site back"),
    ):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("site")
        p.add_argument("fleet", nargs="?", default=DEFAULT_FLEET)
    p = sub.add_parser("power", help="power a node on or off directly", description="power a node on or off directly")
    p.add_argument("node")
    p.add_argument("state", choices=["on", "off"])
    p.add_argument("fleet", nargs="?", default=DEFAULT_FLEET)
    add_daemon_commands(sub)
    lab.set_defaults(func=run)


def add_daemon_commands(sub) -> None:
    """``lab daemon …``: the reconciler daemon as a systemd service of the lab's edge host."""
    help_ = "run the reconciler daemon in the lab's edge host, installed as a user would (venv + systemd unit)"
    daemon = sub.add_parser("daemon", help=help_, description=help_)
    actions = daemon.add_subparsers(dest="daemon_command", required=True, metavar="ACTION")
    install = actions.add_parser(
        "install",
        help="install or update the wheel, the collection, the fleet and the unit (quick when unchanged)",
        description="Install the wakegrid wheel and its requirements (a wheelhouse built here: lab hosts have no "
        "Internet) into /opt/wakegrid, the collection into /opt/wakegrid/collection, FLEET and the "
        "files it names, the daemon config and wakegrid.service. Does not start the daemon.",
    )
    install.add_argument("daemon_fleet", metavar="FLEET", help="the fleet the daemon runs (any *.fleet.yml)")
    install.add_argument(
        "--config",
        metavar="FILE",
        help=f"the daemon's config (default: listen on 0.0.0.0:{DAEMON_PORT}, for the edge's Caddy and this machine)",
    )
    install.add_argument(
        "--dry-run", action="store_true", help="the daemon decides and logs, never acts (wakegrid daemon --dry-run)"
    )
    install.add_argument(
        "--lab", dest="fleet", metavar="LAB_FLEET", help="the fleet the lab was built from (default: FLEET itself)"
    )
    for name, text in (
        ("start", "start the daemon and wait until it listens"),
        ("stop", "stop it (SIGTERM)"),
        ("restart", "restart it and wait until it listens"),
        ("status", "systemd's status of the unit (exit 3 when not running)"),
        ("kill", "SIGKILL the daemon and its playbook runs (systemctl kill -s KILL)"),
        ("url", "the daemon's HTTP(S) address as seen from this machine"),
        ("admin", "where the dashboard is, and the files of the lab's admin token and certificate"),
        ("logs", "the daemon's log lines of its current or last run"),
    ):
        p = actions.add_parser(name, help=text, description=text)
        p.add_argument("fleet", nargs="?", default=DEFAULT_FLEET, help=f"the lab's fleet (default: {DEFAULT_FLEET})")
        if name == "logs":
            p.add_argument("-n", "--lines", type=_positive, default=50, help="how many lines (default: 50)")
            p.add_argument("--all", action="store_true", help="every run of the unit, not only the last one")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def run(args: argparse.Namespace) -> int:
    from wakegrid.lab.runtime import Lab, LabError  # the docker SDK is only needed here

    try:
        if args.lab_command == "daemon":
            return run_daemon(args)
        lab = Lab(args.fleet)
        command = args.lab_command
        if command == "up":
            lab.up()
            print()
            print_status(lab)
            print_howto(lab)
        elif command == "down":
            lab.down(purge=args.purge)
        elif command == "status":
            print_status(lab)
            print_howto(lab)
        elif command == "inventory":
            print(lab.write_ini_inventory())
        elif command == "cut-site":
            lab.cut_site(args.site)
        elif command == "restore-site":
            lab.restore_site(args.site)
        elif command == "power":
            started = time.monotonic()
            lab.power(args.node, args.state == "on")
            print(f"{args.node} is {args.state} ({time.monotonic() - started:.1f}s)")
    except (FleetError, LabConfigError, LabError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def run_daemon(args: argparse.Namespace) -> int:
    from wakegrid.lab.daemon import LabDaemon
    from wakegrid.lab.runtime import Lab

    action = args.daemon_command
    daemon = LabDaemon(Lab(args.fleet or args.daemon_fleet))
    if action == "install":
        report = daemon.install(args.daemon_fleet, args.config, dry_run=args.dry_run)
        for note in report.notes:
            print(f"note: {note}")
        print(f"{report.summary()}; the daemon runs {report.fleet}{' (dry run)' if args.dry_run else ''}")
    elif action in ("start", "restart"):
        started = time.monotonic()
        getattr(daemon, action)()
        print(f"wakegrid.service is running ({action} {time.monotonic() - started:.1f}s)")
    elif action == "stop":
        daemon.stop()
    elif action == "kill":
        daemon.kill()
        print("wakegrid.service killed (SIGKILL)")
    elif action == "status":
        print(daemon.status())
        return 0 if daemon.is_active() else 3
    elif action == "logs":
        print(daemon.logs(args.lines, all_runs=args.all))
    elif action == "url":
        print(daemon.url())
    elif action == "admin":
        from wakegrid.lab.daemon import lab_credentials

        credentials = lab_credentials(daemon.lab)
        print(f"dashboard:   {daemon.url()}/admin  (API: {daemon.url()}/docs)")
        print(f"token:       {credentials.token_file}  (the login; Authorization: Bearer for the API)")
        print(f"certificate: {credentials.cert}  (self-signed: curl --cacert, or accept it in the browser)")
    return 0


def print_status(lab) -> None:
    cut = {site for site in lab.fleet.sites if lab.is_cut(site)}
    rows = [("HOST", "ROLE", "SITE", "POWER", "ADDRESSES")]
    for state in lab.host_states():
        host = state.plan
        power = {"running": "on", "exited": "off", "created": "off"}.get(state.status, state.status)
        addresses = " ".join(a.address for a in host.networks if a.network in state.addresses) or "-"
        note = " (site cut)" if host.role == "gateway" and host.site in cut else ""
        rows.append((host.node, host.role, host.site or "-", power + note, addresses))
    for inner in lab.plan.inner:
        rows.append(
            (
                inner.node,
                f"container in {inner.parent}",
                lab.fleet.site_of(inner.node) or "-",
                lab.inner_status(inner),
                "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    memory = lab.memory_bytes()
    if memory:
        print(f"\nmemory: {sum(memory.values()) / 2**20:.0f} MiB in {len(memory)} running containers")


def print_howto(lab) -> None:
    plan = lab.plan
    print("\nTry it:")
    some = next((h for h in plan.hosts if h.role == "machine"), plan.hosts[0])
    print(f"  {' '.join(lab.ssh_command(some.node))}")
    for app in plan.apps[:3]:
        print(f"  curl http://{app.address}:{app.port}/          # {app.service} on {app.node}")
    print(f"  ansible all -i {lab.fleet_path} -m ansible.builtin.ping   # containers via their parent's Docker API")
    print(f"  wakegrid lab power nas off|on   ·   wakegrid lab cut-site {next(iter(lab.fleet.sites))}")


def main(argv: list[str] | None = None, prog: str = "wakegrid lab") -> int:
    """``wakegrid lab ARGV…`` (what ``wakegrid.cli`` calls) and ``python -m wakegrid.lab ARGV…``."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    configure(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lab"]:  # `python -m wakegrid.lab lab up` works too
        argv = argv[1:]
    args = parser.parse_args(argv)
    return args.func(args)
