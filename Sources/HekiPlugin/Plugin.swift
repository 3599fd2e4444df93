import CBridge
import CGLib
import Synchronization

/// One VM's plugin: the policy it was started with, the pin ledger, the
/// counters, and the path from a vCPU's exit to the host's main loop.
final class Plugin {
    let config: Configuration
    let policy: Policy
    private let host: HekiHost
    private let context: OpaquePointer
    private let exits: ExitTable
    let ledger = PinLedger()
    let counters = Counters()
    let limiter: RateLimiter
    private let queue = EventQueue(capacity: Plugin.queueCapacity)
    private let renderer: EventRenderer
    private let writer: EventWriter
    private let audit: AuditLog?
    private var source: MainLoopSource!
    /// Per exit kind: 0 until KVM accepted the capability, then
    /// `enabledBit | granted mask`.
    private let grants: InlineArray<2, Atomic<UInt64>>
    /// Per exit kind: what KVM_ENABLE_CAP returned; `notReported` before.
    private let capResults: InlineArray<2, Atomic<Int64>>
    private static let enabledBit: UInt64 = 1 << 63
    static let notReported = Int64.min
    /// Records waiting for the main loop; enough for a burst at the default
    /// rate limit from every event kind, bounded whatever the guest does.
    static let queueCapacity = 4096

    // Main loop thread only.
    private var summaryDue: [UInt64?] = Array(repeating: nil, count: EventKind.allCases.count)
    private var dispatching = false
    private var freeRequested = false
    /// Set once the teardown's flush has begun: a free() from one of its
    /// callbacks must not start a second teardown (found by Fuzz/api).
    private var finishing = false

    init(host: HekiHost, config: Configuration) throws(OptionError) {
        self.config = config
        policy = Policy(config: config)
        self.host = host
        exits = ExitTable(configureExit: config.exitConfigure, denialExit: config.exitDenial)
        limiter = RateLimiter(limit: config.rateLimit)
        renderer = EventRenderer(config: config)
        writer = EventWriter(config: config)
        grants = InlineArray { _ in Atomic(0) }
        capResults = InlineArray { _ in Atomic(Plugin.notReported) }
        // The audit file first: it needs no context, so failing leaves nothing to undo.
        audit = try config.auditLogPath.map { path throws(OptionError) in try AuditLog(path: path) }
        context = g_main_context_ref(host.context ?? g_main_context_default())
        do {
            source = try MainLoopSource(context: context, opaque: Unmanaged.passUnretained(self).toOpaque()) { opaque in
                Unmanaged<Plugin>.fromOpaque(opaque!).takeUnretainedValue().dispatch()
            }
        } catch {
            g_main_context_unref(context)
            throw error
        }
    }

    // MARK: The vCPU side

    /// The path of one exit: decode, ledger, policy, record. Any vCPU
    /// thread; no lock, no allocation, no call into the host. Inlined into
    /// the export: one function, one prologue.
    @inline(__always)
    func handleExit(vcpu: UInt32, run: OpaquePointer) -> Verdict {
        switch exits.decode(run, granted: { grants[$0.rawValue].load(ordering: .acquiring) }) {
        case .foreign:
            return .notHeki
        case let .malformed(kind, reason, problem):
            counters.malformedExits.wrappingAdd(1, ordering: .relaxed)
            record(EventRecord(
                kind: .malformedExit, register: ControlRegister(reason: reason)?.rawValue ?? EventRecord.noRegister,
                verdict: .notHeki, detail: problem.rawValue, vcpu: vcpu,
                number: kind == .configure ? exits.configureExit : exits.denialExit,
                value: reason, extra: UInt64(kind.rawValue)))
            return .notHeki
        case let .configure(register, bits):
            let pinned = ledger.pin(bits, on: register)
            counters.count(.configure, register)
            let (verdict, missing) = policy.judgePin(on: register, pinnedNow: pinned)
            record(EventRecord(kind: .configure, register: register.rawValue, verdict: verdict, vcpu: vcpu,
                               number: exits.configureExit, value: bits, pinned: pinned))
            if missing != 0 {
                counters.count(.weakPinning, register)
                record(EventRecord(kind: .weakPinning, register: register.rawValue, verdict: verdict, vcpu: vcpu,
                                   number: exits.configureExit, value: policy.required(register),
                                   pinned: pinned, extra: missing))
            }
            return verdict
        case let .denial(register, value):
            let pinned = ledger.pins(register)
            counters.count(.denial, register)
            let (verdict, violated) = policy.judgeDenial(on: register, value: value, pinned: pinned)
            record(EventRecord(kind: .denial, register: register.rawValue, verdict: verdict, vcpu: vcpu,
                               number: exits.denialExit, value: value, pinned: pinned, extra: violated))
            return verdict
        }
    }

    /// Queues `record` for the main loop, or counts it for a summary when the
    /// rate limit or a full queue holds it back. Never blocks.
    @inline(__always)
    private func record(_ record: EventRecord) {
        if limiter.admit(record.kind) {
            // Stamped once a cell is reserved: a full queue costs no clock read.
            if queue.push(record, stampingTime: true) {
                source.wake()
                return
            }
        }
        if limiter.suppress(record.kind) { source.wake() }
    }

    // MARK: Capabilities

