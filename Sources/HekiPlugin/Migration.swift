import CHekiPlugin

/// migration=: what the operator allows once the guest has pinned. KVM
/// keeps the pins inside the source's kernel and has no ioctl to set them
/// in another one, so a migrated (or snapshot-restored) VM runs with its
/// pins not enforced.
enum MigrationChoice: UInt8, CaseIterable, Sendable {
    /// `block` (default): from the first pin the VMM holds a migration
    /// blocker, and a state save is refused.
    case block = 0
    /// `allow-unprotected`: the VM migrates; the plugin's state travels
    /// and the destination reports its pins as not enforced.
    case allowUnprotected = 1

    var name: String {
        switch self {
        case .block: "block"
        case .allowUnprotected: "allow-unprotected"
        }
    }
}

/// What a migration or a snapshot means for the plugin now;
/// `HekiMigrationStatus` in C.
enum MigrationStatus: Int32, Sendable {
    /// `HEKI_MIGRATION_FREE`: nothing pinned or restored: nothing to lose,
    /// nothing to carry (no section in the stream).
    case free = 0
    /// `HEKI_MIGRATION_BLOCKED`: this kernel enforces pins and
    /// migration=block: the VMM holds a blocker; a save is refused.
    case blocked = 1
    /// `HEKI_MIGRATION_CARRY`: the state must travel: pins with
    /// migration=allow-unprotected, or pins restored from a source.
    case carry = 2

    var cValue: HekiMigrationStatus { HekiMigrationStatus(rawValue: UInt32(bitPattern: rawValue)) }

    var name: String {
        switch self {
        case .free: "free"
        case .blocked: "blocked"
        case .carry: "carry"
        }
    }
}
