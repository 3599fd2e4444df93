import CGLib
import CHekiPlugin

/// Renders every event the plugin reports (README.md, "Events"): its name,
/// its JSON data, its log level and its log line, into two reused byte
/// buffers. The kinds a guest can cause in bulk (configure, denial, weak
/// pinning) are written field by field from bytes made once at init; the
/// rare ones (malformed exits, capabilities, summaries, the main loop's
/// announcements) through JSONWriter into the same buffers. The log line is
/// made only when asked (the host may have no log callback).
/// Main loop thread only; a result is valid until the next render.
final class EventRenderer {
    private let config: Configuration
    // Main loop only, never reentered: no dynamic exclusivity checks (four
    // per event, about a tenth of its rendering).
    @exclusivity(unchecked) private var dataBuffer = ByteWriter(capacity: EventRenderer.bufferSize)
    @exclusivity(unchecked) private var lineBuffer = ByteWriter(capacity: EventRenderer.bufferSize)
    private let arena = ByteArena()
    /// "vm NAME" (printable), or nil without vm-name: the one spelling of
    /// the subject of every log line.
    let vmLabel: String?
    /// `"vm-name":"..."` (escaped), or nil.
    private let vmNameField: ByteString?
    /// "heki: vm NAME vcpu " / "heki: vcpu ": a line about one vCPU.
    private let vcpuSubject: ByteString
    /// "heki: vm NAME: " / "heki: ": a line about the VM.
    private let vmSubject: ByteString
    /// `{"vm-name":"...","vcpu":` / `{"vcpu":`: a bulk event's data up to its vCPU.
    private let vcpuHead: ByteString
    /// `{"vm-name":"..."` / `{`: the same without a vCPU (the pin deadline's).
    private let vmHead: ByteString
    private let registerNames: UnsafeBufferPointer<ByteString>
    private let exitRegisterFields: UnsafeBufferPointer<ByteString>
    private let registerFields: UnsafeBufferPointer<ByteString>
    private let verdictTails: UnsafeBufferPointer<ByteString>
    private let bitNames: UnsafePointer<BitNameBytes>  // by register
    private let verdictNames: UnsafeBufferPointer<ByteString>  // by Verdict.rawValue + 1
    private let eventNames: UnsafeBufferPointer<ByteString>    // by EventKind.rawValue
    private let policyEventName: ByteString
    private let migrationEventName: ByteString
    private let resetEventName: ByteString

    /// The bytes every plugin renders with (names of registers, bits,
    /// verdicts, events): made once per process, so heki_plugin_new makes
    /// only its VM's few strings.
    private struct Names: @unchecked Sendable {
        let arena = ByteArena()
        let registerNames: UnsafeBufferPointer<ByteString>
        let bitNames: UnsafeBufferPointer<BitNameBytes>
        let verdictNames: UnsafeBufferPointer<ByteString>
        let eventNames: UnsafeBufferPointer<ByteString>
        let policyEventName: ByteString
        let migrationEventName: ByteString
        let resetEventName: ByteString
        /// By register: `,"register":"crN","exit-reason":` (configure,
        /// denial) and `,"register":"crN"` (weak pinning).
        let exitRegisterFields: UnsafeBufferPointer<ByteString>
        let registerFields: UnsafeBufferPointer<ByteString>
        /// By Verdict.rawValue + 1: `,"verdict":"NAME"}`, the end of a bulk event's data.
        let verdictTails: UnsafeBufferPointer<ByteString>
        /// The longest name of a single bit.
        let longestBitName: Int

