# -*- coding: utf-8 -*-
# Copyright: (c) 2026, wakegrid engineers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet_secret
short_description: Read a secret of a wakegrid fleet file when a task uses it
version_added: 0.1.0
author:
  - wakegrid engineers (@wakegrid)
description:
  - Returns the value of a secret written in a wakegrid fleet file, named by its path in the file,
    like C(nodes.pve1.proxmox.token_secret).
  - The secret is read only now, from its source in the fleet file, whatever it is. An inline
    string as written. C(env) from the controller's environment. C(file) read on the controller,
    a relative path being relative to the fleet file's directory. A C(!vault) value decrypted with
    the vault secrets of the run.
  - This is how the C(wakegrid.fleet.fleet) inventory gives secrets to tasks. Its host variables
    (C(wakegrid_proxmox.token_secret), C(wakegrid_wol.secureon), C(wakegrid_docker.key),
    C(ansible_ssh_private_key)) hold a call of this lookup, never a value, so
    C(ansible-inventory --list) and C(--host) show where a secret is and never what it is.
  - A secret that cannot be read fails the task with the fleet path and the source (the environment
    variable, the file), never with a value. An unset environment variable is an error, not an
    empty string.
requirements:
  - The C(wakegrid) Python package (and so C(pydantic)) on the controller.
options:
  _terms:
    description: Fleet paths of secrets, as the fleet's own errors write them.
    type: list
    elements: str
    required: true
  fleet_file:
    description:
      - The fleet file that holds the secrets.
      - The inventory plugin writes it into each lookup it sets; a task of a play whose inventory
        is a fleet file can leave it out.
    type: path
    vars:
      - name: wakegrid_fleet_file
notes:
  - Use C(no_log) on tasks whose arguments or results carry a secret; modules of this collection
    already hide the arguments they know to be secrets.
  - The fleet file is validated whole, as by the inventory plugin; an invalid file fails the lookup
    with every problem it has.
seealso:
  - plugin: wakegrid.fleet.fleet
    plugin_type: inventory
"""

EXAMPLES = r"""
- name: Start a guest with the token of its Proxmox host (the inventory sets wakegrid_fleet_file)
  wakegrid.fleet.proxmox_guest:
    api_host: 192.168.1.3
    api_token_id: root@pam!wakegrid
    api_token_secret: "{{ lookup('wakegrid.fleet.fleet_secret', 'nodes.pve1.proxmox.token_secret') }}"
    vmid: 201
    state: started
  delegate_to: localhost

- name: The same value, through the inventory's host variable (which holds this lookup)
  ansible.builtin.copy:
    content: "{{ hostvars['pve1'].wakegrid_proxmox.token_secret }}"
    dest: /etc/wakegrid/pve1.token
    mode: "0600"
  no_log: true

- name: A secret of another fleet file
  ansible.builtin.set_fact:
    other_token: "{{ lookup('wakegrid.fleet.fleet_secret', 'nodes.pve9.proxmox.token_secret', fleet_file='/srv/other.fleet.yml') }}"
  no_log: true
"""

RETURN = r"""
_raw:
  description: The value of each secret, in the order of the terms.
  type: list
  elements: str
"""

import os

from ansible.errors import AnsibleLookupError
from ansible.module_utils.common.text.converters import to_text
from ansible.parsing.vault import EncryptedString
from ansible.plugins.lookup import LookupBase

try:
    from wakegrid.model import FleetError, load_fleet
    from wakegrid.secret import SecretError, secret_at
except ImportError as exc:
    WAKEGRID_IMPORT_ERROR = exc
else:
    WAKEGRID_IMPORT_ERROR = None

# Fleets already validated by this process, by path, with the file's identity when it was read.
_FLEETS = {}


def _fleet(path):
    stat = os.stat(path)
    identity = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    cached = _FLEETS.get(path)
    if cached is None or cached[0] != identity:
        cached = _FLEETS[path] = (identity, load_fleet(path))
    return cached[1]


def _decrypt_vault(ciphertext):
    # Ansible's own encrypted value, decrypted with the vault secrets of this run.
    return to_text(str(EncryptedString(ciphertext=ciphertext)))


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        if WAKEGRID_IMPORT_ERROR is not None:
            raise AnsibleLookupError(
                'the wakegrid Python package is required on the controller: pip install wakegrid '
                '(from a checkout of the repository: pip install -e <checkout>); import failed with: %s'
                % WAKEGRID_IMPORT_ERROR
            )
        self.set_options(var_options=variables, direct=kwargs)
        fleet_file = self.get_option('fleet_file')
        if not fleet_file:
            raise AnsibleLookupError(
                'no fleet file: use a wakegrid fleet file as inventory (it sets wakegrid_fleet_file) or give fleet_file'
            )
        try:
            fleet = _fleet(os.path.abspath(fleet_file))
        except FleetError as exc:
            raise AnsibleLookupError(to_text(exc))
        except OSError as exc:
            raise AnsibleLookupError('cannot read the fleet file %s: %s' % (fleet_file, exc.strerror))
        values = []
        for term in terms:
            try:
                values.append(secret_at(fleet, to_text(term)).reveal(decrypt_vault=_decrypt_vault))
            except SecretError as exc:  # names the fleet path and the source, never a value
                raise AnsibleLookupError('%s: %s' % (fleet_file, to_text(exc)))
        return values
