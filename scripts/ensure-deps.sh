#!/usr/bin/env bash
# Installs what building heki-plugin needs on a fresh Debian machine: GLib's
# development files and pkg-config (Swift and make come with the machine).
# Does nothing when they are already there.
set -euo pipefail

missing=()
pkg-config --exists glib-2.0 2>/dev/null || missing+=(libglib2.0-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v cc >/dev/null || missing+=(gcc)
command -v c++ >/dev/null || missing+=(g++)
command -v nm >/dev/null || missing+=(binutils)
# `ensure-deps.sh bench` (make bench): valgrind for the instruction counts.
if [ "${1:-}" = bench ]; then
    command -v valgrind >/dev/null || missing+=(valgrind)
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "ensure-deps: installing ${missing[*]} (apt)" >&2
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
pkg-config --exists glib-2.0 || { echo "ensure-deps: glib-2.0 still not found by pkg-config" >&2; exit 1; }
