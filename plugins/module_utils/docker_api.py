# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Docker Engine API access for the wakegrid.fleet Docker modules, through the docker SDK.

Connection options are named as in community.docker (docker_host, tls, validate_certs, ca_path,
client_cert, client_key, api_version, use_ssh_client, same aliases and environment variables),
so that playbooks move between the two collections unchanged. The API time limit is
``api_timeout`` here, because ``timeout`` bounds how long a module waits for a container.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import tempfile
import time
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib

DOCKER_IMP_ERR = None
try:
    import docker
    from docker.errors import DockerException, NotFound
    from docker.tls import TLSConfig

    HAS_DOCKER = True
except ImportError:
    DOCKER_IMP_ERR = traceback.format_exc()
    HAS_DOCKER = False

    class DockerException(Exception):  # placeholder, so that except clauses stay valid
        pass

    class NotFound(DockerException):  # placeholder, so that except clauses stay valid
        pass


try:
    from requests.exceptions import RequestException, SSLError  # a dependency of the docker SDK
except ImportError:

    class RequestException(Exception):  # placeholder, so that except clauses stay valid
        pass

    class SSLError(RequestException):  # placeholder, so that except clauses stay valid
        pass


DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

if HAS_DOCKER:

    class _ExplicitTLSClient(docker.APIClient):
        """An API client that verifies as told: with ca_path only, or not at all.

        requests lets REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE replace a session's ``verify``
        (psf/requests issue 3829): ca_path must not be silently swapped for the system's CAs, nor
        validate_certs=false turned into a check against them.
        """

        trust_env = property(lambda self: False, lambda self, value: None)

    class _Client(object):
        """What the modules use of docker.DockerClient: the low-level client, as ``api``."""

        def __init__(self, api):
            self.api = api

        def ping(self):
            return self.api.ping()


class DockerApiError(Exception):
    """A failure to report with fail_json: ``msg`` plus extra result keys."""

    def __init__(self, msg, **result):
        super(DockerApiError, self).__init__(msg)
        self.msg = msg
        self.result = result


def docker_argument_spec():
    return dict(
        docker_host=dict(
            type="str",
            default=DEFAULT_DOCKER_HOST,
            aliases=["docker_url"],
            fallback=(env_fallback, ["DOCKER_HOST"]),
        ),
        tls=dict(type="bool", default=False, fallback=(env_fallback, ["DOCKER_TLS"])),
        validate_certs=dict(
            type="bool", default=False, aliases=["tls_verify"], fallback=(env_fallback, ["DOCKER_TLS_VERIFY"])
        ),
        ca_path=dict(type="path", aliases=["ca_cert", "tls_ca_cert", "cacert_path"]),
        client_cert=dict(type="path", aliases=["tls_client_cert", "cert_path"]),
        client_key=dict(type="path", aliases=["tls_client_key", "key_path"], no_log=False),
        client_key_content=dict(type="str", no_log=True),
        api_version=dict(
            type="str", default="auto", aliases=["docker_api_version"], fallback=(env_fallback, ["DOCKER_API_VERSION"])
        ),
        api_timeout=dict(type="int", default=60, fallback=(env_fallback, ["DOCKER_TIMEOUT"])),
        api_wait_timeout=dict(type="int", default=0),
        use_ssh_client=dict(type="bool", default=False),
    )


DOCKER_MUTUALLY_EXCLUSIVE = [("client_key", "client_key_content")]


def check_sdk(module):
    if not HAS_DOCKER:
        module.fail_json(msg=missing_required_lib("docker"), exception=DOCKER_IMP_ERR)


def run_or_fail(module, work):
    """The result of ``work()``, or the module failed with what went wrong and on which API."""
    where = module.params["docker_host"]
    try:
        return work()
    except DockerApiError as exc:
        module.fail_json(msg=exc.msg, **exc.result)
    except DockerException as exc:
        module.fail_json(msg="Docker API error on %s: %s" % (where, exc))
    except (RequestException, OSError) as exc:  # not wrapped by the SDK: the API went away after answering
        module.fail_json(msg="lost the connection to the Docker API at %s: %s" % (where, exc))
    return None  # not reached: fail_json exits


def _cert_path_default(params, name, filename):
    # As the docker CLI: DOCKER_CERT_PATH holds ca.pem, cert.pem and key.pem.
    if params.get(name):
        return params[name]
    cert_dir = os.environ.get("DOCKER_CERT_PATH")
    if cert_dir and os.path.exists(os.path.join(cert_dir, filename)):
        return os.path.join(cert_dir, filename)
    return None


