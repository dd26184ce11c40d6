#!/bin/busybox sh
# PID 1 of the guest (copied to /init). It mounts the kernel's filesystems, loads the virtio
# drivers, brings up the one network interface QEMU gives it, and runs boot.py, which serves the
# agent runtime. When that exits the guest powers off, and QEMU with it.
export PATH=/usr/bin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp

# The modules and their order were worked out by the build (dependencies first).
while read -r module; do
  insmod "/lib/modules/$module" || echo "guest: could not load $module"
done </etc/guest-modules

hostname sandbox
ip link set lo up
ip link set eth0 up
# QEMU's user network: the guest is 10.0.2.15; 10.0.2.100 is forwarded to the gateway. No
# default route, no DNS: nothing else is reachable (and QEMU runs with restrict=on besides).
ip addr add 10.0.2.15/24 dev eth0

/usr/bin/python3.11 -I -X utf8 /opt/guest/boot.py
echo "guest: the agent runtime exited with status $?"
poweroff -f
