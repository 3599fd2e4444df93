import CBridge
import CGLib
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One VM's plugin: the policy it was started with, the pin ledger, the
/// counters, and the path from a vCPU's exit to the host's main loop.
final class Plugin {
    let config: Configuration
    /// The policy in force (heki_plugin_set_policy replaces it).
    let policy: LivePolicy
    private let host: HekiHost
    /// The host gave check_extension and enable_cap (a heki-plugin 1.1 host).
    let hostCanCheck: Bool
    private let context: OpaquePointer
    let ledger = PinLedger()
    let counters = Counters()
    let limiter: RateLimiter
    private let queue = EventQueue(capacity: Plugin.queueCapacity)
    private let renderer: EventRenderer
    private let writer: EventWriter
    private let audit: AuditLog?
    private var source: MainLoopSource!
    /// Per exit kind: the exit number claimed and the mask KVM granted
    /// (`Claim`); none until heki_plugin_enable_caps enabled the capability.
    private let claims: InlineArray<2, Atomic<UInt64>>
    /// Per exit kind: what KVM_ENABLE_CAP returned; `notReported` before.
    private let capResults: InlineArray<2, Atomic<Int64>>
    static let notReported = Int64.min
    /// The kernel check, written once by heki_plugin_enable_caps before
    /// `kernelChecked` is set; read from any thread after that.
    private var kernelReport: (answers: KernelAnswers, check: KernelCheck)? = nil
    private let kernelChecked = Atomic<Bool>(false)
    /// Set by whoever judges the required pins at boot first: the pin
    /// deadline (main loop) or the first denial (its vCPU).
    private let bootJudged = Atomic<Bool>(false)
    /// Records waiting for the main loop; enough for a burst at the default
    /// rate limit from every event kind, bounded whatever the guest does.
    static let queueCapacity = 4096

    // Main loop thread only.
    private var summaryDue: [UInt64?] = Array(repeating: nil, count: EventKind.allCases.count)
    /// Events the main loop itself made (the kernel check), in order.
    private var announcements: [RenderedEvent] = []
    /// Monotonic microseconds of the pin deadline; nil when none is running.
    private var deadlineDue: Int64? = nil
    private var started = false
    private var dispatching = false
    private var freeRequested = false
    /// Set once the teardown's flush has begun: a free() from one of its
    /// callbacks must not start a second teardown (found by Fuzz/api).
    private var finishing = false

    /// `hostCanCheck`: the host's struct has check_extension and enable_cap
    /// (its size covers them and both are set).
    init(host: HekiHost, hostCanCheck: Bool, config: Configuration) throws(OptionError) {
        guard hostCanCheck || !config.requireCaps else {
            throw OptionError("require-caps", "on needs a host that lets the plugin check the kernel (HekiHost.check_extension and enable_cap, heki-plugin 1.1)")
        }
        self.config = config
        policy = LivePolicy(config.policy)
        self.host = host
        self.hostCanCheck = hostCanCheck
        limiter = RateLimiter(limit: config.rateLimit)
        renderer = EventRenderer(config: config)
        writer = EventWriter(config: config)
        claims = InlineArray { _ in Atomic(Claim.none.rawValue) }
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
        if !hostCanCheck {
            // Said once, at the first dispatch: nothing will be enabled.
            announcements.append(renderer.renderHostCannotCheck())
            source.wake()
        }
    }

    // MARK: The vCPU side