        init() {
            let arena = self.arena
            registerNames = arena.table(ControlRegister.allCases.map { arena.string($0.name) })
            exitRegisterFields = arena.table(ControlRegister.allCases.map {
                arena.string(",\"register\":\"\($0.name)\",\"exit-reason\":")
            })
            registerFields = arena.table(ControlRegister.allCases.map { arena.string(",\"register\":\"\($0.name)\"") })
            verdictTails = arena.table(Verdict.allCases.sorted { $0.rawValue < $1.rawValue }.map {
                arena.string(",\"verdict\":\"\($0.name)\"}")
            })
            bitNames = arena.table(ControlRegister.allCases.map { BitNameBytes($0.bitNames, arena: arena) })
            verdictNames = arena.table(Verdict.allCases.sorted { $0.rawValue < $1.rawValue }.map { arena.string($0.name) })
            eventNames = arena.table(EventKind.allCases.map { arena.string($0.eventName) })
            policyEventName = arena.string(Announcement.policyEventName)
            migrationEventName = arena.string(Announcement.migrationEventName)
            resetEventName = arena.string(Announcement.resetEventName)
            longestBitName = ControlRegister.allCases.flatMap { register in
                (0..<64).map { register.bitNames.names(of: 1 << UInt64($0)).first?.utf8.count ?? 0 }
            }.max() ?? 0
        }
    }
    private static let names = Names()

    /// The keys of a value and its bit names, `,"NAME":"0x` and
    /// `","NAME-bits":`: literals, so each is copied with its bytes and
    /// length known to the compiler (no table load, no loop).
    private struct BitsKeys {
        let key: StaticString
        let listKey: StaticString

        static var value: BitsKeys { BitsKeys(key: ",\"value\":\"0x", listKey: "\",\"value-bits\":") }
        static var pinned: BitsKeys { BitsKeys(key: ",\"pinned\":\"0x", listKey: "\",\"pinned-bits\":") }
        static var violated: BitsKeys { BitsKeys(key: ",\"violated\":\"0x", listKey: "\",\"violated-bits\":") }
        static var required: BitsKeys { BitsKeys(key: ",\"required\":\"0x", listKey: "\",\"required-bits\":") }
        static var missing: BitsKeys { BitsKeys(key: ",\"missing\":\"0x", listKey: "\",\"missing-bits\":") }
    }

    // A start, not a bound: `reserve` grows a buffer for a larger event, so
    // heki_plugin_new does not allocate (and fault in) 64 KB nobody asked for.
    static let bufferSize = 1024
    /// The largest data or log line of a bulk kind: the vm-name fragments,
    /// three lists of at most 64 names (each quoted, with a comma), three
    /// hex values and a fixed part well under 512 bytes.
    private let maximumBulkBytes: Int

    init(config: Configuration) {
        self.config = config
        let arena = self.arena
        vmLabel = config.vmName.map { "vm \(Options.printable($0))" }
        vmNameField = config.vmName.map { arena.string(JSONEscape.quoted("vm-name") + ":" + JSONEscape.quoted($0)) }
        let vmField = vmNameField.map { String(cString: $0.cString) }
        vcpuHead = arena.string("{" + (vmField.map { $0 + "," } ?? "") + "\"vcpu\":")
        vmHead = arena.string("{" + (vmField ?? ""))
        vcpuSubject = arena.string("heki: " + (vmLabel.map { $0 + " " } ?? "") + "vcpu ")
        vmSubject = arena.string("heki: " + (vmLabel.map { $0 + ": " } ?? ""))
        let names = EventRenderer.names
        (registerNames, bitNames, verdictNames) = (names.registerNames, names.bitNames.baseAddress!, names.verdictNames)
        (exitRegisterFields, registerFields, verdictTails) = (names.exitRegisterFields, names.registerFields, names.verdictTails)
        (eventNames, policyEventName) = (names.eventNames, names.policyEventName)
        (migrationEventName, resetEventName) = (names.migrationEventName, names.resetEventName)
        maximumBulkBytes = (vmNameField?.count ?? 0) + vcpuSubject.count + 3 * 64 * (names.longestBitName + 3) + 512
    }

    deinit {
        dataBuffer.deallocate()
        lineBuffer.deallocate()
    }

    /// A line about the VM, for the plugin's own log lines: "heki: vm NAME: " + text.
    func vmLine(_ text: String) -> String { "heki: " + (vmLabel.map { $0 + ": " } ?? "") + text }

