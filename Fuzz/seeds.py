#!/usr/bin/env python3
"""Writes the hand-made seeds of Fuzz/corpus/<target>/seed-* (the formats are
described at the top of each Fuzz/<target>/fuzz_*.c).  The corpus also holds
inputs libFuzzer found (minimised with -merge=1) and regression inputs
(regress-*), which this script leaves alone."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    path = os.path.join(HERE, "corpus", target, "seed-" + name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ---- exit: 8 option bytes, then 73-byte records --------------------------
def record(op, vcpu, number, reason, value, reserved=0):
    payload = struct.pack("<QQ", reason, value) + struct.pack("<Q", reserved) * 6
    return bytes([op]) + struct.pack("<II", vcpu, number) + payload


CR0_WP, CR4_SMEP, CR4_SMAP = 1 << 16, 1 << 20, 1 << 21
CONFIGURE, DENIAL, RAW = 0, 1, 2
DISPATCH, QUERY = 0x04, 0x48

story = (record(CONFIGURE, 0, 0, 1, CR0_WP) + record(CONFIGURE | DISPATCH, 1, 0, 2, CR4_SMEP | CR4_SMAP)
         + record(DENIAL, 2, 0, 2, 0x20) + record(DENIAL | QUERY, 3, 0, 1, 0)
         + record(DENIAL, 0, 0, 3, 0) + record(RAW | DISPATCH, 0, 2, 1, 0))
# header bytes: see fuzz_exit.c create()
write("exit", "default-story", bytes([0, 0xff, 0xff, 0xff, 0, 0, 0, 0]) + story)
write("exit", "v3-pause-required", bytes([1 | (1 << 1), 0x80 | 0x3f, 0x18 | 0x40 | 2, 0x40, 0x04 | 0x40, 0, 0, 0]) + story)
write("exit", "rate-limit-0-storm", bytes([0, 0xff, 0x47, 0, 0, 0, 0x80, 0]) + record(DENIAL, 5, 0, 2, 0) * 12)
write("exit", "caps-refused", bytes([0, 0xff, 0xff, 0, 0, 0x05, 0, 0]) + story)
write("exit", "overrides", bytes([0, 0xff, 0xff, 0, 0, 0x20, 7, 9]) + story)
write("exit", "retired-each-input", bytes([0, 0xff, 0x87, 0, 0x80, 0, 0x80, 0xe0]) + story)
write("exit", "raw-vcpu-null-run", bytes(8) + record(0x10, 0xffffffff, 0, 1, CR0_WP) + record(0x20, 0, 0, 1, 0))
# h[0]: bit 0 abi=v3, bit 4 abi=auto, bits 5-6 the kernel (Heki, Heki without
# CONFIG_HEKI, stock, stock with irqchip), bit 7 the kernel of the other profile.
# h[1] 0x80 / h[2] 0x10: configure-exits and denial-exits cr0+cr4.
AUTO, HEKI_OFF, STOCK, IRQCHIP, OTHER = 0x10, 0x20, 0x40, 0x60, 0x80
write("exit", "stock-kernel", bytes([STOCK, 0x80, 0x10, 0, 0, 0, 0, 0]) + story)
write("exit", "auto-on-v3-kernel", bytes([AUTO | 1, 0x80, 0x10, 0, 0, 0, 0, 0]) + story)
write("exit", "v2-asked-v3-kernel-required", bytes([OTHER, 0x80, 0x10 | 0x20, 0, 0, 0, 0, 0]) + story)
write("exit", "irqchip-auto-required", bytes([IRQCHIP | AUTO, 0x80, 0x10 | 0x20, 0, 0, 0, 0, 0]) + story)
write("exit", "heki-off", bytes([HEKI_OFF, 0x80, 0x10, 0, 0, 0, 0, 0]) + story)
write("exit", "caps-300-careless", bytes([0, 0x80, 0x10, 0, 0, 0x30 | 0x40, 0, 0]) + story)

# ---- options: argv strings separated by newlines -------------------------
options = {
    "defaults": [],
    "every-key": ["abi=v3", "exit-configure=0x40", "exit-denial=65", "cap-configure=300", "cap-denial=301",
                  "configure-exits=cr0+cr4", "denial-exits=cr4", "on-denial=pause", "on-denial-cr0=reset",
                  "on-denial-cr4=exit", "require-cr0=wp+pg", "require-cr4=smep+smap+fred",
                  "on-weak-pinning=poweroff", "vm-name=web1", "audit-log=x", "rate-limit=1000000",
                  "require-caps=yes"],
    "bad-values": ["abi=v9", "rate-limit=-1", "require-cr4=pae"],
    "duplicate": ["vm-name=a", "vm-name=b"],
    "no-equals": ["vm-name"],
    "hostile-text": ["vm-name=\"\\\u00e9\u2028</script>", "on-denial=\x01\x7f"],
    "invalid-utf8": [],
    # A first line kernel=... chooses the host's kernel (default: Heki v2).
    "stock-kernel-required": ["kernel=stock", "abi=auto", "require-caps=on"],
    "irqchip-kernel-v3": ["kernel=irqchip", "abi=v3", "configure-exits=cr4"],
    "v3-kernel-auto": ["kernel=v3", "require-cr4=smep+fred", "denial-exits=cr0"],
    "v3-kernel-v2-caps": ["kernel=v3", "abi=v2", "cap-configure=236", "cap-denial=237"],
}
for name, argv in options.items():
    data = "\n".join(argv).encode()
    if name == "invalid-utf8":
        data = b"vm-name=\xff\xfe\nabi=v2"
    write("options", name, data)

# ---- api: one-byte operations on two slots -------------------------------
NEW, FREE, CAP, GETTERS, QUERYOP, EXIT, EXIT_AIMED, DISPATCHOP, MISC, FREE_IN_CB, NULLS, ENABLE, START = range(13)
SLOT1 = 0x80
# new's size byte: bits 0-2 HekiHost.size (2: 1.0's, 4: 1.1's), bits 4-5 the
# kernel (Heki v2, Heki v3, stock, stock with irqchip).
SIZE_1_0, SIZE_1_1, V3_KERNEL, STOCK_KERNEL, IRQCHIP_KERNEL = 2, 4, 0x10, 0x20, 0x30


def u32(x):
    return struct.pack("<I", x & 0xffffffff)


aimed = bytes([EXIT_AIMED]) + u32(0) + bytes([0] * 8) + u32(0) + bytes([0] * 20) + struct.pack("<QQ", 2, 0) + bytes(48)
write("api", "lifecycle", bytes([NEW, 1, 4]) + bytes([CAP]) + u32(0) + u32(0) + bytes([CAP]) + u32(1) + u32(0)
      + aimed + bytes([QUERYOP, DISPATCHOP, GETTERS]) + u32(7) + bytes([FREE]))
write("api", "two-plugins", bytes([NEW, 0, 4, NEW | SLOT1, 2, 0x0c]) + bytes([CAP | SLOT1]) + u32(0) + u32(0)
      + aimed + bytes([QUERYOP | SLOT1, DISPATCHOP, FREE_IN_CB, DISPATCHOP, FREE | SLOT1]))
write("api", "careless-host", bytes([NEW, 0x04, 4, NEW, 0x08, 4, NEW, 0x0c, 4, NEW, 0x10, 4, NEW, 0x40, 0,
                                     NEW, 0, 6, NEW, 0, 7, 3, NULLS, 0, MISC, FREE, FREE]))
write("api", "v3-kernel", bytes([NEW, 0, SIZE_1_1 | V3_KERNEL, ENABLE, 0]) + aimed + bytes([CAP]) + u32(1) + u32(0)
      + bytes([ENABLE, 1, START, START, GETTERS]) + u32(1) + bytes([QUERYOP, DISPATCHOP, FREE]))
write("api", "stock-kernel-required", bytes([NEW, 3, SIZE_1_1 | STOCK_KERNEL, ENABLE, 0, GETTERS]) + u32(0) + aimed
      + bytes([NEW | SLOT1, 3, SIZE_1_1 | IRQCHIP_KERNEL, ENABLE | SLOT1, 1, DISPATCHOP, FREE, FREE | SLOT1]))
write("api", "host-1.0", bytes([NEW, 0, SIZE_1_0, ENABLE, 0, GETTERS]) + u32(0) + aimed + bytes([DISPATCHOP, FREE]))
write("api", "v3-asked-v2-kernel", bytes([NEW, 2, SIZE_1_1, START, ENABLE, 0]) + aimed + bytes([GETTERS]) + u32(1)
      + bytes([FREE]))
write("api", "null-plugin", bytes([CAP]) + u32(0) + u32(0) + bytes([GETTERS]) + u32(0) + bytes([QUERYOP, NULLS, 1, EXIT])
      + bytes(100))

# ---- state: a flags byte, then the bytes to restore ----------------------
# (fuzz_state.c: bit 0 fixes the body length, bit 1 the checksum, bit 2
# restores over a restored plugin, bit 3 migration=allow-unprotected.)
def fnv1a(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xffffffffffffffff
    return h


def state(profile=1, migration=1, verdicts=(2, 0, 5, 1), require=(CR0_WP, CR4_SMEP | CR4_SMAP),
          numbers=(39, 40, 235, 236), granted=(3, 3), pins=(CR0_WP, CR4_SMEP), restored=(0, CR4_SMAP),
          counters=tuple(range(1, 12)), name=b"web1"):
    body = bytes([profile, migration]) + bytes(verdicts) + struct.pack("<QQ", *require)
    body += struct.pack("<IIII", *numbers) + bytes(granted) + struct.pack("<QQQQ", *(pins + restored))
    body += struct.pack("<11Q", *counters) + struct.pack("<H", len(name)) + name
    framed = b"HEKISTAT" + struct.pack("<HHI", 1, 0, len(body)) + body
    return framed + struct.pack("<Q", fnv1a(framed))


write("state", "v2-pinned", bytes([0]) + state())
write("state", "v3-no-name", bytes([8]) + state(profile=2, numbers=(40, 41, 236, 237), name=b""))
write("state", "no-profile-nothing-pinned", bytes([4]) + state(profile=0, numbers=(0, 0, 0, 0), pins=(0, 0),
                                                               restored=(0, 0), counters=(0,) * 11))
write("state", "resealed-bad-verdict", bytes([3]) + state(verdicts=(9, 0, 0, 1)))
write("state", "escaped-name", bytes([2]) + state(name='q"b\\s/ é✓'.encode()))
write("state", "version-2", bytes([2]) + state()[:8] + struct.pack("<H", 2) + state()[10:])
write("state", "truncated", bytes([0]) + state()[:40])
