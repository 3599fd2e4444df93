/// Names of the architectural bits of a control register, for events, logs
/// and options. Bits without a name render as "bit<N>".
struct BitNames: Sendable {
    let table: [(bit: UInt64, name: String)]

    /// The names joined by "+", or "none": how log lines spell a value.
    func spelling(of value: UInt64) -> String {
        let names = names(of: value)
        return names.isEmpty ? "none" : names.joined(separator: "+")
    }

    func names(of value: UInt64) -> [String] {
        var result: [String] = []
        var rest = value
        for (bit, name) in table where value & bit != 0 {
            result.append(name)
            rest &= ~bit
        }
        while rest != 0 {
            let index = rest.trailingZeroBitCount
            result.append("bit\(index)")
            rest &= rest - 1
        }
        return result
    }

    func bit(named name: String) -> UInt64? { table.first { $0.name == name }?.bit }
}

/// CR0 bits, with Linux's `X86_CR0_*` names in lower case.
struct CR0: OptionSet, Sendable {
    let rawValue: UInt64
    /// `X86_CR0_PE`: protection enable.
    static let pe = CR0(rawValue: 1 << 0)
    /// `X86_CR0_MP`: monitor coprocessor.
    static let mp = CR0(rawValue: 1 << 1)
    /// `X86_CR0_EM`: emulation.
    static let em = CR0(rawValue: 1 << 2)
    /// `X86_CR0_TS`: task switched.
    static let ts = CR0(rawValue: 1 << 3)
    /// `X86_CR0_ET`: extension type.
    static let et = CR0(rawValue: 1 << 4)
    /// `X86_CR0_NE`: numeric error.
    static let ne = CR0(rawValue: 1 << 5)
    /// `X86_CR0_WP`: write protect; every Heki CR0 pin carries it.
    static let wp = CR0(rawValue: 1 << 16)
    /// `X86_CR0_AM`: alignment mask.
    static let am = CR0(rawValue: 1 << 18)
    /// `X86_CR0_NW`: not write-through.
    static let nw = CR0(rawValue: 1 << 29)
    /// `X86_CR0_CD`: cache disable.
    static let cd = CR0(rawValue: 1 << 30)
    /// `X86_CR0_PG`: paging.
    static let pg = CR0(rawValue: 1 << 31)

    static let names = BitNames(table: [
        (pe.rawValue, "pe"), (mp.rawValue, "mp"), (em.rawValue, "em"), (ts.rawValue, "ts"),
        (et.rawValue, "et"), (ne.rawValue, "ne"), (wp.rawValue, "wp"), (am.rawValue, "am"),
        (nw.rawValue, "nw"), (cd.rawValue, "cd"), (pg.rawValue, "pg"),
    ])
}

/// CR4 bits, with Linux's `X86_CR4_*` names in lower case (LAM_SUP: "lam-sup").
struct CR4: OptionSet, Sendable {
    let rawValue: UInt64
    /// `X86_CR4_VME`: virtual-8086 mode extensions.
    static let vme = CR4(rawValue: 1 << 0)
    /// `X86_CR4_PVI`: protected-mode virtual interrupts.
    static let pvi = CR4(rawValue: 1 << 1)
    /// `X86_CR4_TSD`: time stamp disable.
    static let tsd = CR4(rawValue: 1 << 2)
    /// `X86_CR4_DE`: debugging extensions.
    static let de = CR4(rawValue: 1 << 3)
    /// `X86_CR4_PSE`: page size extensions.
    static let pse = CR4(rawValue: 1 << 4)
    /// `X86_CR4_PAE`: physical address extension.
    static let pae = CR4(rawValue: 1 << 5)
    /// `X86_CR4_MCE`: machine check enable.
    static let mce = CR4(rawValue: 1 << 6)
    /// `X86_CR4_PGE`: page global enable.
    static let pge = CR4(rawValue: 1 << 7)
    /// `X86_CR4_PCE`: performance counter enable.
    static let pce = CR4(rawValue: 1 << 8)
    /// `X86_CR4_OSFXSR`: FXSAVE/FXRSTOR support.
    static let osfxsr = CR4(rawValue: 1 << 9)
    /// `X86_CR4_OSXMMEXCPT`: unmasked SIMD exceptions.
    static let osxmmexcpt = CR4(rawValue: 1 << 10)
    /// `X86_CR4_UMIP`: user-mode instruction prevention.
    static let umip = CR4(rawValue: 1 << 11)
    /// `X86_CR4_LA57`: 5-level paging.
    static let la57 = CR4(rawValue: 1 << 12)
    /// `X86_CR4_VMXE`: VMX enable.
    static let vmxe = CR4(rawValue: 1 << 13)
    /// `X86_CR4_SMXE`: SMX enable.
    static let smxe = CR4(rawValue: 1 << 14)
    /// `X86_CR4_FSGSBASE`: RDFSBASE and friends.
    static let fsgsbase = CR4(rawValue: 1 << 16)
    /// `X86_CR4_PCIDE`: PCID enable.
    static let pcide = CR4(rawValue: 1 << 17)
    /// `X86_CR4_OSXSAVE`: XSAVE enable.
    static let osxsave = CR4(rawValue: 1 << 18)
    /// `X86_CR4_KL`: key locker.
    static let kl = CR4(rawValue: 1 << 19)
    /// `X86_CR4_SMEP`: supervisor-mode execution prevention.
    static let smep = CR4(rawValue: 1 << 20)
    /// `X86_CR4_SMAP`: supervisor-mode access prevention.
    static let smap = CR4(rawValue: 1 << 21)
    /// `X86_CR4_PKE`: protection keys for user pages.
    static let pke = CR4(rawValue: 1 << 22)
    /// `X86_CR4_CET`: control-flow enforcement.
    static let cet = CR4(rawValue: 1 << 23)
    /// `X86_CR4_PKS`: protection keys for supervisor pages.
    static let pks = CR4(rawValue: 1 << 24)
    /// `X86_CR4_UINTR`: user interrupts.
    static let uintr = CR4(rawValue: 1 << 25)
    /// `X86_CR4_LASS`: linear address space separation.
    static let lass = CR4(rawValue: 1 << 27)
    /// `X86_CR4_LAM_SUP`: linear address masking for supervisor pointers.
    static let lamSup = CR4(rawValue: 1 << 28)
    /// `X86_CR4_FRED`: flexible return and event delivery.
    static let fred = CR4(rawValue: 1 << 32)

    static let names = BitNames(table: [
        (vme.rawValue, "vme"), (pvi.rawValue, "pvi"), (tsd.rawValue, "tsd"), (de.rawValue, "de"),
        (pse.rawValue, "pse"), (pae.rawValue, "pae"), (mce.rawValue, "mce"), (pge.rawValue, "pge"),
        (pce.rawValue, "pce"), (osfxsr.rawValue, "osfxsr"), (osxmmexcpt.rawValue, "osxmmexcpt"),
        (umip.rawValue, "umip"), (la57.rawValue, "la57"), (vmxe.rawValue, "vmxe"),
        (smxe.rawValue, "smxe"), (fsgsbase.rawValue, "fsgsbase"), (pcide.rawValue, "pcide"),
        (osxsave.rawValue, "osxsave"), (kl.rawValue, "kl"), (smep.rawValue, "smep"),
        (smap.rawValue, "smap"), (pke.rawValue, "pke"), (cet.rawValue, "cet"), (pks.rawValue, "pks"),
        (uintr.rawValue, "uintr"), (lass.rawValue, "lass"), (lamSup.rawValue, "lam-sup"),
        (fred.rawValue, "fred"),
    ])
}
