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
    type: str
    required: true
  api_port:
    description:
      - Port of the Proxmox VE API (pveproxy).
    type: int
    default: 8006
  api_user:
    description:
      - The user to authenticate as, V(user@realm), for example V(root@pam).
      - Required with O(api_password), and with O(api_token_id) when that is only the token name.
    type: str
  api_password:
    description:
      - Password of O(api_user), exchanged for a ticket (C(POST /access/ticket)).
      - Prefer an API token.
    type: str
  api_token_id:
    description:
      - The API token, either its full ID V(user@realm!name) (as the fleet file's C(proxmox.token_id))
        or only its V(name) together with O(api_user).
    type: str
  api_token_secret:
    description:
      - The secret (UUID) of the API token O(api_token_id). Never shown in the module's output.
    type: str
  validate_certs:
    description:
      - Verify the TLS certificate of the API. Proxmox VE uses a self-signed certificate by
        default; install its CA on the host that runs the module or set V(false).
    type: bool
    default: true
  api_timeout:
    description:
      - Time limit in seconds for each request to the API.
    type: int
    default: 10
requirements:
  - proxmoxer >= 2.0
  - requests
notes:
  - One of O(api_token_secret) or O(api_password) is required. The credentials are checked once,
    at the start, with C(GET /version); a wrong token or password fails the task at once with an
    authentication error.
"""