    /// The host reports KVM_ENABLE_CAP's result. -1: the VMM must not start.
    func capabilityResult(_ kind: ExitKind, kvmResult: Int32) -> Int32 {
        let mask = config.capMask(kind)
        capResults[kind.rawValue].store(Int64(kvmResult), ordering: .relaxed)
        grants[kind.rawValue].store(kvmResult == 0 ? Plugin.enabledBit | mask.rawValue : 0, ordering: .releasing)
        counters.capabilityReports.wrappingAdd(1, ordering: .relaxed)
        record(EventRecord(kind: .capability, detail: UInt8(kind.rawValue), number: config.capNumber(kind),
                           value: mask.rawValue, extra: UInt64(bitPattern: Int64(kvmResult))))
        return kvmResult != 0 && config.requireCaps ? -1 : 0
    }

    /// What KVM granted for `kind`; nil until it accepted the capability.
    @inline(__always)
    func grantedMask(_ kind: ExitKind) -> ExitReasonMask? {
        let grant = grants[kind.rawValue].load(ordering: .acquiring)
        return grant == 0 ? nil : ExitReasonMask(rawValue: grant & ~Plugin.enabledBit)
    }

    func capResult(_ kind: ExitKind) -> Int64? {
        let result = capResults[kind.rawValue].load(ordering: .relaxed)
        return result == Plugin.notReported ? nil : result
    }

    // MARK: The main loop side

    /// The GSource fired: deliver what the vCPUs queued, then any summary due.
    private func dispatch() -> Int32 {
        source.acknowledge()
        dispatching = true
        drain()
        summarise(force: false)
        dispatching = false
        if freeRequested {
            finish()
            Unmanaged.passUnretained(self).release()
        }
        return 1  // G_SOURCE_CONTINUE
    }

    /// Delivers what is queued. From a dispatch, at most one queue's worth:
    /// when vCPUs keep pushing, the loop gets back to its other sources and
    /// the source fires again at once (`wake`).
    private func drain(all: Bool = false) {
        var budget = Plugin.queueCapacity
        while all || budget > 0, let record = queue.pop() {
            deliver(record)
            budget -= 1
        }
        if !all && budget == 0 { source.wake() }
    }

    /// Emits HEKI_SUPPRESSED for each kind whose pending count is older than
    /// the current rate window (or all of them when `force`), and sets the
    /// source's timer for the next one due.
    private func summarise(force: Bool) {
        let now = RateLimiter.currentWindow()
        var next: UInt64? = nil
        for kind in EventKind.allCases where kind != .suppressed {
            let index = Int(kind.rawValue)
            if summaryDue[index] == nil, limiter.pendingCount(kind) > 0 { summaryDue[index] = now + 1 }
            guard let due = summaryDue[index] else { continue }
            if force || now >= due {
                summaryDue[index] = nil
                let count = limiter.takePending(kind)
                guard count > 0 else { continue }
                counters.addSummarised(kind, count)
                deliver(renderer.render(EventRecord(kind: .suppressed, detail: kind.rawValue, value: count,
                                                    timeMicros: Int64(g_get_real_time()))))
            } else {
                next = min(next ?? .max, due)
            }
        }
        if !force { source.setReadyTime(next.map { Int64($0) * 1_000_000 + 1_000 } ?? -1) }
    }

    /// Renders one queued record and hands it to every sink. The kinds a
    /// guest can cause in bulk go through the EventWriter's reused buffers.
    private func deliver(_ record: EventRecord) {
        guard EventWriter.handles(record.kind) else { return deliver(renderer.render(record)) }
        deliver(name: writer.eventNames[Int(record.kind.rawValue)].cString, data: writer.renderData(record),
                level: record.kind == .configure ? HEKI_LOG_INFO : HEKI_LOG_WARNING, time: record.timeMicros) { writer.renderMessage(record) }
    }

    private func deliver(_ event: RenderedEvent) {
        event.name.withCString { name in
            event.data.withCString { data in
                event.message.withCString { message in
                    deliver(name: name, data: data, level: event.level, time: event.timeMicros) { message }
                }
            }
        }
    }

    /// Hands one event to every sink: the host's event callback, the audit
    /// log, the log callback (the log line is made only when there is one).
    private func deliver(name: UnsafePointer<CChar>, data: UnsafePointer<CChar>, level: HekiLogLevel, time: Int64,
                         message: () -> UnsafePointer<CChar>) {
        counters.delivered.wrappingAdd(1, ordering: .relaxed)
        if let callback = host.event { callback(host.opaque, name, data) }
        if let audit {
            let (ok, transition) = audit.append(time: time, event: String(cString: name), data: String(cString: data))
            if !ok { counters.auditFailures.wrappingAdd(1, ordering: .relaxed) }
            if let transition { log(ok ? HEKI_LOG_INFO : HEKI_LOG_ERROR, "heki: " + transition) }
        }
        if let callback = host.log { callback(host.opaque, level, message()) }
    }

    private func log(_ level: HekiLogLevel, _ message: String) {
        guard let callback = host.log else { return }
        message.withCString { callback(host.opaque, level, $0) }
    }

    /// heki_plugin_free: main loop thread. Called from inside one of our own
    /// callbacks, the teardown waits until that dispatch unwinds.
    /// Called again from a callback of the teardown's own flush, it returns
    /// at once: the teardown already running completes.
    func free() {
        if dispatching || finishing {
            freeRequested = true
            return
        }
        finish()
        Unmanaged.passUnretained(self).release()
    }

    /// Detaches the source, then delivers everything still queued or
    /// counted: nothing is lost at teardown.
    private func finish() {
        finishing = true
        source.destroy()
        drain(all: true)
        summarise(force: true)
        g_main_context_unref(context)
    }
}

