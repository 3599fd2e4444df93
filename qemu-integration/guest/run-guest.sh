#!/bin/sh
# Boots heki-guest under KVM in QEMU's microvm and returns QEMU's exit status
# (33 pass, 35 fail, 37 no Heki kernel; 1 or other = QEMU itself failed,
# 124 = timeout).
#
#   run-guest.sh [guest tokens...]      e.g.  run-guest.sh scenario=pin-deny cpus=2
#
# Environment:
#   QEMU        the QEMU binary            (default: qemu-system-x86_64)
#   EMU         libheki-kvm-emu.so to LD_PRELOAD into QEMU (default: none)
#   ELF         the guest                  (default: build/heki-guest.elf beside this script)
#   SMP         -smp N                     (default: the cpus=N token, else 1)
#   CPU         -cpu model             (default: host,-arch-capabilities)
#   QEMU_EXTRA  more QEMU arguments (e.g. "-plugin ..." or "-d guest_errors")
#   TIMEOUT     seconds before the run is killed (default: 120)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
QEMU=${QEMU:-qemu-system-x86_64}
ELF=${ELF:-$here/build/heki-guest.elf}
TIMEOUT=${TIMEOUT:-120}
append="$*"
smp=1
for t in "$@"; do
    case $t in cpus=*) smp=${t#cpus=} ;; esac
done
SMP=${SMP:-$smp}
set -- timeout "$TIMEOUT" "$QEMU" -M microvm -accel kvm -cpu ${CPU:-host,-arch-capabilities} \
    -m 64 -smp "$SMP" -nodefaults -nographic -no-user-config -L /usr/share/qemu \
    -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=1 \
    -kernel "$ELF" -append "$append" ${QEMU_EXTRA:-}
set +e
if [ -n "${EMU:-}" ]; then
    LD_PRELOAD=$EMU "$@"
else
    "$@"
fi
status=$?
echo "qemu-exit-status=$status" >&2
exit $status
