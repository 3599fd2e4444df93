import CHekiPlugin
import Synchronization

/// What the plugin knows about migration beyond the ledger: the pins
/// restored from a source (not enforced by this kernel), where they came
/// from, and what the host was last told about its blocker.
final class MigrationState {
    /// Per register (ControlRegister.rawValue): bits restored only. Written
    /// by a restore (vCPUs stopped), read by any thread's query.
    private let restored: InlineArray<2, Atomic<UInt64>>
    /// The source of the last restore; nil before one.
    let source = Mutex<RestoredSource?>(nil)
    /// Main loop only: the blocker the host holds on our word.
    var blockerHeld = false

    init() { restored = InlineArray { _ in Atomic(0) } }

    func restoredOnly(_ register: ControlRegister) -> UInt64 {
        restored[Int(register.rawValue)].load(ordering: .relaxed)
    }

    func setRestored(_ pins: RegisterPair) {
        for register in ControlRegister.allCases {
            restored[Int(register.rawValue)].store(pins[register], ordering: .relaxed)
        }
    }
}

/// Where a restored state came from, as its bytes said.
struct RestoredSource: Sendable {
    var vmName: String?
    var profile: String?
    var migration: MigrationChoice
}

/// HEKI_MIGRATION: what happened to the VM's protection at a migration or
/// snapshot, said by the main loop.
struct MigrationReport {
    enum Action: String {
        /// The host must hold a migration blocker (first pin, migration=block).
        case blocked
        /// It may drop it (migration=allow-unprotected).
        case unblocked
        /// A state save was refused: pins, migration=block.
        case refused
        /// The state left with a migration or snapshot.
        case saved
        /// A state was restored: its pins are not enforced here.
        case restored
        /// Bytes to restore were refused; nothing changed.
        case rejected
    }

    var action: Action
    var choice: MigrationChoice
    var enforced: RegisterPair
    var restoredOnly: RegisterPair
    var reason: String
    var source: RestoredSource? = nil
}

extension Plugin {
    /// This kernel's pins (the ledger).
    var enforcedPins: RegisterPair { RegisterPair(cr0: ledger.pins(.cr0), cr4: ledger.pins(.cr4)) }

    var restoredOnlyPins: RegisterPair {
        RegisterPair(cr0: migration.restoredOnly(.cr0) & ~ledger.pins(.cr0),
                     cr4: migration.restoredOnly(.cr4) & ~ledger.pins(.cr4))
    }

    /// heki_plugin_migration_status. Restored-only pins are not enforced
    /// already: migrating on loses nothing more, so they only need carrying.
    func migrationStatus() -> MigrationStatus {
        if !enforcedPins.isEmpty {
            return policy.current().migration == .block ? .blocked : .carry
        }
        return restoredOnlyPins.isEmpty ? .free : .carry
    }

    /// Why a pinned VM must not migrate: the blocker's message, and a
    /// refused save's.
    private func blockedReason(_ pins: RegisterPair) -> String {
        "Heki: the guest pinned " + pinNames(pins)
            + ", which only this host's KVM enforces; no ioctl can re-arm pins in a destination kernel, so a "
            + "migrated or restored guest would run unprotected (heki-plugin option migration=allow-unprotected, "
            + "also through heki-set-policy, allows it)"
    }

    /// "cr0 wp, cr4 smep+smap" (registers without pins left out).
    func pinNames(_ pins: RegisterPair) -> String {
        let named = ControlRegister.allCases.filter { pins[$0] != 0 }.map { register in
            register.name + " " + register.bitNames.spelling(of: pins[register])
        }
        return named.isEmpty ? "nothing" : named.joined(separator: ", ")
    }

    private func report(_ action: MigrationReport.Action, reason: String, source: RestoredSource? = nil) {
        announce(.migration(MigrationReport(action: action, choice: policy.current().migration, enforced: enforcedPins,
                                            restoredOnly: restoredOnlyPins, reason: reason, source: source)))
    }

