"""plugins/module_utils/proxmox.py: an LXC migration task's log read as phases and percentages (pure).

The sample logs are written the way pve-container src/PVE/LXC/Migrate.pm (prepare, phase1,
final_cleanup), pve-guest-common src/PVE/AbstractMigrate.pm (``migrate``: time stamps, ``ERROR:``,
``migration aborted (duration …): reason``) and pve-storage src/PVE/Storage.pm (``storage_migrate``:
dd's ``status=progress`` lines, ``successfully imported``) write them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_collection import module_utils  # the helper next to this file, whatever the rootdir or import mode

px = module_utils("proxmox")

GIB = 1 << 30

RESTART_LOG = """\
2026-12-06 10:00:00 shutdown CT 201
2026-12-06 10:00:02 starting migration of CT 201 to node 'pve2' (10.231.1.22)
2026-12-06 10:00:02 found local volume 'local-lvm:vm-201-disk-0' (in current VM config)
2026-12-06 10:00:02 found local volume 'local-lvm:vm-201-disk-1' (in current VM config)
2026-12-06 10:00:02 using a bandwidth limit of 104857600 bytes per second for transferring 'local-lvm:vm-201-disk-0'
2026-12-06 10:00:02   Logical volume "vm-201-disk-0" created.
2026-12-06 10:00:05 314572800 bytes (315 MB, 300 MiB) copied, 3 s, 105 MB/s
2026-12-06 10:00:08 629145600 bytes (629 MB, 600 MiB) copied, 6 s, 105 MB/s
2026-12-06 10:00:13 16384+0 records in
2026-12-06 10:00:13 16384+0 records out
2026-12-06 10:00:13 1073741824 bytes (1.1 GB, 1.0 GiB) copied, 10.24 s, 105 MB/s
2026-12-06 10:00:13 0+32768 records in
2026-12-06 10:00:13 0+32768 records out
2026-12-06 10:00:13 1073741824 bytes (1.1 GB, 1.0 GiB) copied, 10.24 s, 105 MB/s
2026-12-06 10:00:13 successfully imported 'fast:vm-201-disk-0'
2026-12-06 10:00:13 volume 'local-lvm:vm-201-disk-0' is 'fast:vm-201-disk-0' on the target
2026-12-06 10:00:16 3221225472 bytes (3.2 GB, 3.0 GiB) copied, 3 s, 1.1 GB/s
2026-12-06 10:00:17 successfully imported 'fast:vm-201-disk-1'
2026-12-06 10:00:17 volume 'local-lvm:vm-201-disk-1' is 'fast:vm-201-disk-1' on the target
  Logical volume "vm-201-disk-0" successfully removed.
