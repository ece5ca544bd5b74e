# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Connection options of the wakegrid.fleet Docker modules (module_utils/docker_api.py).
    DOCUMENTATION = r"""
options:
  docker_host:
    description:
      - The Docker API, V(unix:///path/to/docker.sock), V(tcp://host:2375) (V(tcp://host:2376)
        with TLS) or V(ssh://user@host).
      - If not set, the value of the E(DOCKER_HOST) environment variable is used.
    type: str
    default: unix:///var/run/docker.sock
    aliases: [docker_url]
  tls:
    description:
      - Use TLS. Without O(validate_certs), the server certificate is not verified (anyone on
        the path can pose as the Docker host); with it, it is.
      - If not set, the value of the E(DOCKER_TLS) environment variable is used.
    type: bool
    default: false
  validate_certs:
    description:
      - Use TLS and verify the server certificate against O(ca_path) (or the system CAs).
      - If not set, the value of the E(DOCKER_TLS_VERIFY) environment variable is used.
    type: bool
    default: false
    aliases: [tls_verify]
  ca_path:
    description:
      - CA certificate to verify the server with. Defaults to C(ca.pem) in E(DOCKER_CERT_PATH).
    type: path
    aliases: [ca_cert, tls_ca_cert, cacert_path]
  client_cert:
    description:
      - Client certificate for TLS client authentication. Defaults to C(cert.pem) in
        E(DOCKER_CERT_PATH).
    type: path
    aliases: [tls_client_cert, cert_path]
  client_key:
    description:
      - Private key of O(client_cert). Defaults to C(key.pem) in E(DOCKER_CERT_PATH).
      - Mutually exclusive with O(client_key_content).
    type: path
    aliases: [tls_client_key, key_path]
  client_key_content:
    description:
      - The private key of O(client_cert) itself (PEM), for a key kept as a secret rather than a
        file (a fleet's C(docker.key)). Written to a private temporary file for the module's run
        only. Never shown in the module's output.
      - Mutually exclusive with O(client_key).
    type: str
  api_version:
    description:
      - Docker API version to use; V(auto) negotiates the server's.
      - If not set, the value of the E(DOCKER_API_VERSION) environment variable is used.
    type: str
    default: auto
    aliases: [docker_api_version]
  api_timeout:
    description:
      - Seconds each request to the API may take.
      - If not set, the value of the E(DOCKER_TIMEOUT) environment variable is used.
    type: int
    default: 60
  api_wait_timeout:
    description:
      - Seconds to keep trying, once a second, to reach an API that does not answer yet (a Docker
        host still booting) before failing. V(0) tries once.
      - A TLS failure (an untrusted or mismatched certificate) fails at once.
    type: int
    default: 0
  use_ssh_client:
    description:
      - For V(ssh://) hosts, run the C(ssh) command instead of paramiko.
    type: bool
    default: false
attributes:
  action_group:
    description: Use C(group/wakegrid.fleet.docker) in C(module_defaults) to set the connection options once.
    support: full
    membership:
      - wakegrid.fleet.docker
requirements:
  - docker (the Docker SDK for Python) >= 7.0
notes:
  - The connection options are those of community.docker, with the same aliases and environment
    variables, except that the API time limit is O(api_timeout) (community.docker's C(timeout))
    and that there is no C(tls_hostname) (the Docker SDK 7 dropped it; the certificate must match
    the host in O(docker_host)).
  - A connection that fails after the API answered (a timeout, a reset) fails the task with a
    message naming O(docker_host), never a traceback.
"""