    // MARK: Name and level

    @inline(__always) func name(_ record: EventRecord) -> ByteString { eventNames[Int(record.kind.rawValue)] }

    func name(_ announcement: Announcement) -> ByteString {
        switch announcement {
        case .policy: return policyEventName
        case .migration: return migrationEventName
        case .reset: return resetEventName
        case .kernelCheck, .hostCannotCheck: return eventNames[Int(EventKind.capability.rawValue)]
        }
    }

    /// The log level of every event: what a guest does is info when
    /// allowed, a warning when refused or suspicious; what the VMM cannot
    /// have is an error when require-caps=on makes it fatal.
    func level(_ record: EventRecord) -> HekiLogLevel {
        switch record.payload {
        case .configure: HEKI_LOG_INFO
        case .denial, .weakPinning, .malformedExit, .suppressed: HEKI_LOG_WARNING
        case let .capability(event): event.result == 0 ? HEKI_LOG_INFO : failureLevel
        }
    }

    func level(_ announcement: Announcement) -> HekiLogLevel {
        switch announcement {
        case let .kernelCheck(check, _): check.profile != nil ? HEKI_LOG_INFO : failureLevel
        case .hostCannotCheck: HEKI_LOG_WARNING
        case .policy: HEKI_LOG_INFO
        case let .migration(report):
            switch report.action {
            case .blocked, .unblocked: HEKI_LOG_INFO
            case .saved: report.enforced.isEmpty && report.restoredOnly.isEmpty ? HEKI_LOG_INFO : HEKI_LOG_WARNING
            case .refused, .restored, .rejected: HEKI_LOG_WARNING
            }
        case .reset: HEKI_LOG_WARNING  // the reset asked for is not what happens, or boots under old pins
        }
    }

    private var failureLevel: HekiLogLevel { config.requireCaps ? HEKI_LOG_ERROR : HEKI_LOG_WARNING }

    // MARK: Data

    /// What `render` writes into the renderer's own buffer, emptied first:
    /// the data when no audit batch takes it.
    func data(_ render: (inout ByteWriter) -> ByteString) -> ByteString {
        dataBuffer.reset()
        return render(&dataBuffer)
    }

    /// The JSON data of `record`, NUL-terminated, in the renderer's buffer.
    func data(_ record: EventRecord, exits: ClaimedExits) -> ByteString {
        data { data(record, exits: exits, appendingTo: &$0) }
    }

    /// The JSON data of `announcement`, NUL-terminated, in the renderer's buffer.
    func data(_ announcement: Announcement) -> ByteString { data { data(announcement, appendingTo: &$0) } }

    /// Room for a bulk kind's data: a writer with this much left does not
    /// grow (the rare kinds and announcements grow it as they need).
    var dataRoom: Int { maximumBulkBytes }

