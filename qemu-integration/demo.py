"""The demo: a Heki guest under real KVM in the patched QEMU with heki-plugin.

Act 1: the guest pins CR0.WP and CR4 SMEP/SMAP at boot, then an attacker on
another vCPU clears a pinned bit; the policy says pause, QEMU stops the VM,
QMP shows why; the operator looks (query-heki) and continues.
Act 2: two vCPUs storm denials; the plugin coalesces them, with exact counts.
Act 3: the same guest on QEMU without the patch: the kernel still refuses the
writes, but the VMM never hears of it and cannot act.
Act 4: the plugin on this machine's real, stock KVM (no emulator): it asks
KVM_CHECK_EXTENSION, finds no Heki kernel and enables nothing (237 is
KVM_CAP_X86_APIC_BUS_CYCLES_NS there).
Act 5: the operator tightens the policy while the VM runs (heki-set-policy):
the next denial follows the new policy, and HEKI_POLICY records the change.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e"))
from hekiqemu import GUEST_NO_HEKI, GUEST_PASS, Run  # noqa: E402


def say(text=""):
    print(text, flush=True)


def show_guest(run, shown):
    # Complete lines only: the guest may be in the middle of one.
    lines = run.guest_text().splitlines(keepends=True)
    lines = [l.rstrip("\n") for l in lines if l.endswith("\n")]
    for line in lines[shown:]:
        say(f"  guest  | {line}")
    return len(lines)


FIRST_KEYS = ["vm-name", "cpu-index", "register", "value", "pinned", "violated",
              "missing", "verdict"]


def readable(data):
    """Put the telling keys first and leave out the integers that have a
    bit-name list (value stays), and the vCPU's QOM path."""
    keys = [k for k in FIRST_KEYS if k in data]
    keys += sorted(k for k in data if k not in keys)
    shown = {k: data[k] for k in keys
             if not (k + "-bits" in data and k != "value") and k != "qom-path"}
    return json.dumps(shown, separators=(",", ":"))


def show_events(run, shown):
    events = run.qmp.all()
    for event in events[shown:]:
        if event["event"].startswith("HEKI_"):
            say(f"  qmp    | {event['event']} {readable(event['data'])}")
        else:
            say(f"  qmp    | {event['event']} {json.dumps(event.get('data', {}))}")
    return len(events)


def act1():
    say("== Act 1: a pinned guest is attacked; policy on-denial=pause ==")
    options = {"vm-name": "web1", "on-denial": "pause", "require-cr0": "wp",
               "require-cr4": "smep"}
    say("  qemu-system-x86_64 -M microvm -smp 2 -kernel heki-guest.elf "
        "-accel kvm,heki=libHekiPlugin.so," +
        ",".join(f"heki-{k}={v}" for k, v in options.items()))
    run = Run(heki=options, scenario="pin-deny", cpus=2, extra_append="writes=1")
    try:
        run.start()
        g = e = 0
        while True:
            # Each denial stops the VM; the operator looks, then continues.
            try:
                run.qmp.wait_event(lambda ev: ev["event"] == "STOP" and
                                   ev not in run.qmp.events[:e], timeout=1)
            except TimeoutError:
                if run.process.poll() is not None:
                    break   # the guest finished and QEMU exited
                continue
            time.sleep(0.2)   # the events of the same main-loop turn
            g, e = show_guest(run, g), show_events(run, e)
            say(f"  qemu   | query-status: {run.status()}")
            query = run.qmp.command("query-heki")
            say(f"  qemu   | query-heki: pins cr0={query['pins']['cr0']['bits']} "
                f"cr4={query['pins']['cr4']['bits']} denials={query['counters']['denial']}")
            say("  (the operator inspects the VM, then lets it go on: cont)")
            e = len(run.qmp.events)
            run.start()
        status = run.wait()
        show_guest(run, g)
        show_events(run, e)
        say(f"  qemu   | exit status {status} (isa-debug-exit: "
            f"{'the guest passed' if status == GUEST_PASS else 'unexpected'})")
        return status == GUEST_PASS
    finally:
        run.close()


