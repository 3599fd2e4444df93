import Synchronization

/// The VM's pins, per register, as the guest made them: the OR of every
/// CONFIGURE exit's `cr_pinned`. Shared by all vCPUs without locks. KVM has
/// no read-back of its pins, so this is how the VMM knows which bits a
/// DENIAL clears.
/// Noncopyable: the plugin holds it inline, one pointer load less per exit.
struct PinLedger: ~Copyable, Sendable {
    private let cr0 = Atomic<UInt64>(0)
    private let cr4 = Atomic<UInt64>(0)

    /// Adds a pin; returns the register's pins after it. A pin that adds
    /// no bit (every vCPU pins the same bits) only reads: pins never go
    /// away, so the load is the OR's result, and the line stays shared.
    @inline(__always)
    func pin(_ bits: UInt64, on register: ControlRegister) -> UInt64 {
        switch register {
        case .cr0: Self.pin(bits, cr0)
        case .cr4: Self.pin(bits, cr4)
        }
    }

    @inline(__always)
    private static func pin(_ bits: UInt64, _ pins: borrowing Atomic<UInt64>) -> UInt64 {
        let now = pins.load(ordering: .relaxed)
        return now & bits == bits ? now : pins.bitwiseOr(bits, ordering: .relaxed).newValue
    }

    @inline(__always)
    func pins(_ register: ControlRegister) -> UInt64 {
        switch register {
        case .cr0: cr0.load(ordering: .relaxed)
        case .cr4: cr4.load(ordering: .relaxed)
        }
    }
}