    /// The JSON data of `record` appended to `bytes` (the renderer's buffer
    /// or the audit batch, which then needs no copy); returns it,
    /// NUL-terminated until the next append. `exits`: the claims' exit
    /// numbers, a configure's or denial's "exit-reason".
    func data(_ record: EventRecord, exits: ClaimedExits, appendingTo bytes: inout ByteWriter) -> ByteString {
        let start = bytes.count
        switch record.payload {
        case let .configure(event):
            bulkData(&bytes, vcpu: event.vcpu, event.register, exit: exits.configure) { data, names in
                bits(&data, BitsKeys.value, event.bits, names)
                bits(&data, BitsKeys.pinned, event.pinned, names)
                return event.verdict
            }
        case let .denial(event):
            bulkData(&bytes, vcpu: event.vcpu, event.register, exit: exits.denial) { data, names in
                bits(&data, BitsKeys.value, event.value, names)
                bits(&data, BitsKeys.pinned, event.pinned, names)
                bits(&data, BitsKeys.violated, event.violated, names)
                return event.verdict
            }
        case let .weakPinning(event):
            bulkData(&bytes, vcpu: event.vcpu, event.register, exit: nil) { data, names in
                bits(&data, BitsKeys.pinned, event.pinned, names)
                bits(&data, BitsKeys.required, event.required, names)
                bits(&data, BitsKeys.missing, event.missing, names)
                if event.vcpu == nil {  // the pin deadline's: no vCPU, the deadline instead
                    data.append(",\"deadline-seconds\":")
                    data.appendDecimal(UInt64(config.pinDeadline ?? 0))
                }
                return event.verdict
            }
        case let .malformedExit(event):
            vmObject(&bytes) { object in
                object.add("vcpu", UInt64(event.vcpu))
                if let register = event.register { object.add("register", register.name) }
                object.add("exit-reason", UInt64(event.exit))
                object.add("reason", hex: event.reason)
                object.add("problem", event.problem.name)
                object.add("kind", event.kind.name)
                object.add("verdict", Verdict.notHeki.name)
            }
        case let .capability(event):
            vmObject(&bytes) { object in
                object.add("kind", event.kind.name)
                object.add("capability", UInt64(event.capability))
                object.add("mask", hex: event.mask.rawValue)
                object.add("mask-bits", ControlRegister.allCases.filter { event.mask.contains($0) }.map(\.name))
                object.add("result", Int64(event.result))
                object.add("enabled", event.result == 0)
                object.add("required", config.requireCaps)
            }
        case let .suppressed(event):
            vmObject(&bytes) { object in
                object.add("event", event.coalesced.eventName)
                object.add("count", event.count)
            }
        }
        return bytes.terminated(from: start)
    }

    func data(_ announcement: Announcement, appendingTo bytes: inout ByteWriter) -> ByteString {
        let start = bytes.count
        vmObject(&bytes) { object in
            switch announcement {
            case let .kernelCheck(check, answers):
                kernelFields(&object, status: check.status, profile: check.profile, answers: answers)
            case .hostCannotCheck:
                kernelFields(&object, status: "host-cannot-check", profile: nil, answers: nil)
            case let .policy(policy, changed):
                object.add("changed", changed)
                object.add("on-denial", policy.onDenial.name)
                object.add("on-denial-cr0", policy.onDenial(.cr0).name)
                object.add("on-denial-cr4", policy.onDenial(.cr4).name)
                object.add("on-weak-pinning", policy.onWeakPinning.name)
                for register in ControlRegister.allCases {
                    let bits = policy.required(register)
                    object.add(named: "require-" + register.name, hex: bits)
                    object.add(named: "require-" + register.name + "-bits", register.bitNames.names(of: bits))
                }
                object.add("migration", policy.migration.name)
            case let .migration(report):
                object.add("action", report.action.rawValue)
                object.add("migration", report.choice.name)
                object.add("pins") { pins in
                    for register in ControlRegister.allCases {
                        pins.add(named: register.name) { entry in
                            pinOrigin(&entry, enforced: report.enforced[register],
                                      restoredOnly: report.restoredOnly[register], register)
                        }
                    }
                }
                object.add("reason", report.reason)
                object.add("source-vm-name", report.source?.vmName)
                object.add("source-profile", report.source?.profile)
                object.add("source-migration", report.source?.migration.name)
            case let .reset(report):
                object.add("cause", report.cause.name)
                for register in ControlRegister.allCases {
                    object.add(named: "pinned-" + register.name, hex: report.pinned[register])
                    object.add(named: "pinned-" + register.name + "-bits",
                               register.bitNames.names(of: report.pinned[register]))
                }
                object.add("unseen", report.unseen.map(\.name))
                object.add("on-reset", report.rule.rawValue)
                object.add("verdict", report.rule.verdict.name)
            }
        }
        return bytes.terminated(from: start)
    }

    /// One register's pins by origin: this kernel's, restored only.
    private func pinOrigin(_ entry: inout JSONWriter, enforced: UInt64, restoredOnly: UInt64,
                           _ register: ControlRegister) {
        entry.add("enforced", hex: enforced)
        entry.add("enforced-bits", register.bitNames.names(of: enforced))
        entry.add("restored-only", hex: restoredOnly)
        entry.add("restored-only-bits", register.bitNames.names(of: restoredOnly))
    }