    /// The path of one exit: decode, ledger, policy, record. Any vCPU
    /// thread; no lock, no allocation, no call into the host. Inlined into
    /// the export: one function, one prologue.
    @inline(__always)
    func handleExit(vcpu: UInt32, run: OpaquePointer) -> Verdict {
        let configure = Claim(rawValue: claims[ExitKind.configure.rawValue].load(ordering: .acquiring))
        let denial = Claim(rawValue: claims[ExitKind.denial.rawValue].load(ordering: .acquiring))
        switch decodeExit(run, configure: configure, denial: denial) {
        case .foreign:
            return .notHeki
        case let .malformed(kind, reason, problem):
            counters.malformedExits.wrappingAdd(1, ordering: .relaxed)
            record(EventRecord(
                kind: .malformedExit, register: ControlRegister(reason: reason)?.rawValue ?? EventRecord.noRegister,
                verdict: .notHeki, detail: problem.rawValue, vcpu: vcpu,
                number: (kind == .configure ? configure : denial).exit ?? 0,
                value: reason, extra: UInt64(kind.rawValue)))
            return .notHeki
        case let .configure(register, bits):
            let policy = self.policy.current()
            let pinned = ledger.pin(bits, on: register)
            counters.count(.configure, register)
            let (verdict, missing) = policy.judgePin(on: register, pinnedNow: pinned)
            let number = configure.exit ?? 0
            record(EventRecord(kind: .configure, register: register.rawValue, verdict: verdict, vcpu: vcpu,
                               number: number, value: bits, pinned: pinned))
            if missing != 0 {
                counters.count(.weakPinning, register)
                record(EventRecord(kind: .weakPinning, register: register.rawValue, verdict: verdict, vcpu: vcpu,
                                   number: number, value: policy.required(register),
                                   pinned: pinned, extra: missing))
            }
            return verdict
        case let .denial(register, value):
            let policy = self.policy.current()
            let pinned = ledger.pins(register)
            counters.count(.denial, register)
            var (verdict, violated) = policy.judgeDenial(on: register, value: value, pinned: pinned)
            // A denial means the guest has booted far enough to pin: judge
            // the registers it never pinned now if the deadline has not. The
            // denial's own verdict wins unless it is resume.
            if !bootJudged.load(ordering: .relaxed) {
                let weak = judgeBoot(vcpu: vcpu, exit: configure, policy: policy)
                if verdict == .resume { verdict = weak }
            }
            record(EventRecord(kind: .denial, register: register.rawValue, verdict: verdict, vcpu: vcpu,
                               number: denial.exit ?? 0, value: value, pinned: pinned, extra: violated))
            return verdict
        }
    }

