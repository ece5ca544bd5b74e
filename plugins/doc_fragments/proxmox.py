# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Connection options of the wakegrid.fleet Proxmox VE modules (module_utils/proxmox.py).
    DOCUMENTATION = r"""
options:
  api_host:
    description:
      - Host name or IP address of any node of the Proxmox VE cluster. Requests about guests on
        other nodes are forwarded by that node, as with the web interface.
      - If not set, the value of the E(PROXMOX_HOST) environment variable is used.
    type: str
    required: true
  api_port:
    description:
      - Port of the Proxmox VE API (pveproxy).
      - If not set, the value of the E(PROXMOX_PORT) environment variable is used.
    type: int
    default: 8006
  api_user:
    description:
      - The user to authenticate as, V(user@realm), for example V(root@pam).
      - Required with O(api_password), and with O(api_token_id) when that is only the token name.
      - If not set, the value of the E(PROXMOX_USER) environment variable is used.
    type: str
  api_password:
    description:
      - Password of O(api_user), exchanged for a ticket (C(POST /access/ticket)).
      - Prefer an API token.
      - If not set, the value of the E(PROXMOX_PASSWORD) environment variable is used.
    type: str
  api_token_id:
    description:
      - The API token, either its full ID V(user@realm!name) (as the fleet file's C(proxmox.token_id))
        or only its V(name) together with O(api_user).
      - If not set, the value of the E(PROXMOX_TOKEN_ID) environment variable is used.
    type: str
  api_token_secret:
    description:
      - The secret (UUID) of the API token O(api_token_id). Never shown in the module's output.
      - If not set, the value of the E(PROXMOX_TOKEN_SECRET) environment variable is used.
    type: str
  validate_certs:
    description:
      - Verify the TLS certificate of the API. Proxmox VE uses a self-signed certificate by
        default; install its CA on the host that runs the module or set V(false).
      - If not set, the value of the E(PROXMOX_VALIDATE_CERTS) environment variable is used.
    type: bool
    default: true
  api_timeout:
    description:
      - Time limit in seconds for each request to the API.
    type: int
    default: 10
attributes:
  action_group:
    description: Use C(group/wakegrid.fleet.proxmox) in C(module_defaults) to set the connection options once.
    support: full
    membership:
      - wakegrid.fleet.proxmox
requirements:
  - proxmoxer >= 2.0
  - requests
notes:
  - One of O(api_token_secret) or O(api_password) is required. The credentials are checked once,
    at the start, with C(GET /version); a wrong token or password fails the task at once with an
    authentication error.
  - The environment variables are those of the community.proxmox collection. They fill only the
    options a task leaves unset, so a password in the environment conflicts with a token given to
    the task, and a token in the environment with a password. Export one kind of credentials only.
"""