    /// The object `body` writes into `bytes`, after the vm-name.
    private func vmObject(_ bytes: inout ByteWriter, _ body: (inout JSONWriter) -> Void) {
        JSONWriter.object(appendingTo: &bytes) { object in
            if let name = config.vmName { object.add("vm-name", name) }
            body(&object)
        }
    }

    private func kernelFields(_ object: inout JSONWriter, status: String, profile: Profile?, answers: KernelAnswers?) {
        object.add("abi", config.abiName)
        object.add("status", status)
        object.add("profile", profile?.name)
        if let answers { object.add("answers") { answers.write(into: &$0) } }
        object.add("required", config.requireCaps)
    }

    /// `{"vm-name":...,"vcpu":N,"register":"crN"`, `"exit-reason":N` when
    /// `exit` is given, then `fields`, then the verdict `fields` returns
    /// and `}`; no vcpu key when `vcpu` is nil. Each fixed part is one
    /// block copy of bytes made at init.
    @inline(__always)
    private func bulkData(_ bytes: inout ByteWriter, vcpu: UInt32?, _ register: ControlRegister, exit: UInt32?,
                          _ fields: (inout ByteWriter, UnsafePointer<BitNameBytes>) -> Verdict) {
        let register = Int(register.rawValue)
        // A local copy: the count stays in a register instead of memory.
        var data = bytes
        data.reserve(maximumBulkBytes)
        defer { bytes = data }
        let registerField = (exit == nil ? registerFields : exitRegisterFields)[register]
        if let vcpu {
            data.append(vcpuHead)
            data.appendDecimal(UInt64(vcpu))
            data.append(registerField)
        } else {
            data.append(vmHead)
            // `{` alone: the register is the first key, without its comma.
            if vmNameField == nil { data.append(droppingFirst: registerField) } else { data.append(registerField) }
        }
        if let exit { data.appendDecimal(UInt64(exit)) }
        // By address: the tables are a dozen words, not to be copied per call.
        let verdict = fields(&data, bitNames + register)
        data.append(verdictTails[Int(verdict.rawValue) + 1])
    }

    /// `,"NAME":"0x..."` then `,"NAME-bits":["name",...]`.
    @inline(__always)
    private func bits(_ data: inout ByteWriter, _ keys: BitsKeys, _ value: UInt64, _ names: UnsafePointer<BitNameBytes>) {
        data.append(keys.key)
        data.appendHexDigits(value)
        data.append(keys.listKey)
        names.pointee.appendList(value, to: &data)
    }

    // MARK: Log lines

