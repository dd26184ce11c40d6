#!/bin/busybox sh
# PID 1 of the probe image: proves the guest reached userspace, then powers off at once.
/bin/busybox echo AGENT-CONSOLE-PROBE-USERSPACE
/bin/busybox poweroff -f
