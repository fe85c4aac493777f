#!/bin/busybox sh
# /init of the memwatch VM initramfs (written by xtask/src/vm/initramfs.rs).
# Mounts what memwatch and its tests need, runs every test binary in /tests once per
# probe rung named on the kernel command line, optionally sends fixture files to the
# host over the second serial port, then powers off. Lines starting with "@@mw " are
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
if mount -t tmpfs cgroup /sys/fs/cgroup; then
    mkdir -p /sys/fs/cgroup/memory /sys/fs/cgroup/unified
    mount -t cgroup -o memory memory /sys/fs/cgroup/memory 2>/dev/null ||
        { rmdir /sys/fs/cgroup/memory; echo "@@mw warn: no cgroup v1 memory controller"; }
    mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified || echo "@@mw warn: no cgroup2"
fi
ip link set lo up || ifconfig lo 127.0.0.1 up

RUNGS=
TESTS=1
FIXTURES=0
TIMEOUT=600
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        memwatch.rungs=*) RUNGS=$(echo "${arg#*=}" | tr , ' ') ;;
        memwatch.tests=*) TESTS=${arg#*=} ;;
        memwatch.fixtures=*) FIXTURES=${arg#*=} ;;
        memwatch.timeout=*) TIMEOUT=${arg#*=} ;;
    esac
done

echo "@@mw boot $(uname -r) $(nproc) cpus $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"

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

if [ "$TESTS" = 1 ]; then
    for rung in $RUNGS; do
        for t in /tests/*; do
            name=${t##*/}
            echo "@@mw begin $rung $name"
            MEMWATCH_TEST_PROBE_MODE=$rung MEMWATCH_BIN=/bin/memwatch RUST_BACKTRACE=1 \
                timeout "$TIMEOUT" "$t" --test-threads=1 --show-output 2>&1
            echo "@@mw end $rung $name $?"
        done
    done
fi

echo "@@mw done"
sync
poweroff -f
