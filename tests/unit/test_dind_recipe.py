"""The Docker-in-guest recipe as data: shapes the docker SDK and dockerd accept."""

from __future__ import annotations

import json

from docker.models.containers import _create_container_args

from wakegrid.lab import dind


def test_create_kwargs_are_accepted_by_the_docker_sdk():
    kwargs = dind.create_kwargs(image="img", name="lab-vm-docker", network="lab-lan", data_volume="lab-vm-docker-data")
    # what containers.create() does with them first; raises TypeError on a kwarg it does not take
    args = _create_container_args({**kwargs, "version": "1.41"})
    host = args["host_config"]
    assert not host.get("Privileged")
    assert sorted(host["CapAdd"]) == ["NET_ADMIN", "SYS_ADMIN"]
    assert "seccomp=unconfined" in host["SecurityOpt"]
    assert host["CgroupnsMode"] == "host"
    assert "/sys/fs/cgroup:/sys/fs/cgroup:rw" in host["Binds"]
    assert "lab-vm-docker-data:/var/lib/docker:rw" in host["Binds"]
    assert args["stop_signal"] == "SIGRTMIN+3"


def test_extra_caps_are_added_once():
    kwargs = dind.create_kwargs(
        image="i", name="n", network="net", data_volume="v", extra_caps=("NET_ADMIN", "SYS_PTRACE")
    )
    assert kwargs["cap_add"] == ["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"]


def test_daemon_json_listens_on_tcp_without_the_tls_nag_and_nests_cgroups():
    config = json.loads(dind.guest_files(api_port=2376)[dind.DAEMON_JSON_PATH])
    assert "tcp://0.0.0.0:2376" in config["hosts"]
    assert config["tls"] is False
    assert config["exec-opts"] == ["native.cgroupdriver=systemd"]
    assert config["storage-driver"] == "overlay2"


def test_dropin_leaves_the_sockets_to_daemon_json():
    # dockerd exits with "directives are specified both as a flag and in the configuration file"
    dropin = dind.guest_files()[dind.DOCKER_DROPIN_PATH]
    exec_start = [line for line in dropin.splitlines() if line.startswith("ExecStart=")]
    assert exec_start[0] == "ExecStart="
    assert "-H" not in exec_start[1] and "fd://" not in exec_start[1]


def test_command_line_matches_daemon_json():
    command = dind.dockerd_command(api_port=2376)
    assert command[0] == "/usr/sbin/dockerd"
    assert "tcp://0.0.0.0:2376" in command and "--tls=false" in command
    assert "--storage-driver=overlay2" in command
