#!/bin/sh
# Runs inside the debootstrapped root (chroot) once, before the rootfs is
# tarred and imported: turns a plain Debian into a container-friendly lab host.
set -eu

# Units that make no sense in a container (no consoles, no udev, no kernel
# modules) would fail or hang the boot; mask them.
for unit in getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service \
    systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
    systemd-remount-fs.service systemd-firstboot.service dev-hugepages.mount systemd-sysusers.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
    ln -sf /dev/null "/etc/systemd/system/$unit"
done

# Docker is installed everywhere (one image) but runs only on nodes whose fleet
# entry has a docker capability: the lab enables it per container.
for unit in docker.service docker.socket containerd.service; do
    find /etc/systemd/system -name "$unit" -type l -delete
done

# Every container gets its own SSH host keys at first boot, not the image's.
rm -f /etc/ssh/ssh_host_*
mkdir -p /etc/systemd/system/ssh.service.d
cat > /etc/systemd/system/ssh.service.d/wakegrid-lab.conf <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
UNIT
mkdir -p /etc/systemd/system/multi-user.target.wants
ln -sf /lib/systemd/system/ssh.service /etc/systemd/system/multi-user.target.wants/ssh.service
sed -i 's/^#\?UseDNS.*/UseDNS no/' /etc/ssh/sshd_config

# Keep the journal small and in memory: a dozen hosts share one machine.
mkdir -p /etc/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=8M\n' > /etc/systemd/journald.conf.d/wakegrid-lab.conf

# systemd creates a fresh machine-id per container at boot.
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id

mkdir -p /root/.ssh /opt/wakegrid-lab /etc/wakegrid-lab
chmod 700 /root/.ssh
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* /usr/share/locale/*