    /// Tells the host's migration_blocker when its answer changed (main
    /// loop, from the dispatch or a flush), with a HEKI_MIGRATION event that
    /// says what the host holds: a host without the callback holds nothing,
    /// and its event stream stays as it was (it learns at the save).
    /// Returns whether it announced.
    @discardableResult
    func tellMigrationBlocker() -> Bool {
        guard let callback = host.migration_blocker else { return false }
        let blocked = migrationStatus() == .blocked
        guard blocked != migration.blockerHeld else { return false }
        migration.blockerHeld = blocked
        let reason = blocked ? blockedReason(enforcedPins)
            : "Heki: migration=allow-unprotected: the VM may migrate; its pins will not be enforced on the destination"
        if blocked {
            reason.withCString { callback(host.opaque, 1, $0) }
        } else {
            callback(host.opaque, 0, nil)
        }
        report(blocked ? .blocked : .unblocked, reason: reason)
        return true
    }

    /// heki_plugin_save_state: the bytes, or why not. Main loop, vCPUs
    /// stopped: the ledger is final, so this decision holds even when a pin
    /// came after the host's blocker check.
    func saveState() -> Result<[UInt8], StateError> {
        let pins = enforcedPins
        guard migrationStatus() != .blocked else {
            let reason = blockedReason(pins)
            report(.refused, reason: reason)
            return .failure(StateError(message: reason))
        }
        let kernel = self.kernel
        var state = PluginState()
        state.profile = kernel?.check.profile
        state.policy = policy.current()
        state.numbers = verifiedNumbers
        state.granted = (claim(.configure).isClaimed ? claim(.configure).granted : [],
                         claim(.denial).isClaimed ? claim(.denial).granted : [])
        state.pins = pins
        state.restoredOnly = restoredOnlyPins
        state.vmName = config.vmName
        state.counters = savedCounters()
        do {
            let bytes = try state.encode()
            report(.saved, reason: pins.isEmpty && state.restoredOnly.isEmpty
                ? "nothing pinned: the state leaves with the VM"
                : "pins " + pinNames(RegisterPair(cr0: pins.cr0 | state.restoredOnly.cr0, cr4: pins.cr4 | state.restoredOnly.cr4))
                    + " leave with the VM; the destination's kernel will not enforce them")
            return .success(bytes)
        } catch {
            report(.refused, reason: error.message)
            return .failure(error)
        }
    }

    /// heki_plugin_restore_state: decodes and validates everything before
    /// it changes anything. Main loop, vCPUs stopped.
    func restoreState(_ bytes: UnsafeRawBufferPointer) -> StateError? {
        let state: PluginState
        do {
            state = try PluginState.decode(bytes)
        } catch {
            report(.rejected, reason: error.message)
            return error
        }
        migration.setRestored(RegisterPair(cr0: state.pins.cr0 | state.restoredOnly.cr0,
                                           cr4: state.pins.cr4 | state.restoredOnly.cr4))
        restoreCounters(state.counters)
        let source = RestoredSource(vmName: state.vmName, profile: state.profile?.name, migration: state.policy.migration)
        migration.source.withLock { $0 = source }
        let restored = restoredOnlyPins
        report(.restored, reason: restored.isEmpty
            ? "restored; nothing the source pinned is missing here"
            : "restored " + pinNames(restored) + " from the source: this kernel does not enforce them, "
                + "so a write that clears them is not refused and no HEKI_DENIAL can report it", source: source)
        return nil
    }

    private func savedCounters() -> StateCounters {
        var saved = StateCounters()
        var index = 0
        for kind in StateCounters.perRegisterKinds {
            for register in ControlRegister.allCases {
                saved.values[index] = eventTotal(kind, register)
                index += 1
            }
        }
        saved.values[index] = counters.malformedExits.load(ordering: .relaxed)
        index += 1
        for kind in StateCounters.summarisedKinds {
            saved.values[index] = counters.summarisedTotal(kind) &+ limiter.pendingCount(kind)
            index += 1
        }
        return saved
    }

    private func restoreCounters(_ saved: StateCounters) {
        var index = 0
        for kind in StateCounters.perRegisterKinds {
            for register in ControlRegister.allCases {
                counters.add(kind, register, saved.values[index])
                index += 1
            }
        }
        counters.malformedExits.wrappingAdd(saved.values[index], ordering: .relaxed)
        index += 1
        for kind in StateCounters.summarisedKinds {
            counters.addSummarised(kind, saved.values[index])
            index += 1
        }
    }
}
