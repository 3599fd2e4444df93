#!/usr/bin/env bash
# Makes qemu:///system answer on this machine, for the libvirt tests
# (qemu-integration/libvirt): Debian 12's libvirt (9.0) from apt, the
# qemu.conf settings a root libvirtd needs where there is no systemd and no
# cgroup delegation, then virtlogd and libvirtd started as daemons.
# Idempotent: a second run finds everything in place and changes nothing.
#
# qemu.conf is the operator's file: a setting that is missing is appended (in
# one marked block, and said on stderr); a setting present with another value
# is never rewritten: the script stops and names it.
set -euo pipefail

CONF=${HEKI_LIBVIRT_QEMU_CONF:-/etc/libvirt/qemu.conf}
URI=qemu:///system
say() { echo "ensure-libvirt: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (libvirtd runs QEMU as root here)"

# --- packages ---------------------------------------------------------------
missing=()
command -v libvirtd >/dev/null || missing+=(libvirt-daemon-system)
command -v virsh >/dev/null || missing+=(libvirt-clients)
# -I: not the current directory (qemu-integration/libvirt/ would pass for the module).
/usr/bin/python3 -I -c 'import libvirt, libvirt_qemu' 2>/dev/null || missing+=(python3-libvirt)
installed_now=no
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt, --no-install-recommends)"
    t0=$SECONDS
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
    installed_now=yes
    say "installed in $((SECONDS - t0)) s"
fi

# --- qemu.conf --------------------------------------------------------------
# key, then the value it must have (compared with blanks removed).
settings=(
    'user|"root"'
    'group|"root"'
    'dynamic_ownership|0'
    'cgroup_controllers|[ ]'
    'security_driver|"none"'
    'namespaces|[ ]'
)
[ -f "$CONF" ] || die "$CONF is missing: is libvirt-daemon-system installed?"
squeeze() { tr -d ' \t'; }
append=()
conflicts=()
for entry in "${settings[@]}"; do
    key=${entry%%|*}
    want=${entry#*|}
    # The last uncommented assignment wins in libvirt's parser.
    have=$(sed -n "s/^[[:space:]]*${key}[[:space:]]*=[[:space:]]*//p" "$CONF" | tail -1)
    if [ -z "$have" ]; then
        append+=("$key = $want")
    elif [ "$(printf %s "$have" | squeeze)" != "$(printf %s "$want" | squeeze)" ]; then
        conflicts+=("$key = $have (needed: $key = $want)")
    fi
done
if [ ${#conflicts[@]} -gt 0 ]; then
    for c in "${conflicts[@]}"; do say "$CONF already sets $c"; done
    die "not changing an existing setting of $CONF: edit it (then restart libvirtd) or run on a machine whose libvirt is free for this"
fi
changed=no
if [ ${#append[@]} -gt 0 ]; then
    {
        echo
        echo "# Added by heki-plugin's scripts/ensure-libvirt.sh: root QEMU without"
        echo "# cgroups, namespaces or a security driver (no systemd on this machine)."
        printf '%s\n' "${append[@]}"
    } >> "$CONF"
    for line in "${append[@]}"; do say "$CONF: added '$line'"; done
    changed=yes
fi

# --- daemons ----------------------------------------------------------------
# Ours (`-d`) or an init system's: a pid file naming a live process, or a
# socket that takes a connection (systemd's socket activation; a stale file
# left by a killed daemon refuses it).
running() {   # daemon, socket under /run/libvirt
    local pid
    pid=$(cat "/run/$1.pid" 2>/dev/null) || pid=
    if [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ]; then
        return 0
    fi
    [ -S "/run/libvirt/$2" ] && /usr/bin/python3 -I -c \
        'import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' \
        "/run/libvirt/$2" 2>/dev/null
}
if [ "$changed" = yes ] && running libvirtd libvirt-sock; then
    pid=$(cat /run/libvirtd.pid 2>/dev/null) || pid=
    if [ "$installed_now" = yes ] && [ -n "$pid" ]; then
        # Started by this run's package install, before qemu.conf was set.
        say "restarting libvirtd (pid $pid, started by the install with the old qemu.conf)"
        kill "$pid"
        for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    else
        die "libvirtd runs with the qemu.conf before these changes: restart it, then run this again"
    fi
fi
if ! running virtlogd virtlogd-sock; then
    say "starting virtlogd -d"
    virtlogd -d
fi
if ! running libvirtd libvirt-sock; then
    say "starting libvirtd -d"
    libvirtd -d
fi

# --- ready ------------------------------------------------------------------
# Not `virsh version`: it also asks for the hypervisor's version, which fails
# while no qemu-system-x86_64 is on PATH (our QEMU is named per domain).
for _ in $(seq 150); do
    if out=$(virsh -c "$URI" list --all --name 2>&1); then
        say "$URI answers ($(libvirtd --version))"
        exit 0
    fi
    sleep 0.2
done
die "virsh -c $URI list does not answer after 30 s: $out"