    /// The log line of `record`, NUL-terminated.
    func message(_ record: EventRecord) -> UnsafePointer<CChar> {
        var message = lineBuffer
        message.reset()
        message.reserve(maximumBulkBytes)
        defer { lineBuffer = message }
        switch record.payload {
        case let .configure(event):
            appendVCPU(&message, event.vcpu)
            message.append(": guest pinned ")
            message.append(registerNames[Int(event.register.rawValue)])
            message.append(byte: 0x20)
            names(&message, event.bits, event.register)
            message.append(" (pinned now ")
            names(&message, event.pinned, event.register)
            message.append("), verdict ")
            message.append(verdictNames[Int(event.verdict.rawValue) + 1])
        case let .denial(event):
            appendVCPU(&message, event.vcpu)
            message.append(": KVM denied a ")
            message.append(registerNames[Int(event.register.rawValue)])
            message.append(" write of ")
            message.appendHex(event.value)
            message.append(" clearing ")
            names(&message, event.violated, event.register)
            message.append(", verdict ")
            message.append(verdictNames[Int(event.verdict.rawValue) + 1])
        case let .weakPinning(event):
            if let vcpu = event.vcpu {
                appendVCPU(&message, vcpu)
                message.append(": weak pinning of ")
            } else {
                message.append(vmSubject)
                message.append("weak pinning of ")
            }
            message.append(registerNames[Int(event.register.rawValue)])
            message.append(": ")
            names(&message, event.missing, event.register)
            message.append(" required but not pinned")
            if event.vcpu == nil {
                message.append(byte: 0x20)
                message.appendDecimal(UInt64(config.pinDeadline ?? 0))
                message.append(" s after start")
            }
            message.append(", verdict ")
            message.append(verdictNames[Int(event.verdict.rawValue) + 1])
        case let .malformedExit(event):
            appendVCPU(&message, event.vcpu)
            message.append(text: ": exit \(event.exit) (heki \(event.kind.name)) not claimed: \(event.problem.name), reason ")
            message.appendHex(event.reason)
        case let .capability(event):
            message.append(vmSubject)
            message.append(text: "KVM_ENABLE_CAP \(event.capability) (heki \(event.kind.name), mask \(event.mask.spelling)) "
                + (event.result == 0 ? "enabled" : "refused (\(event.result)); heki \(event.kind.name) exits will not be claimed"))
        case let .suppressed(event):
            message.append(vmSubject)
            message.append(text: "\(event.count) \(event.coalesced.eventName) events coalesced (rate limit \(config.rateLimit)/s)")
        }
        return message.cString()
    }

    func message(_ announcement: Announcement) -> UnsafePointer<CChar> {
        var message = lineBuffer
        message.reset()
        message.reserve(vmSubject.count)
        defer { lineBuffer = message }
        message.append(vmSubject)
        switch announcement {
        case let .kernelCheck(check, answers):
            message.append(text: check.describe(config: config, answers: answers))
        case .hostCannotCheck:
            message.append(text: "the host gives no KVM_CHECK_EXTENSION answers (HekiHost.check_extension, "
                + "heki-plugin 1.1): nothing enabled, no exit claimed")
        case let .policy(policy, changed):
            message.append(text: "policy " + (changed.isEmpty ? "set, unchanged" : "changed: " + changed.joined(separator: ", "))
                + "; now on-denial \(policy.onDenial.name), on-denial-cr0 \(policy.onDenial(.cr0).name), "
                + "on-denial-cr4 \(policy.onDenial(.cr4).name), on-weak-pinning \(policy.onWeakPinning.name), "
                + ControlRegister.allCases.map { register in
                    "require-\(register.name) " + register.bitNames.spelling(of: policy.required(register))
                }.joined(separator: ", ") + ", migration \(policy.migration.name)")
        case let .migration(report):
            message.append(text: "migration \(report.action.rawValue): " + report.reason)
        case let .reset(report):
            let pins = ControlRegister.allCases.map { register in
                "\(register.name) " + register.bitNames.spelling(of: report.pinned[register])
            }.joined(separator: ", ")
            let unseen = report.unseen.isEmpty ? "" : ", pins unseen for " + report.unseen.map(\.name).joined(separator: "+")
            message.append(text: "\(report.cause.name) reset of a pinned VM (\(pins)\(unseen)): on-reset \(report.rule.rawValue), "
                + (report.rule == .keepPins ? "reset in place: the pins stay in KVM and boot code cannot clear them"
                   : report.rule == .poweroff ? "powered off instead: a new VM starts without pins"
                   : "the VMM exits instead: a new VM starts without pins"))
        }
        return message.cString()
    }

    @inline(__always)
    private func appendVCPU(_ message: inout ByteWriter, _ vcpu: UInt32) {
        message.append(vcpuSubject)
        message.appendDecimal(UInt64(vcpu))
    }

    /// "none", or the names joined by "+".
    private func names(_ message: inout ByteWriter, _ value: UInt64, _ register: ControlRegister) {
        if value == 0 {
            message.append("none")
            return
        }
        var first = true
        bitNames[Int(register.rawValue)].forEachName(of: value) { name in
            if !first { message.append(byte: 0x2b) }
            first = false
            message.append(name)
        }
    }
}