    /// Once per VM: every register with required bits whose configure exits
    /// are enabled and that has no pin at all is weakly pinned; returns
    /// on-weak-pinning if one is, else resume. `vcpu` nil: the deadline.
    /// Registers pinned at least once were judged at their pins.
    @inline(never)
    private func judgeBoot(vcpu: UInt32?, exit configure: Claim, policy: Policy) -> Verdict {
        guard !bootJudged.exchange(true, ordering: .relaxed) else { return .resume }
        var verdict = Verdict.resume
        for register in ControlRegister.allCases {
            let required = policy.required(register)
            guard required != 0, configure.granted.contains(register), ledger.pins(register) == 0 else { continue }
            verdict = policy.onWeakPinning
            counters.count(.weakPinning, register)
            record(EventRecord(kind: .weakPinning, register: register.rawValue, verdict: verdict,
                               detail: vcpu == nil ? EventRecord.atDeadline : 0, vcpu: vcpu ?? 0,
                               number: configure.exit ?? 0, value: required, pinned: 0, extra: required))
        }
        return verdict
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

    /// heki_plugin_enable_caps: checks the kernel through the host, then
    /// enables the verified profile's capabilities. Returns nil, or the
    /// reason the VMM must not start.
    func enableCaps() -> String? {
        guard hostCanCheck, let checkExtension = host.check_extension, let enableCap = host.enable_cap else {
            return "heki-plugin: the host cannot have the kernel checked (HekiHost.check_extension and enable_cap, heki-plugin 1.1)"
        }
        guard !kernelChecked.load(ordering: .acquiring) else {
            return "heki-plugin: heki_plugin_enable_caps was already called"
        }
        var answers = KernelAnswers()
        for cap in KernelCheck.capsToProbe(config) { answers.record(cap, checkExtension(host.opaque, cap)) }
        let check = KernelCheck(config: config, answers: answers)
        kernelReport = (answers, check)
        kernelChecked.store(true, ordering: .releasing)
        announce(renderer.renderKernelCheck(check, answers: answers))

        guard case let .heki(_, numbers) = check else {
            return config.requireCaps
                ? "heki-plugin: require-caps=on: " + check.describe(config: config, answers: answers) : nil
        }
        var failure: String? = nil
        for kind in ExitKind.allCases {
            let mask = config.capMask(kind)
            guard mask != [] else { continue }  // configure-exits=none, denial-exits=none
            let cap = numbers.cap(kind)
            let result = enableCap(host.opaque, cap, mask.rawValue)
            capResults[kind.rawValue].store(Int64(result), ordering: .relaxed)
            if result == 0 {
                claims[kind.rawValue].store(Claim(exit: numbers.exit(kind), granted: mask).rawValue, ordering: .releasing)
            } else if config.requireCaps && failure == nil {
                failure = "heki-plugin: require-caps=on: KVM refused capability \(cap) (heki \(kind.name), mask \(mask.spelling)): \(errorName(result))"
            }
            counters.capabilityReports.wrappingAdd(1, ordering: .relaxed)
            record(EventRecord(kind: .capability, detail: UInt8(kind.rawValue), number: cap,
                               value: mask.rawValue, extra: UInt64(bitPattern: Int64(result))))
        }
        return failure
    }

    /// ABI 1.0's report: changes nothing (heki_plugin_enable_caps reports).
    func legacyCapabilityResult(_ kind: ExitKind, kvmResult: Int32) -> Int32 {
        claim(kind).isClaimed && kvmResult == 0 ? 0 : -1
    }

    @inline(__always)
    func claim(_ kind: ExitKind) -> Claim {
        Claim(rawValue: claims[kind.rawValue].load(ordering: .acquiring))
    }

    /// The kernel check's answers and outcome; nil before it ran.
    var kernel: (answers: KernelAnswers, check: KernelCheck)? {
        kernelChecked.load(ordering: .acquiring) ? kernelReport : nil
    }

    /// The verified profile's numbers; nil before the check or without one.
    var verifiedNumbers: HekiNumbers? {
        if case let .heki(_, numbers)? = kernel?.check { return numbers }
        return nil
    }

    func capResult(_ kind: ExitKind) -> Int64? {
        let result = capResults[kind.rawValue].load(ordering: .relaxed)
        return result == Plugin.notReported ? nil : result
    }

    /// heki_plugin_start: the guest runs; the pin deadline starts.
    func start() {
        guard !started else { return }
        started = true
        // Runs even when nothing is required yet: heki_plugin_set_policy
        // may require bits before it passes.
        guard let seconds = config.pinDeadline else { return }
        deadlineDue = Int64(g_get_monotonic_time()) + Int64(seconds) * 1_000_000
        source.wake()  // the dispatch sets the timer
    }

    /// heki_plugin_set_policy: validates `arguments` against the policy in
    /// force, publishes the result and reports it. Returns nil, or why
    /// nothing changed.
    func setPolicy(_ arguments: [String]) -> String? {
        let old = policy.current()
        let new: Policy
        do {
            new = try Options.parsePolicy(arguments, onto: old, config: config)
        } catch {
            return error.message
        }
        policy.replace(with: new)
        announce(renderer.renderPolicy(new, changed: old.changedKeys(to: new)))
        return nil
    }

    private func announce(_ event: RenderedEvent) {
        announcements.append(event)
        source.wake()
    }

    // MARK: The main loop side

    /// The GSource fired: deliver what the vCPUs queued, then any summary due.
    private func dispatch() -> Int32 {
        source.acknowledge()
        dispatching = true
        var deadlineVerdict = Verdict.resume
        if let due = deadlineDue, Int64(g_get_monotonic_time()) >= due {
            deadlineDue = nil
            deadlineVerdict = judgeBoot(vcpu: nil, exit: claim(.configure), policy: policy.current())
        }
        deliverAnnouncements()
        drain()
        // After the HEKI_WEAK_PINNING event went out.
        if deadlineVerdict != .resume { apply(deadlineVerdict) }
        let next = [summarise(force: false), deadlineDue].compactMap { $0 }.min()
        source.setReadyTime(next ?? -1)
        dispatching = false
        if freeRequested {
            finish()
            Unmanaged.passUnretained(self).release()
        }
        return 1  // G_SOURCE_CONTINUE
    }

    /// A verdict reached on the main loop goes to the host's apply_verdict.
    private func apply(_ verdict: Verdict) {
        if let applyVerdict = host.apply_verdict {
            applyVerdict(host.opaque, verdict.cValue)
        } else {
            log(HEKI_LOG_ERROR, "heki: " + renderer.subjectPrefix
                + "verdict \(verdict.name) not applied: the host has no apply_verdict")
        }
    }

    private func deliverAnnouncements() {
        let pending = announcements
        announcements.removeAll()
        for event in pending { deliver(event) }
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
    /// the current rate window (or all of them when `force`); returns when
    /// the next one is due (monotonic microseconds), if any.
    @discardableResult
    private func summarise(force: Bool) -> Int64? {
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
        return next.map { Int64($0) * 1_000_000 + 1_000 }
    }

    /// Renders one queued record and hands it to every sink. The kinds a
    /// guest can cause in bulk go through the EventWriter's reused buffers.
    private func deliver(_ record: EventRecord) {
        guard EventWriter.handles(record) else { return deliver(renderer.render(record)) }
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
        deliverAnnouncements()
        drain(all: true)
        summarise(force: true)
        g_main_context_unref(context)
    }
}

/// "Invalid argument (-22)" for a -errno result.
private func errorName(_ result: Int32) -> String {
    result < 0 ? "\(String(cString: strerror(-result))) (\(result))" : "\(result)"
}
