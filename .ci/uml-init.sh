#!/bin/bash
# PID 1 of the User-Mode Linux guest that .ci/vcan boots. The host's file system is our root
# (hostfs), so the project and its virtualenv are at the same paths as on the host. We mount what
# a program expects, load the CAN modules, run `.ci/vcan` again in here (it sets up vcan0/vcan1
# and runs pytest, or with --bench the SocketCAN benchmark), write its exit code to $vcan_job/rc
# for the host, and power off. $vcan_job comes from the kernel command line; it holds `args`
# (NUL-separated arguments for .ci/vcan) and `env` (variables passed through from the host).
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
job=${vcan_job:?vcan_job is not set}
rc=1
: >"$job/booted" # for the host: the guest ran userspace (see .ci/vcan)

power_off() {
  echo "$rc" >"$job/rc"
  sync
  echo 0 >/proc/sys/kernel/printk # not even "System halted"
  halt -f >/dev/null 2>&1
  echo o >/proc/sysrq-trigger # if halt did not work; exiting PID 1 would panic the kernel
  sleep 10
}
trap power_off EXIT

mount -t proc proc /proc
if [[ -n ${vcan_probe:-} ]]; then # .ci/vcan only asks whether userspace starts
  rc=0
  exit
fi
mount -t sysfs sysfs /sys
stty -onlcr # no \r\n line ends in the host's log
# The kernel mounted devtmpfs on /dev. /run is a tmpfs so that nothing written there reaches
# the host; HOME and TMPDIR live in it (pytest's tmp_path, caches of tools).
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm # POSIX semaphores (multiprocessing) live here
mount -t tmpfs tmpfs /run
mkdir -p /run/home /run/tmp
export HOME=/run/home TMPDIR=/run/tmp VCAN_IN_UML=1
ip link set lo up

modules=/usr/lib/uml/modules/$(uname -r)/kernel
for module in drivers/net/can/dev/can-dev net/can/can net/can/can-raw net/can/can-bcm \
  drivers/net/can/vcan; do
  if ! insmod "$modules/$module.ko"; then
    echo "vcan: cannot load $modules/$module.ko" >&2
    exit
  fi
done
# Optional: the kernel's J1939 stack (tests/diagnostics/test_vcan.py compares with it, or skips).
# This kernel has no CAN_ISOTP module; diagnostics use python-can-isotp over raw sockets.
insmod "$modules/net/can/j1939/can-j1939.ko" 2>/dev/null || true

cd "$(dirname "$0")/.." || exit
# shellcheck source=/dev/null
source "$job/env"
mapfile -d '' args <"$job/args"
# Through a pipe, not straight to the console: pytest then writes plain lines, not a terminal's
# in-place progress updates, to the host's log.
export PYTHONUNBUFFERED=1
bash .ci/vcan "${args[@]}" 2>&1 | cat
rc=${PIPESTATUS[0]}
