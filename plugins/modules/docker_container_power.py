#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: docker_container_power
short_description: Start, stop or restart an existing Docker container and wait until it is healthy
version_added: 0.1.0
description:
  - Brings the power state of one existing container to O(state) through a Docker Engine API,
    local or remote (O(docker_host)).
  - After starting or restarting, waits until the container runs and, when it has a health check
    (its own or its image's), until Docker reports it V(healthy), at most O(timeout) seconds. A
    container that turns V(unhealthy) or exits meanwhile fails the task with the last health
    check outputs or log lines, so that the next task never talks to a half-started service.
  - Reports a change only when the container's state really changed. A running container is left
    alone by O(state=started), but is still checked for health.
  - Only powers containers; creating, updating or removing them is the job of
    M(community.docker.docker_container) or of a compose stack.
author:
  - wakegrid engineers (@wakegrid)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - wakegrid.fleet.docker
attributes:
  check_mode:
    support: full
    details:
      - Reads the container's state and reports whether it would change; starts, stops and waits
        for nothing.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
options:
  name:
    description:
      - Name or ID of the container.
    type: str
    required: true
  state:
    description:
      - V(started) starts a created or exited container, unpauses a paused one, and waits until it
        is up (see O(wait_healthy)).
      - V(stopped) stops a running, paused or restarting container (SIGTERM or the container's stop
        signal, then SIGKILL after O(stop_timeout)).
      - V(restarted) always restarts the container (starts it if it is not running), then waits
        like V(started); it always reports a change.
    type: str
    choices: [started, stopped, restarted]
    default: started
  stop_timeout:
    description:
      - Seconds the container gets to stop after its stop signal before Docker kills it.
      - Defaults to the container's own C(StopTimeout), else Docker's 10 seconds. The fleet's
        playbooks pass the node's C(timeouts.stop) (30 seconds by default for a container).
      - It is added to the API time limit O(api_timeout) of the request that stops the container.
    type: int
  wait_healthy:
    description:
      - After starting, wait until a container with a health check is V(healthy), and fail when it
        is V(unhealthy). With V(false), only wait until it runs.
      - A container without a health check is up once it has kept running for a second, so that one
        that crashes at start fails the task instead of passing as started.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for the container to be up (running, and healthy with O(wait_healthy)).
    type: int
    default: 120
notes:
  - Docker runs health checks at the interval the container defines; a check at
    C(--health-interval=30s) makes a start take at least that long with O(wait_healthy).
seealso:
  - module: wakegrid.fleet.docker_container_info
  - module: community.docker.docker_container
  - name: Power modules of wakegrid.fleet
    description: How container power fits the fleet's hosting tree.
    link: https://github.com/wakegrid/wakegrid/blob/main/docs/power-modules.md
"""

EXAMPLES = r"""
- name: Start the sandbox on vm-docker and wait until its health check passes
  wakegrid.fleet.docker_container_power:
    docker_host: tcp://192.168.1.21:2376
    validate_certs: true
    ca_path: /etc/wakegrid/docker-ca.pem
    name: sandbox
    state: started
    timeout: 180

- name: Stop it, giving it 30 seconds to shut down cleanly
  wakegrid.fleet.docker_container_power:
    docker_host: tcp://192.168.1.21:2376
    validate_certs: true
    ca_path: /etc/wakegrid/docker-ca.pem
    name: sandbox
    state: stopped
    stop_timeout: 30

- name: Restart a container on the local Docker, without waiting for its health check
  wakegrid.fleet.docker_container_power:
    name: jellyfin
    state: restarted
    wait_healthy: false
  register: restarted

- name: Show its state
  ansible.builtin.debug:
    msg: "{{ restarted.container.name }}: {{ restarted.container.status_before }} -> {{ restarted.container.status_after }}"
"""

RETURN = r"""
container:
  description: The container, before and after.
  returned: when the container exists
  type: dict
  contains:
    id:
      description: Full container ID.
      type: str
      sample: 6f1b3a0c2d9e...
    name:
      description: Container name.
      type: str
      sample: sandbox
    image:
      description: The image the container was created from, as given then.
      type: str
      sample: nginx:1.27
    status_before:
      description: Docker status before the module ran (V(created), V(running), V(paused),
        V(restarting), V(exited), V(dead)).
      type: str
      sample: exited
    status_after:
      description: Docker status when the module finished (unchanged in check mode).
      type: str
      sample: running
    health:
      description: V(starting), V(healthy) or V(unhealthy) when the module finished; V(null) without a health check.
      type: str
      sample: healthy
    health_log:
      description: The last health check runs, oldest first; empty without a health check.
      type: list
      elements: dict
      sample: [{"start": "2026-01-01T10:00:00.1Z", "exit_code": 0, "output": "ok"}]
    exit_code:
      description: Exit code of the last run, 0 while running.
      type: int
      sample: 0
elapsed:
  description: Seconds spent waiting for the container to be up, V(null) when nothing was waited for.
  returned: always
  type: float
  sample: 2.41
log_tail:
  description: The container's last log lines, when it exited while the module waited for it.
  returned: on failure, when the container exited
  type: list
  elements: str
  sample: ["error: cannot open /data/config.yml"]
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wakegrid.fleet.plugins.module_utils.docker_api import (
    DOCKER_MUTUALLY_EXCLUSIVE,
    DockerApiError,
    check_sdk,
    connect,
    container_logs_tail,
    container_name,
    container_status,
    docker_argument_spec,
    format_health_log,
    health_log,
    health_status,
    inspect_container,
    run_or_fail,
)

MIN_UPTIME = 1.0  # seconds a container without a health check must keep running to count as up
POLL_INTERVAL = 0.25
RUNNING_STATES = ("running", "paused", "restarting")


def describe(attrs, status_before):
    state = attrs.get("State") or {}
    return {
        "id": attrs.get("Id"),
        "name": container_name(attrs),
        "image": (attrs.get("Config") or {}).get("Image"),
        "status_before": status_before,
        "status_after": container_status(attrs),
        "health": health_status(attrs),
        "health_log": health_log(attrs),
        "exit_code": state.get("ExitCode"),
    }


def plan(state, status):
    """The API call that brings a container in ``status`` to ``state``, or None when it is there."""
    if state == "restarted":
        return "restart"
    if state == "started":
        if status == "running" or status == "restarting":  # restarting: Docker is already on it
            return None
        return "unpause" if status == "paused" else "start"
    return "stop" if status in RUNNING_STATES else None


def wait_until_up(client, attrs, status_before, timeout, wait_healthy):
    """Poll until the container runs (and is healthy); DockerApiError when it cannot get there."""
    started = time.monotonic()
    deadline = started + timeout
    running_since = None  # (local time, Docker's StartedAt) when first seen running without a health verdict
    while True:
        status = container_status(attrs)
        health = health_status(attrs) if wait_healthy else None
        if status == "running" and health == "healthy":
            return attrs, time.monotonic() - started
        if status == "running" and health is None:
            # Without a health check, "up" means it keeps running: a container that crashes at
            # start is briefly "running" too. Local time, since the Docker host's clock may differ.
            run = (attrs.get("State") or {}).get("StartedAt")
            if running_since is None or running_since[1] != run:
                running_since = (time.monotonic(), run)
            elif time.monotonic() - running_since[0] >= MIN_UPTIME:
                return attrs, time.monotonic() - started
        name = container_name(attrs)
        if health == "unhealthy":
            entries = health_log(attrs)
            raise DockerApiError(
                "container %s is unhealthy; last health checks: %s" % (name, format_health_log(entries)),
                container=describe(attrs, status_before),
                elapsed=round(time.monotonic() - started, 3),
            )
        if status in ("exited", "dead", "created"):
            state = attrs.get("State") or {}
            tail = container_logs_tail(client, attrs["Id"])
            raise DockerApiError(
                "container %s %s (exit code %s%s) while waiting for it to be up; last log lines: %s"
                % (name, status, state.get("ExitCode"),
                   ", error: %s" % state["Error"] if state.get("Error") else "",
                   " | ".join(tail[-5:]) or "(none)"),
                container=describe(attrs, status_before),
                elapsed=round(time.monotonic() - started, 3),
                log_tail=tail,
            )
        if time.monotonic() >= deadline:
            what = "healthy (health: %s; last health checks: %s)" % (health, format_health_log(health_log(attrs))) \
                if health else "running (status: %s)" % status
            raise DockerApiError(
                "container %s is not %s after %d s" % (name, what, timeout),
                container=describe(attrs, status_before),
                elapsed=round(time.monotonic() - started, 3),
            )
        time.sleep(POLL_INTERVAL)
        attrs = inspect_container(client, attrs["Id"])
        if attrs is None:
            raise DockerApiError("container %s was removed while waiting for it to be up" % name)


def run(module):
    params = module.params
    client = connect(params)
    attrs = inspect_container(client, params["name"])
    if attrs is None:
        raise DockerApiError("no container named %s on %s" % (params["name"], params["docker_host"]))
    status_before = container_status(attrs)
    action = plan(params["state"], status_before)
    result = {"changed": action is not None, "elapsed": None}

    if module.check_mode:
        result["container"] = describe(attrs, status_before)
        return result

    container_id = attrs["Id"]
    if action == "start":
        client.api.start(container_id)
    elif action == "unpause":
        client.api.unpause(container_id)
    elif action == "restart":
        client.api.restart(container_id, timeout=params["stop_timeout"])
    elif action == "stop":
        if status_before == "paused":
            client.api.unpause(container_id)  # a frozen process cannot handle its stop signal
        client.api.stop(container_id, timeout=params["stop_timeout"])
    attrs = inspect_container(client, container_id) or attrs

    if params["state"] in ("started", "restarted"):
        attrs, elapsed = wait_until_up(client, attrs, status_before, params["timeout"], params["wait_healthy"])
        result["elapsed"] = round(elapsed, 3)
    result["container"] = describe(attrs, status_before)
    return result


def main():
    argument_spec = docker_argument_spec()
    argument_spec.update(
        name=dict(type="str", required=True),
        state=dict(type="str", choices=["started", "stopped", "restarted"], default="started"),
        stop_timeout=dict(type="int"),
        wait_healthy=dict(type="bool", default=True),
        timeout=dict(type="int", default=120),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=DOCKER_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    check_sdk(module)
    result = run_or_fail(module, lambda: run(module))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