def _tls_config(params, cleanup):
    ca_path = _cert_path_default(params, "ca_path", "ca.pem")
    client_cert = _cert_path_default(params, "client_cert", "cert.pem")
    client_key = _cert_path_default(params, "client_key", "key.pem")
    if not (params["tls"] or params["validate_certs"]):
        return False
    if params.get("client_key_content"):
        # The SDK reads the key from a file at each connection: a private one, removed at exit.
        handle, client_key = tempfile.mkstemp(prefix="docker-key-", suffix=".pem")
        if cleanup is not None:
            cleanup(client_key)
        with os.fdopen(handle, "w") as key_file:
            key_file.write(params["client_key_content"].strip() + "\n")
    if bool(client_cert) != bool(client_key):
        raise DockerApiError("client_cert and client_key (or client_key_content) go together")
    try:
        return TLSConfig(
            client_cert=(client_cert, client_key) if client_cert and client_key else None,
            ca_cert=ca_path if params["validate_certs"] else None,
            verify=bool(params["validate_certs"]),
        )
    except DockerException as exc:  # a missing certificate file
        raise DockerApiError("TLS settings for %s: %s" % (params["docker_host"], exc))


def _tls_failure(exc):
    while exc is not None:
        if isinstance(exc, SSLError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def connect(params, cleanup=None):
    """A client (its ``api``: a docker.APIClient) for the connection options; DockerApiError when unreachable.

    With ``api_wait_timeout``, an API that does not answer yet (a host still booting) is tried
    again every second until then; a TLS failure is final at once. ``cleanup(path)`` registers the
    temporary files to remove when the module ends (AnsibleModule.add_cleanup_file).
    """
    tls_config = _tls_config(params, cleanup)
    deadline = time.monotonic() + max(0, params.get("api_wait_timeout") or 0)
    while True:
        # While waiting, no attempt may overrun the deadline by a whole api_timeout.
        left = deadline - time.monotonic()
        attempt_timeout = params["api_timeout"] if left <= 0 else max(1, min(params["api_timeout"], int(left) + 1))
        explicit = tls_config and (not tls_config.verify or tls_config.ca_cert)
        api_class = _ExplicitTLSClient if explicit else docker.APIClient
        try:
            client = _Client(
                api_class(
                    base_url=params["docker_host"],
                    version=params["api_version"],
                    timeout=attempt_timeout,
                    tls=tls_config,
                    use_ssh_client=params["use_ssh_client"],
                )
            )
            client.ping()
            client.api.timeout = params["api_timeout"]
            return client
        except Exception as exc:  # DockerException, and the requests/paramiko errors the SDK lets through
            tls_error = _tls_failure(exc)
            if tls_error is not None:
                raise DockerApiError(
                    "TLS connection to the Docker API at %s failed: %s" % (params["docker_host"], tls_error)
                )
            if time.monotonic() >= deadline:
                raise DockerApiError("cannot reach the Docker API at %s: %s" % (params["docker_host"], exc))
        time.sleep(1)


def inspect_container(client, name):
    """The container's inspect data, or None when there is no such container."""
    try:
        return client.api.inspect_container(name)
    except NotFound:
        return None


def container_name(attrs):
    return (attrs.get("Name") or "").lstrip("/")


def container_status(attrs):
    """created, running, paused, restarting, removing, exited or dead."""
    return (attrs.get("State") or {}).get("Status")


def has_healthcheck(attrs):
    """Whether the container has a health check (its own or its image's, not disabled)."""
    test = ((attrs.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    return bool(test) and test[0] != "NONE"


def health_status(attrs):
    """starting, healthy or unhealthy; None without a health check."""
    if not has_healthcheck(attrs):
        return None
    return ((attrs.get("State") or {}).get("Health") or {}).get("Status") or "starting"


def health_log(attrs, last=5):
    """The last health check runs, oldest first: start time, exit code and output."""
    entries = ((attrs.get("State") or {}).get("Health") or {}).get("Log") or []
    return [
        {
            "start": entry.get("Start"),
            "exit_code": entry.get("ExitCode"),
            "output": (entry.get("Output") or "").strip(),
        }
        for entry in entries[-last:]
    ]


def format_health_log(entries):
    return "; ".join("exit %s: %s" % (e["exit_code"], e["output"] or "(no output)") for e in entries) or "(empty)"


def container_logs_tail(client, container_id, lines=20):
    try:
        data = client.api.logs(container_id, stdout=True, stderr=True, tail=lines)
    except DockerException:
        return []
    return data.decode("utf-8", "replace").splitlines()


def container_ports(attrs):
    """Ports as [{container_port, protocol, host_ip, host_port}]: published ones with their host side."""
    running = (attrs.get("State") or {}).get("Running")
    # A running container reports its actual bindings; a stopped one only its configuration.
    bindings = ((attrs.get("NetworkSettings") or {}).get("Ports") if running else None) or {}
    if not running:
        bindings = dict((attrs.get("HostConfig") or {}).get("PortBindings") or {})
        for exposed in (attrs.get("Config") or {}).get("ExposedPorts") or {}:
            bindings.setdefault(exposed, None)
    ports = []
    for spec, hosts in bindings.items():
        number, dummy, protocol = spec.partition("/")
        for host in hosts or [None]:
            ports.append(
                {
                    "container_port": int(number),
                    "protocol": protocol or "tcp",
                    "host_ip": (host or {}).get("HostIp") or None,
                    "host_port": int(host["HostPort"]) if host and host.get("HostPort") else None,
                }
            )
    return sorted(ports, key=lambda p: (p["container_port"], p["protocol"], p["host_ip"] or "", p["host_port"] or 0))
