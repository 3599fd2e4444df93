"""The cost of one Heki exit round trip through QEMU and the plugin, next to a
plain KVM_EXIT_IO round trip, measured by the guest (rdtsc) in the same runs.

Kinds the guest times (scenario=bench), each as median and min ticks per
operation over batches:
  io      outb to port 0x80: KVM_EXIT_IO to QEMU and back (the reference)
  emu     an allowed CR write through the Heki port: handled inside the
          kernel emulator, never reaches QEMU
  denial  a denied CR write: with the plugin, KVM_EXIT_HEKI_DENIAL to QEMU,
          heki_plugin_handle_exit, re-entry, #GP, the guest's handler;
          without it (no capability), the emulator injects the #GP itself.
Ticks are the guest's TSC; ns use the host's `cpu MHz` (the TSC rate on this
VM), so the ratios are the robust figures.
"""

import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e"))
from hekiqemu import GUEST_PASS, Run  # noqa: E402

ITERS = int(os.environ.get("HEKI_ROUNDTRIP_ITERS", "20000"))
REPEATS = int(os.environ.get("HEKI_ROUNDTRIP_REPEATS", "3"))


def tsc_mhz():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1])
    return None


def guest_ops(heki, scenario, iters):
    """Runs a timing scenario; its `bench op=...` lines by op."""
    run = Run(heki=heki, scenario=scenario, extra_append=f"iters={iters}")
    try:
        run.start()
        status = run.wait(300)
        if status != GUEST_PASS:
            raise SystemExit(f"{scenario} guest failed ({status}):\n{run.guest_text()}")
        return {l["op"]: l for l in run.guest() if "op" in l and "median-ticks" in l}
    finally:
        run.close()


def bench(heki):
    return {op: int(line["median-ticks"]) for op, line in guest_ops(heki, "bench", ITERS).items()}


def main():
    mhz = tsc_mhz()
    configs = [("with the plugin", {"on-denial": "resume"}),
               ("without the plugin", None)]
    rows = []
    for label, heki in configs:
        samples = [bench(heki) for _ in range(REPEATS)]
        io = [s["io"] for s in samples]
        for op in ("io", "emu", "denial"):
            ticks = [s[op] for s in samples]   # every run reports every op
            rows.append((label, op, statistics.median(ticks), min(ticks), max(ticks),
                         statistics.median(t / i for t, i in zip(ticks, io))))
    print(f"exit round trips, guest-measured, {ITERS} ops x {REPEATS} runs per row; "
          f"TSC ~{mhz:.0f} MHz" if mhz else "")
    print(f"{'QEMU':20} {'op':7} {'median ticks':>13} {'min':>9} {'max':>9} "
          f"{'~us':>7} {'x io':>6}")
    for label, op, med, lo, hi, ratio in rows:
        us = f"{med / mhz:.2f}" if mhz else "-"
        print(f"{label:20} {op:7} {med:13.0f} {lo:9} {hi:9} {us:>7} {ratio:6.2f}")


if __name__ == "__main__":
    main()