2026-12-06 10:00:17 start final cleanup
2026-12-06 10:00:17 start container on target node
2026-12-06 10:00:17 # /usr/bin/ssh -e none -o 'BatchMode=yes' -o 'HostKeyAlias=pve2' root@10.231.1.22 pct start 201
2026-12-06 10:00:19 migration finished successfully (duration 00:00:19)
TASK OK
""".splitlines()

SIZES = {"local-lvm:vm-201-disk-0": GIB, "local-lvm:vm-201-disk-1": 3 * GIB}


def test_a_restart_migration_goes_through_its_phases_in_order_with_a_rising_percentage():
    log = px.MigrationLog(SIZES)
    events = log.feed(RESTART_LOG)
    phases = []
    for event in events:
        if not phases or phases[-1] != event["phase"]:
            phases.append(event["phase"])
    assert phases == ["shutdown", "copy", "start", "done"]
    percents = [event["percent"] for event in events]
    assert percents == sorted(percents), "the overall percentage never goes down"
    assert percents[-1] == 100
    assert all(p < 100 for p in percents[:-1]), "100 only once the migration finished"
    assert events[0]["pve_time"] == "2026-12-06 10:00:00"


def test_the_copy_percentage_follows_the_bytes_copied_over_all_volumes():
    log = px.MigrationLog(SIZES)
    by_message = {event["message"]: event for event in log.feed(RESTART_LOG)}
    # 300 MiB of 4 GiB in all
    assert by_message["314572800 bytes (315 MB, 300 MiB) copied, 3 s, 105 MB/s"]["copy_percent"] == 7
    assert by_message["629145600 bytes (629 MB, 600 MiB) copied, 6 s, 105 MB/s"]["copy_percent"] == 14
    assert by_message["volume 'local-lvm:vm-201-disk-0' is 'fast:vm-201-disk-0' on the target"]["copy_percent"] == 25
    # the second volume: the first one's GiB plus 3 GiB of it
    assert by_message["3221225472 bytes (3.2 GB, 3.0 GiB) copied, 3 s, 1.1 GB/s"]["copy_percent"] == 100
    assert log.target_volumes == {
        "local-lvm:vm-201-disk-0": "fast:vm-201-disk-0",
        "local-lvm:vm-201-disk-1": "fast:vm-201-disk-1",
    }


def test_without_sizes_a_volume_counts_when_it_is_done():
    log = px.MigrationLog()
    events = log.feed(RESTART_LOG)
    copies = [e["copy_percent"] for e in events if e["phase"] == "copy"]
    assert copies[0] == 0 and copies[-1] == 100


def test_lines_are_read_as_they_come_in_pieces():
    whole = px.MigrationLog(SIZES).feed(RESTART_LOG)
    pieces = px.MigrationLog(SIZES)
    events = []
    for start in range(0, len(RESTART_LOG), 4):
        events += pieces.feed(RESTART_LOG[start : start + 4])
    assert events == whole


BIND_MOUNT_LOG = """\
2026-12-06 10:05:00 ERROR: migration aborted (duration 00:00:00): cannot migrate local bind mount point 'mp0'
TASK ERROR: migration aborted
""".splitlines()

TARGET_OFFLINE_LOG = """\
2026-12-06 10:06:00 shutdown CT 204
2026-12-06 10:06:01 starting migration of CT 204 to node 'pve2' (10.231.1.22)
2026-12-06 10:06:01 found local volume 'local-lvm:vm-204-disk-0' (in current VM config)
2026-12-06 10:06:04 402653184 bytes (403 MB, 384 MiB) copied, 3 s, 134 MB/s
2026-12-06 10:06:05 client_loop: send disconnect: Broken pipe
2026-12-06 10:06:05 ERROR: storage migration for 'local-lvm:vm-204-disk-0' to storage 'local-lvm' failed - command \
'set -o pipefail && pvesm export local-lvm:vm-204-disk-0 raw+size - -with-snapshots 0 | /usr/bin/ssh -e none -o \
'BatchMode=yes' -o 'HostKeyAlias=pve2' root@10.231.1.22 -- pvesm import local-lvm:vm-204-disk-0 raw+size - \
-with-snapshots 0 -allow-rename 1' failed: exit code 255
2026-12-06 10:06:05 aborting phase 1 - cleanup resources
2026-12-06 10:06:05 ERROR: found stale volume copy 'local-lvm:vm-204-disk-0' on node 'pve2'
2026-12-06 10:06:05 start final cleanup
2026-12-06 10:06:05 start container on source node
2026-12-06 10:06:06 ERROR: migration aborted (duration 00:00:06): storage migration for 'local-lvm:vm-204-disk-0' to \
storage 'local-lvm' failed - command 'set -o pipefail && …' failed: exit code 255
TASK ERROR: migration aborted
""".splitlines()


def test_a_refused_migration_fails_with_pves_own_reason():
    events = px.MigrationLog().feed(BIND_MOUNT_LOG)
    assert events[-1]["phase"] == "failed"
    assert px.migration_error(BIND_MOUNT_LOG) == "cannot migrate local bind mount point 'mp0'"


def test_a_copy_broken_by_the_target_going_away_fails_and_says_the_guest_went_back():
    log = px.MigrationLog({"local-lvm:vm-204-disk-0": GIB})
    events = log.feed(TARGET_OFFLINE_LOG)
    assert events[-1]["phase"] == "failed"
    assert any(event.get("rollback") for event in events), "start container on source node"
    reason = px.migration_error(TARGET_OFFLINE_LOG)
    assert reason.startswith("storage migration for 'local-lvm:vm-204-disk-0' to storage 'local-lvm' failed")
    percents = [event["percent"] for event in events]
    assert percents == sorted(percents) and percents[-1] < 100


def test_a_task_error_alone_is_the_reason_when_nothing_else_says_more():
    assert px.migration_error(["TASK ERROR: can't lock file '/run/lock/lxc/pve-config-201.lock' - got timeout"]) == (
        "can't lock file '/run/lock/lxc/pve-config-201.lock' - got timeout"
    )
    assert px.migration_error([]) is None


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8G", 8 << 30),
        ("512M", 512 << 20),
        ("1536K", 1536 << 10),
        ("4096", 4096),
        ("0.5G", 512 << 20),
        ("", None),
        ("8X", None),
        (None, None),
    ],
)
def test_pve_sizes(text, size):
    assert px.parse_size(text) == size


def test_the_volumes_of_a_ct_configuration():
    config = {
        "hostname": "jellyfin",
        "rootfs": "local-lvm:vm-201-disk-0,size=8G",
        "mp0": "/srv/media,mp=/media",
        "mp1": "local-lvm:vm-201-disk-1,mp=/data,size=512M",
        "mp2": "/srv/shared,mp=/shared,shared=1",
        "mp3": "/dev/sdb1,mp=/raw",
        "unused0": "local-lvm:vm-201-disk-2",
        "net0": "name=eth0,bridge=vmbr0",
    }
    volumes = {v["key"]: v for v in px.ct_volumes(config)}
    assert list(volumes) == ["rootfs", "mp0", "mp1", "mp2", "mp3", "unused0"]
    assert volumes["rootfs"] == {
        "key": "rootfs",
        "volume": "local-lvm:vm-201-disk-0",
        "size": 8 << 30,
        "storage": "local-lvm",
        "type": "volume",
        "shared": False,
    }
    assert (volumes["mp0"]["type"], volumes["mp0"]["storage"], volumes["mp0"]["shared"]) == ("bind", None, False)
    assert volumes["mp2"]["shared"] is True
    assert volumes["mp3"]["type"] == "device"
    assert volumes["unused0"]["size"] is None


def test_target_storage_maps_like_pves_map_id():
    assert px.mapped_storage("local-lvm", None) == "local-lvm"
    assert px.mapped_storage("local-lvm", "fast") == "fast"
    assert px.mapped_storage("local-lvm", {"local-lvm": "fast", "*": "slow"}) == "fast"
    assert px.mapped_storage("other", {"local-lvm": "fast", "*": "slow"}) == "slow"
    assert px.mapped_storage("other", {"local-lvm": "fast"}) == "other"
    assert px.storage_map({"local-lvm": "fast", "*": "slow"}) == "*:slow,local-lvm:fast"
    assert px.storage_map("fast") == "fast"
    assert px.storage_map(None) is None


def test_other_lines_are_passed_on_without_moving_the_phase_and_garbage_does_not_break_the_reader():
    log = px.MigrationLog()
    assert log.feed(["", "TASK OK"]) == []
    events = log.feed(['  Logical volume "x" successfully removed.', "bytes copied nonsense", "\x00\xff"])
    assert [e["message"] for e in events] == [
        'Logical volume "x" successfully removed.',
        "bytes copied nonsense",
        "\x00\xff",
    ]
    assert {(e["phase"], e["percent"]) for e in events} == {("prepare", 0)}
