# -*- coding: utf-8 -*-
# Copyright: (c) 2026, wakegrid engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet
short_description: The wakegrid fleet file as an inventory
version_added: 0.1.0
author:
  - wakegrid engineers (@wakegrid)
description:
  - Reads a wakegrid fleet file (C(*.fleet.yml) or C(*.fleet.yaml)), the single file that
    describes the edge, the sites, the hosting tree of nodes, their dependencies and the services.
    The same file is the desired state of the wakegrid reconciler.
  - The file is validated whole by the C(wakegrid.model) Python package before anything is added
    to the inventory. An invalid file is rejected with every problem it has, each as
    C(file:line) followed by the path in the file and the reason.
  - Creates the groups C(edge), C(sites) (with one child group per site), C(gateways),
    C(machines), C(vms), C(lxcs), C(containers), C(proxmox_hosts), C(docker_hosts) and
    C(wireguard) (with children C(wireguard_hub) and C(wireguard_spokes)).
  - Sets connection variables and C(wakegrid_*) host variables on each host, and fleet-wide
    variables (sites, services with resolved backends, dependency graph) on the group C(all).
    See docs/inventory.md in the repository for the reference of groups and variables.
  - Secrets are never read by the plugin and never put in the inventory. Whatever its form (inline,
    C(env), C(file) or C(!vault)), a secret's variable holds a call of the
    P(wakegrid.fleet.fleet_secret#lookup) lookup naming where the secret is written in the fleet
    file, like C({{ lookup('wakegrid.fleet.fleet_secret', 'nodes.pve1.proxmox.token_secret',
    fleet_file='/srv/home.fleet.yml') }}), so the value is read only when a task uses the variable.
requirements:
  - The C(wakegrid) Python package (and so C(pydantic)) on the controller.
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: Marks the file as a configuration for this plugin.
    type: str
    required: true
    choices: ['wakegrid.fleet.fleet']
  defaults:
    description:
      - Fleet-wide defaults, for now C(ssh) (C(user), C(port), C(private_key_file), C(private_key)),
        which each node and the edge inherit field by field.
      - Schema reference in docs/fleet.md.
    type: dict
    default: {}
  edge:
    description:
      - The public entry point, a VPS running Caddy and the WireGuard hub, with C(host), C(address),
        C(domain), C(ssh) and C(wireguard) (C(address), C(port), C(endpoint)).
      - Schema reference in docs/fleet.md.
    type: dict
    required: true
  sites:
    description:
      - The sites by name, each with its C(gateway) node, C(lan), failover C(priority) and
        C(wireguard) tunnel address.
      - Schema reference in docs/fleet.md.
    type: dict
    required: true
  nodes:
    description:
      - The hosting tree, nodes by name. Each node has a C(kind) (V(machine), V(vm), V(lxc) or
        V(container)), a C(site) (machines) or a C(parent) (the others), and optionally C(address),
        C(mac), C(wol), C(ssh), C(vmid), C(container), C(proxmox), C(docker), C(confirm_shutdown),
        C(tags) and C(timeouts).
      - Schema reference in docs/fleet.md.
    type: dict
    default: {}
  dependencies:
    description:
      - The functional dependencies, a directed acyclic graph from a node to the nodes it needs.
      - Schema reference in docs/fleet.md.
    type: dict
    default: {}
  services:
    description:
      - The services published on the edge, by name, each with C(domain), C(policy), C(allow),
        C(health), C(failover) and C(backends).
      - Schema reference in docs/fleet.md.
    type: dict
    default: {}
  stacks:
    description:
      - The Docker stacks (Compose projects) deployed by C(playbooks/deploy_stack.yml), by name, each with
        its Docker host C(node), its C(compose_file), C(project), C(env_files), C(variables), C(secrets),
        C(images) (tarballs) and C(backends) (which Compose service backs which fleet service).
      - Schema reference in docs/fleet.md.
    type: dict
    default: {}
  clusters:
    description:
      - The quorum arrangement of Proxmox clusters named by C(nodes.*.proxmox.cluster), each with an
        optional C(qdevice) (the machine running corosync-qnetd) and C(expected_votes).
      - Schema reference in docs/fleet.md.
    type: dict
    default: {}
  lab:
    description:
      - Settings of the wakegrid lab (C(wakegrid lab up)), ignored by this plugin.
      - Schema reference in docs/fleet.md.
    type: dict
    default: {}
notes:
  - The whole fleet file is validated before the inventory changes; nothing from an invalid file
    is added.
  - Hosts of kind V(container) have no SSH; tasks reach them through the Docker API of their parent
    with the C(community.docker.docker_api) connection (from the C(community.docker) collection),
    which this plugin sets up (C(ansible_connection), C(ansible_host), C(ansible_docker_docker_host),
    and the TLS variables C(ansible_docker_tls), C(ansible_docker_validate_certs), C(ansible_docker_ca_path),
    C(ansible_docker_client_cert), C(ansible_docker_client_key) when the fleet's Docker API uses TLS; a client
    key is passed only when the fleet gives it as a C(file)).
  - A C(unix://) Docker API is a socket on the parent host, not on the controller, so its containers
    are reached with C(ssh://USER@ADDRESS:PORT) of the parent (the Docker SDK's SSH transport, which
    needs C(paramiko) on the controller and the C(docker) CLI on the parent), never through the
    controller's own socket.
  - Strings taken from the fleet file are not trusted as templates, so a C({{ }}) in a name or an
    inline secret is never rendered. Only the secret lookups this plugin writes are.
  - Enable this plugin by name (C([inventory] enable_plugins = wakegrid.fleet.fleet, host_list, ini)
    in C(ansible.cfg)), not through C(auto) or C(yaml). Those read the file with Ansible's own YAML
    loader, whose syntax errors show the lines around the error, secrets included; this plugin's
    errors give the file, the line and the reason only.
  - C(compose), C(groups) and C(keyed_groups) see the host variables and the fleet-wide variables.
    Composing a variable from a secret resolves the secret into the inventory; do not.
seealso:
  - name: Fleet file schema
    description: The reference of every section and field of a fleet file.
    link: https://github.com/wakegrid/wakegrid/blob/main/docs/fleet.md
  - name: The fleet inventory
    description: Groups, variables, how to target hosts and how secrets are handled.
    link: https://github.com/wakegrid/wakegrid/blob/main/docs/inventory.md
"""

EXAMPLES = r"""
# inventories/prod/home.fleet.yml, used with:
#   ansible-inventory -i inventories/prod/home.fleet.yml --graph
#   ansible-playbook -i inventories/prod/home.fleet.yml wakegrid.fleet.site
plugin: wakegrid.fleet.fleet
defaults:
  ssh: {user: root, private_key_file: ~/.ssh/wakegrid_ed25519}
edge:
  host: vps
  address: 203.0.113.10
  domain: example.org
  wireguard: {address: 10.200.0.1/24, port: 51820, endpoint: "vps.example.org:51820"}
sites:
  home:
    gateway: pi-home
    lan: 192.168.1.0/24
    wireguard: {address: 10.200.1.1/24}
nodes:
  pi-home: {kind: machine, site: home, address: 192.168.1.2}
  pve1:
    kind: machine
    site: home
    address: 192.168.1.3
    mac: "52:54:00:12:34:03"
    proxmox:
      api: "https://192.168.1.3:8006"
      token_id: "root@pam!wakegrid"
      token_secret: {env: PVE1_TOKEN}   # read by the task that uses it, never by the inventory
  jellyfin: {kind: lxc, parent: pve1, vmid: 201, address: 192.168.1.30}
services:
  stream:
    domain: stream.example.org
    policy: {mode: on_demand, idle_after: 20m}
    backends:
      - {node: jellyfin, port: 8096}

# Constructable options work as in any inventory plugin
compose:
  ansible_python_interpreter: "'/usr/bin/python3'"
groups:
  media: "'media' in wakegrid_tags"
keyed_groups:
  - key: wakegrid_kind
    prefix: kind
  - key: wakegrid_site
    prefix: site
"""

import os
import re

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible.template import trust_as_template
from ansible.utils.vars import combine_vars

try:
    from wakegrid.actuate.steps import docker_delegate
    from wakegrid.model import FleetError, Wol, load_fleet
except ImportError as exc:
    WAKEGRID_IMPORT_ERROR = exc
else:
    WAKEGRID_IMPORT_ERROR = None

KIND_GROUPS = {'machine': 'machines', 'vm': 'vms', 'lxc': 'lxcs', 'container': 'containers'}
FLEET_SUFFIXES = ('.fleet.yml', '.fleet.yaml')
PLUGIN_LINE = re.compile(br'^plugin:[ \t]*([\'"]?)wakegrid\.fleet\.fleet\1[ \t]*(#.*)?\r?$', re.MULTILINE)


class InventoryModule(BaseInventoryPlugin, Constructable):

    NAME = 'wakegrid.fleet.fleet'

    def verify_file(self, path):
        if not super().verify_file(path):
            return False
        # Another YAML file that names this plugin is taken too, only to say how to name it.
        return path.endswith(FLEET_SUFFIXES) or (path.endswith(('.yml', '.yaml')) and _names_this_plugin(path))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        if not path.endswith(FLEET_SUFFIXES):
            raise AnsibleParserError(
                '%s names the wakegrid.fleet.fleet plugin, but a fleet file\'s name must end in .fleet.yml or '
                '.fleet.yaml (like home.fleet.yml)' % path
            )
        if WAKEGRID_IMPORT_ERROR is not None:
            raise AnsibleParserError(
                'the wakegrid Python package is required on the controller: pip install wakegrid '
                '(from a checkout of the repository: pip install -e <checkout>); import failed with: %s'
                % WAKEGRID_IMPORT_ERROR
            )
        path = os.path.abspath(path)
        # The model reads the file itself so that each problem comes with its line.
        try:
            fleet = load_fleet(path)
        except FleetError as exc:
            raise AnsibleParserError(str(exc)) from None
        # Then Ansible reads it as a plugin configuration, for compose, groups and keyed_groups.
        self._read_config_data(path)

        variables = FleetVariables(fleet, path)
        fleet_vars = variables.all_group()
        for name, value in fleet_vars.items():
            self.inventory.set_variable('all', name, value)
        self._add_groups(fleet)
        for host, host_vars in variables.hosts().items():
            for name, value in host_vars.items():
                self.inventory.set_variable(host, name, value)
            self._construct(host, combine_vars(fleet_vars, host_vars))

    def _add_groups(self, fleet):
        for group in ('edge', 'sites', 'gateways', *KIND_GROUPS.values(), 'proxmox_hosts', 'docker_hosts',
                      'wireguard', 'wireguard_hub', 'wireguard_spokes'):
            self.inventory.add_group(group)
        self.inventory.add_child('wireguard', 'wireguard_hub')
        self.inventory.add_child('wireguard', 'wireguard_spokes')

        self.inventory.add_host(fleet.edge.host, group='edge')
        self.inventory.add_child('wireguard_hub', fleet.edge.host)
        for site_name in fleet.sites:
            self.inventory.add_group(site_name)
            self.inventory.add_child('sites', site_name)
        for name, node in fleet.nodes.items():
            self.inventory.add_host(name, group=KIND_GROUPS[node.kind])
            site = fleet.site_of(name)
            if site is not None:
                self.inventory.add_child(site, name)
            if node.proxmox is not None:
                self.inventory.add_child('proxmox_hosts', name)
            if node.docker is not None:
                self.inventory.add_child('docker_hosts', name)
        for site in fleet.sites.values():
            self.inventory.add_child('gateways', site.gateway)
            self.inventory.add_child('wireguard_spokes', site.gateway)

    def _construct(self, host, variables):
        strict = self.get_option('strict')
        self._set_composite_vars(self.get_option('compose'), variables, host, strict=strict)
        # Composed variables are host variables by now: let groups and keyed_groups see them.
        variables = combine_vars(variables, self.inventory.get_host(host).get_vars())
        self._add_host_to_composed_groups(self.get_option('groups'), variables, host, strict=strict, fetch_hostvars=False)
        self._add_host_to_keyed_groups(self.get_option('keyed_groups'), variables, host, strict=strict, fetch_hostvars=False)


def _names_this_plugin(path):
    """Whether the file has a top-level ``plugin: wakegrid.fleet.fleet`` line (read as text, never as YAML)."""
    try:
        with open(path, 'rb') as stream:
            head = stream.read(65536)
    except OSError:
        return False
    return PLUGIN_LINE.search(head) is not None


# --------------------------------------------------------------------------- variables


def _jinja_string(text):
    """A Jinja2 string literal of ``text`` (quotes and backslashes escaped)."""
    return "'%s'" % text.replace('\\', '\\\\').replace("'", "\\'")


class FleetVariables:
    """The inventory variables of one validated fleet."""

    def __init__(self, fleet, path):
        self.fleet = fleet
        self.path = path

    # ---- the group all: what spans hosts

    def all_group(self):
        fleet = self.fleet
        return {
            'wakegrid_fleet_file': self.path,
            'wakegrid_sites': dict((name, self.site(site)) for name, site in fleet.sites.items()),
            'wakegrid_services': dict((name, self.service(service)) for name, service in fleet.services.items()),
            'wakegrid_dependency_graph': dict((name, fleet.dependencies_of(name)) for name in fleet.nodes),
            'wakegrid_stacks': dict((name, self.stack(name)) for name in fleet.stacks),
        }

    @staticmethod
    def site(site):
        return {
            'gateway': site.gateway,
            'lan': site.lan,
            'priority': site.priority,
            'wireguard': {'address': site.wireguard.address},
        }

    def service(self, service):
        fleet = self.fleet
        policy = service.policy
        return {
            'domain': service.domain,
            'policy': {
                'mode': policy.mode,
                'idle_after': policy.idle_after,
                'timezone': policy.timezone,
                'windows': [window.model_dump() for window in policy.windows or []],
            },
            'allow': list(service.allow),
            'health': service.health.model_dump(),
            'site_order': fleet.site_order(service),
            'backends': [
                {
                    'address': fleet.backend_address(backend),
                    'port': backend.port,
                    'site': fleet.backend_site(backend),
                    'weight': backend.weight,
                    'node': backend.node,
                    'tags': list(backend.tags),
                }
                for backend in service.backends
            ],
        }

    def stack(self, name):
        """What deploy_stack.yml passes to wakegrid.fleet.docker_stack; secrets as lookups (see secret())."""
        fleet = self.fleet
        stack = fleet.stacks[name]
        node = fleet.nodes[stack.node]
        return {
            'node': stack.node,
            'project': fleet.project_of(name),
            'compose_file': os.path.normpath(stack.compose_file),
            'project_src': os.path.dirname(os.path.normpath(stack.compose_file)),
            'env_files': [os.path.normpath(path) for path in stack.env_files],
            'variables': dict(stack.variables),
            'secrets': dict((key, self.secret(value)) for key, value in stack.secrets.items()),
            'images': [{'src': os.path.normpath(path)} for path in stack.images],
            # A unix:// socket is reached on its own host (the files are copied there first), the rest from here.
            'delegate_to': docker_delegate(node.docker.api, stack.node),
            'backends': [
                {
                    'service': backend.service,
                    'compose_service': backend.compose_service,
                    'address': node.address,
                    'port': backend.port,
                }
                for backend in stack.backends
            ],
        }

    # ---- hosts

    def hosts(self):
        """Variables of each host: the edge first, then the nodes in file order."""
        hosts = {self.fleet.edge.host: self.edge()}
        for name in self.fleet.nodes:
            hosts[name] = self.node(name)
        return hosts

    def edge(self):
        edge = self.fleet.edge
        wireguard = {'address': edge.wireguard.address, 'port': edge.wireguard.port, 'endpoint': edge.wireguard.endpoint}
        variables = {'ansible_host': edge.address} if edge.address else {}
        variables.update(self.ssh(self.fleet.ssh_of(edge.host)))
        variables.update({
            'wakegrid_kind': 'edge',
            'wakegrid_site': None,
            'wakegrid_gateway': None,
            'wakegrid_parent': None,
            'wakegrid_ancestors': [],
            'wakegrid_children': [],
            'wakegrid_dependencies': [],
            'wakegrid_dependants': [],
            'wakegrid_tags': [],
            'wakegrid_edge': {'address': edge.address, 'domain': edge.domain, 'wireguard': wireguard},
            'wakegrid_wireguard': dict(wireguard, role='hub'),
        })
        return variables

    def node(self, name):
        fleet = self.fleet
        node = fleet.nodes[name]
        variables = {}
        host_docker = fleet.nodes[node.parent].docker if node.kind == 'container' else None
        if host_docker is not None:
            # A container has no SSH: tasks run in it through its parent's Docker API.
            variables.update({
                'ansible_connection': 'community.docker.docker_api',
                'ansible_host': node.container or name,
            })
            variables.update(self.docker_connection(node.parent, host_docker))
        else:
            if node.address is not None:
                variables['ansible_host'] = node.address
            variables.update(self.ssh(fleet.ssh_of(name)))
        variables.update({
            'wakegrid_kind': node.kind,
            'wakegrid_site': fleet.site_of(name),
            'wakegrid_gateway': fleet.gateway_of(name),
            'wakegrid_parent': node.parent,
            'wakegrid_ancestors': fleet.ancestors(name),
            'wakegrid_children': fleet.children(name),
            'wakegrid_dependencies': fleet.dependencies_of(name),
            'wakegrid_dependants': fleet.dependants_of(name),
            'wakegrid_confirm_shutdown': fleet.confirm_shutdown(name),
            'wakegrid_address': node.address,
            'wakegrid_mac': node.mac,
            'wakegrid_wol': self.wol(node),
            'wakegrid_vmid': node.vmid,
            # The container's name on its Docker host defaults to the node name.
            'wakegrid_container': (node.container or name) if node.kind == 'container' else None,
            'wakegrid_docker_api': host_docker.api if host_docker is not None else None,
            'wakegrid_proxmox': self.proxmox(node.proxmox, name),
            'wakegrid_docker': self.docker(node.docker),
            'wakegrid_tags': list(node.tags),
            'wakegrid_timeouts': node.timeouts.model_dump(),
        })
        for site_name, site in fleet.sites.items():
            if site.gateway == name:
                variables['wakegrid_wireguard'] = {
                    'role': 'spoke',
                    'site': site_name,
                    'address': site.wireguard.address,
                    'lan': site.lan,
                    'priority': site.priority,
                }
        return variables

    def ssh(self, ssh):
        variables = {'ansible_port': ssh.port}
        if ssh.user is not None:
            variables['ansible_user'] = ssh.user
        if ssh.private_key_file is not None:
            variables['ansible_ssh_private_key_file'] = ssh.private_key_file
        if ssh.private_key is not None:
            variables['ansible_ssh_private_key'] = self.secret(ssh.private_key)
        return variables

    def wol(self, node):
        """How to wake a machine: its wol settings, or the defaults when it has a mac and none."""
        if node.mac is None:
            return None
        wol = node.wol if node.wol is not None else Wol()
        return {
            'port': wol.port,
            'broadcast': wol.broadcast,
            'interface': wol.interface,
            'secureon': self.secret(wol.secureon),
        }

    def docker_connection(self, host, docker):
        """The docker_api connection variables that reach the Docker API of ``host``.

        A unix:// socket lives on its host, not on the controller: it is reached over SSH
        (ssh://, which community.docker's connection supports through paramiko), never through
        the controller's own socket. TLS settings follow the fleet; a client key is passed only
        as a file (the connection plugin takes a path, and a secret value is never written out).
        """
        if docker.api.startswith('unix://'):
            node = self.fleet.nodes[host]
            ssh = self.fleet.ssh_of(host)
            address = node.address or host
            if ':' in address:
                address = '[%s]' % address
            user = '%s@' % ssh.user if ssh.user else ''
            return {'ansible_docker_docker_host': 'ssh://%s%s:%d' % (user, address, ssh.port)}
        variables = {'ansible_docker_docker_host': docker.api}
        if docker.tls:
            variables.update({'ansible_docker_tls': True, 'ansible_docker_validate_certs': docker.tls_verify})
            if docker.ca is not None:
                variables['ansible_docker_ca_path'] = str(docker.ca)
            if docker.cert is not None:
                variables['ansible_docker_client_cert'] = str(docker.cert)
            if docker.key is not None and docker.key.file is not None:
                variables['ansible_docker_client_key'] = docker.key.file
        return variables

    def docker(self, docker):
        if docker is None:
            return None
        return dict(docker.model_dump(exclude={'key'}), key=self.secret(docker.key))

    def proxmox(self, proxmox, name):
        if proxmox is None:
            return None
        return {
            'api': proxmox.api,
            'node': proxmox.node or name,  # the PVE node name defaults to the fleet node name
            'token_id': proxmox.token_id,
            'token_secret': self.secret(proxmox.token_secret),
            'verify_tls': proxmox.verify_tls,
        }

    # ---- secrets

    def secret(self, secret):
        """A template that yields the secret only when a task uses it.

        The inventory holds where the secret is written (its fleet path), never its value nor its
        source: the fleet_secret lookup reads the fleet file and the secret then, for every form
        (inline, env, file, vault) alike, so an unset variable fails the task instead of giving ''.
        """
        if secret is None:
            return None
        return trust_as_template(
            "{{ lookup('wakegrid.fleet.fleet_secret', %s, fleet_file=%s) }}"
            % (_jinja_string(secret.where), _jinja_string(self.path))
        )
