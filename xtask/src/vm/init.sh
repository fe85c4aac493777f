#!/bin/busybox sh
# /init of the memwatch VM initramfs (written by xtask/src/vm/initramfs.rs).
# Mounts what memwatch and its tests need, runs the test binaries in /tests on the probe
# rungs the kernel command line names for each (memwatch.plan=), optionally sends
# fixture files to the host over the second serial port, then powers off. Lines starting with "@@mw " are
# read by the harness; everything else is shown as console output.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root TMPDIR=/tmp

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs nodev /sys/kernel/tracing || echo "@@mw warn: no tracefs"
mount -t debugfs nodev /sys/kernel/debug 2>/dev/null
# cgroups laid out as on the project's host: v1 controllers by name, v2 in unified/.
# A kernel without the v1 memory controller (6.12: CONFIG_MEMCG_V1 is off) gets the
# layout of a v2-only machine instead: v2 at /sys/fs/cgroup, memory enabled below it.
if mount -t tmpfs cgroup /sys/fs/cgroup; then
    mkdir -p /sys/fs/cgroup/memory /sys/fs/cgroup/unified
    if mount -t cgroup -o memory memory /sys/fs/cgroup/memory 2>/dev/null; then
        mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified || echo "@@mw warn: no cgroup2"
    else
        umount /sys/fs/cgroup
        if mount -t cgroup2 cgroup2 /sys/fs/cgroup; then
            echo +memory > /sys/fs/cgroup/cgroup.subtree_control ||
                echo "@@mw warn: no memory controller in cgroup v2"
        else
            echo "@@mw warn: neither a cgroup v1 memory hierarchy nor cgroup2"
        fi
    fi
fi
ip link set lo up || ifconfig lo 127.0.0.1 up

PLAN=
TESTS=1
FIXTURES=0
TIMEOUT=600
DISK=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        memwatch.plan=*) PLAN=$(echo "${arg#*=}" | tr , ' ') ;;
        memwatch.tests=*) TESTS=${arg#*=} ;;
        memwatch.fixtures=*) FIXTURES=${arg#*=} ;;
        memwatch.timeout=*) TIMEOUT=${arg#*=} ;;
        memwatch.disk=*) DISK=${arg#*=} ;;
    esac
done

# The scratch disk: ext4 on a virtio disk, for the tests' temporary files (the
# initramfs and /tmp are RAM file systems: no writeback, and reclaim can't drop their
# pages). The modules come decompressed, in load order, for this kernel only.
SCRATCH=none
if [ -n "$DISK" ]; then
    mods=/lib/modules/$(uname -r)
    for m in $(cat "$mods/modules.load" 2>/dev/null); do
        insmod "$mods/$m.ko" || echo "@@mw warn: insmod $m failed"
    done
    i=0
    while [ ! -b "/dev/$DISK" ] && [ $i -lt 1200 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    mkdir -p /scratch
    if mount -t ext4 -o noinit_itable "/dev/$DISK" /scratch; then
        export TMPDIR=/scratch
        SCRATCH="/dev/$DISK ext4 on /scratch"
    else
        echo "@@mw warn: could not mount /dev/$DISK on /scratch; temporary files go to /tmp"
    fi
fi

echo "@@mw boot $(uname -r) $(nproc) cpus $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo), scratch: $SCRATCH"

# Fixtures: "@@file <path> <bytes>" then exactly that many bytes, on ttyS1 in raw mode.
if [ "$FIXTURES" = 1 ]; then
    out=/dev/ttyS1
    stty -F $out raw -echo
    send() { # send <fixture path> <source file>
        cp "$2" /tmp/fixture
        printf '@@file %s %s\n' "$1" "$(wc -c < /tmp/fixture)" > $out
        cat /tmp/fixture > $out
    }
    for f in meminfo vmstat zoneinfo; do
        send "$f" /proc/$f
    done
    # Each line of /fixture-events: an event path, then older names for the same event.
    while read -r names; do
        found=
        for ev in $names; do
            src=/sys/kernel/tracing/events/$ev/format
            if [ -f "$src" ]; then
                send "tracefs/$ev/format" "$src"
                found=$ev
                break
            fi
        done
        [ -n "$found" ] || printf '@@missing %s\n' "$names" > $out
    done < /fixture-events
    printf '@@done\n' > $out
    echo "@@mw fixtures sent"
fi

# Everything a test binary left running (an agent or workload orphaned when `timeout`
# stopped it) is killed before the next one starts, so its probes and memory are
# gone: every process but init (this shell), kernel threads (no command line), and
# the heartbeat with its sleep (field 4 of stat: the parent; a command name with a
# space shifts it, and such a process is no child of the heartbeat's anyway).
reap() {
    for d in /proc/[0-9]*; do
        p=${d#/proc/}
        [ "$p" = 1 ] || [ "$p" = $$ ] || [ "$p" = "$BEAT" ] || [ -z "$(cat "$d/cmdline" 2>/dev/null)" ] ||
            [ "$(cut -d' ' -f4 "$d/stat" 2>/dev/null)" = "$BEAT" ] ||
            kill -9 "$p" 2>/dev/null
    done
}

# The plan: "rung:binary+binary,rung:binary", rungs in the order to run them.
if [ "$TESTS" = 1 ]; then
    # A heartbeat, so the harness tells a slow test from a stuck guest.
    (while true; do sleep 30; echo "@@mw alive"; done) &
    BEAT=$!
    for step in $PLAN; do
        rung=${step%%:*}
        for name in $(echo "${step#*:}" | tr + ' '); do
            t=/tests/$name
            echo "@@mw begin $rung $name"
            if [ -x "$t" ]; then
                MEMWATCH_TEST_PROBE_MODE=$rung MEMWATCH_BIN=/bin/memwatch RUST_BACKTRACE=1 \
                    timeout "$TIMEOUT" "$t" --test-threads=1 --show-output 2>&1
                rc=$?
            else
                echo "@@mw warn: no $t in the initramfs"
                rc=127
            fi
            echo "@@mw end $rung $name $rc"
            reap
        done
    done
    kill "$BEAT"
fi

echo "@@mw done"
sync
[ "$SCRATCH" = none ] || umount /scratch
poweroff -f
