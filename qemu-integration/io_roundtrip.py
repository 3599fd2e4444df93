"""An ordinary I/O exit's round trip with and without the plugin, in the
same run (issue 13): QEMU compares the exit number with the two Heki exits
before its own switch, so a KVM_EXIT_IO must cost the same whether the
plugin is loaded or not.

The guest (scenario=io-bench) times ITERS `outb` exits to QEMU with the TSC
in 100 batches and reports the median batch (ticks per exit). Each round
starts the patched QEMU twice from the cache, once with
-accel kvm,heki=PLUGIN and once with plain -accel kvm, both under the Heki
kernel emulator; the order alternates from round to round so drift of the
machine's load falls on both sides alike.

Equal within noise: the difference of the two sides' medians (over the
rounds) is no larger than the noise, taken as the larger of the two sides'
spreads (max - min of the per-round medians). The script prints both and
the verdict; it asserts nothing (no timed assertion anywhere).
"""

import os
import statistics

from roundtrip import guest_ops, tsc_mhz

ITERS = int(os.environ.get("HEKI_IO_ITERS", "200000"))
ROUNDS = int(os.environ.get("HEKI_IO_ROUNDS", "5"))


def io_ticks(heki):
    ops = guest_ops(heki, "io-bench", ITERS)
    if "io" not in ops:
        raise SystemExit("io-bench guest reported no io line")
    return int(ops["io"]["median-ticks"]), int(ops["io"]["min-ticks"])


def main():
    sides = {"with the plugin": {"on-denial": "resume"}, "without the plugin": None}
    medians = {label: [] for label in sides}
    minima = {label: [] for label in sides}
    for round_ in range(ROUNDS):
        order = list(sides) if round_ % 2 == 0 else list(reversed(list(sides)))
        for label in order:
            median, minimum = io_ticks(sides[label])
            medians[label].append(median)
            minima[label].append(minimum)
    mhz = tsc_mhz()
    load = os.getloadavg()[0]
    print(f"KVM_EXIT_IO round trip, guest-measured (TSC), {ITERS} exits x {ROUNDS} rounds per side, "
          f"alternating; load {load:.2f}" + (f"; TSC ~{mhz:.0f} MHz" if mhz else ""))
    print(f"{'QEMU':20} {'median ticks':>13} {'min':>8} {'max':>8} {'spread':>7} {'~ns':>7} {'best batch':>10}")
    summary = {}
    for label in sides:
        values = medians[label]
        med, lo, hi = statistics.median(values), min(values), max(values)
        summary[label] = (med, hi - lo)
        ns = f"{med / mhz * 1000:.0f}" if mhz else "-"
        print(f"{label:20} {med:13.0f} {lo:8} {hi:8} {hi - lo:7} {ns:>7} {min(minima[label]):10}")
    (with_med, with_spread), (without_med, without_spread) = summary.values()
    difference, noise = with_med - without_med, max(with_spread, without_spread)
    verdict = "equal within noise" if abs(difference) <= noise else "NOT equal within noise"
    share = difference / without_med * 100 if without_med else 0.0
    print(f"difference {difference:+.0f} ticks ({share:+.2f}%), noise {noise} ticks: {verdict}")


if __name__ == "__main__":
    main()