def act2():
    say("\n== Act 2: a denial storm from 2 vCPUs; on-denial=resume, rate-limit=20 ==")
    run = Run(heki={"vm-name": "web1", "rate-limit": "20"}, scenario="storm",
              cpus=2, extra_append="writes=20000")
    try:
        run.start()
        status = run.wait(120)
        individual = run.qmp.heki_events("HEKI_DENIAL")
        summaries = [e["data"] for e in run.qmp.heki_events("HEKI_SUPPRESSED")
                     if e["data"]["event"] == "HEKI_DENIAL"]
        suppressed = sum(s["count"] for s in summaries)
        guest_gps = sum(int(l["gp"]) for l in run.per_cpu())
        say(f"  guest  | {run.guest_result()}")
        say(f"  qmp    | {len(individual)} HEKI_DENIAL events + {len(summaries)} "
            f"HEKI_SUPPRESSED summaries counting {suppressed}")
        say(f"  check  | {len(individual)} + {suppressed} = {len(individual) + suppressed}"
            f" denials reported; the guest counted {guest_gps} #GPs")
        return status == GUEST_PASS and len(individual) + suppressed == guest_gps
    finally:
        run.close()


def act3():
    say("\n== Act 3: the same guest on QEMU without the patch ==")
    run = Run(unpatched=True, scenario="pin-deny", cpus=2, extra_append="writes=2")
    try:
        run.start()
        status = run.wait()
        say(f"  guest  | {run.guest_result()}")
        say(f"  qmp    | {len(run.qmp.heki_events())} Heki events; the VM was never "
            f"paused: exit status {status}")
        return status == GUEST_PASS and not run.qmp.heki_events()
    finally:
        run.close()


def act4():
    say("\n== Act 4: the plugin on this machine's stock KVM, without the emulator ==")
    run = Run(heki={"vm-name": "web1"}, scenario="pin-deny", emulator=False)
    try:
        query = run.qmp.command("query-heki")
        say(f"  qemu   | query-heki: abi={query['abi']} profile={json.dumps(query.get('profile'))} "
            f"kernel={json.dumps(query['kernel'])}")
        run.start()
        status = run.wait()
        for line in run.stderr.splitlines():
            say(f"  stderr | {line}")
        # The guest's own finding (its last line may be cut by the exit).
        say(f"  guest  | {next((l for l in run.guest() if 'heki' in l), {})}")
        say(f"  qemu   | exit status {status} (the guest found no Heki kernel)")
        return (status == GUEST_NO_HEKI and "profile" not in query
                and query["kernel"]["status"] == "no-heki-kernel")
    finally:
        run.close()


def act5():
    say("\n== Act 5: the policy changes while the VM runs (heki-set-policy) ==")
    run = Run(heki={"vm-name": "web1", "on-denial-cr0": "resume", "on-denial-cr4": "pause"},
              scenario="pin-deny", extra_append="writes=3")
    try:
        run.start()   # writes CR0 (resume), CR4 (pause), CR0
        run.qmp.wait_event(lambda e: e["event"] == "STOP")
        say("  qmp    -> heki-set-policy {\"on-denial-cr0\": \"pause\"}")
        run.qmp.command("heki-set-policy", **{"on-denial-cr0": "pause"})
        run.qmp.wait_heki("HEKI_POLICY")
        run.start()
        run.qmp.wait_events(lambda e: e["event"] == "STOP", 2)
        show_events(run, 0)
        verdicts = [e["data"]["verdict"] for e in run.qmp.heki_events("HEKI_DENIAL")]
        say(f"  check  | denial verdicts {verdicts}: the third write followed the new policy")
        run.quit()
        return verdicts == ["resume", "pause", "pause"]
    finally:
        run.close()


def main():
    results = [act1(), act2(), act3(), act4(), act5()]
    say("\n" + ("demo: every act behaved as described" if all(results)
                else f"demo: FAILED acts {[i + 1 for i, ok in enumerate(results) if not ok]}"))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
