import CHekiPlugin
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
    let host: HekiHost
    /// The host gave check_extension and enable_cap (a heki-plugin 1.1 host).
    let hostCanCheck: Bool
    private let context: OpaquePointer
    let ledger = PinLedger()
    let counters: Counters
    let limiter: RateLimiter
    /// Pins restored from a source, the blocker told to the host.
    let migration = MigrationState()
    private let queue: Queue
    /// Turns the queued records' stamp counters into the wall clock (main
    /// loop only, never reentered: no dynamic exclusivity checks).
    @exclusivity(unchecked) private var stamps = StampClock()
    private let renderer: EventRenderer
    private let audit: AuditLog?
    private let source: MainLoopSource
    /// Per exit kind: the exit claimed, the mask granted, KVM's result;
    /// nothing claimed until heki_plugin_enable_caps enabled the capability.
    private let claims = ExitClaims()
    /// The kernel check, written once by heki_plugin_enable_caps before
    /// `kernelChecked` is set; read from any thread after that.
    private var kernelReport: (answers: KernelAnswers, check: KernelCheck)? = nil
    private let kernelChecked = Atomic<Bool>(false)
    /// Set by whoever judges the required pins at boot first: the pin
    /// deadline (main loop) or the first denial (its vCPU).
    private let bootJudged = Atomic<Bool>(false)
    /// Records waiting for the main loop, per shard of vCPUs: enough for a
    /// burst at the default rate limit from every event kind, bounded
    /// whatever the guest does (16 shards of 4096 64-byte cells: 4 MiB of
    /// address space, touched only as far as records are queued).
    typealias Queue = EventQueue<4096>
    static var queueCapacity: Int { Queue.records }

    // Main loop thread only. The ones each dispatch reads are never
    // accessed overlapping (a callback's flush returns at once, its free
    // waits): no dynamic exclusivity checks, a few hundred instructions
    // per dispatch.
    @exclusivity(unchecked) private var summaryDue: [UInt64?] = Array(repeating: nil, count: EventKind.allCases.count)
    /// Events the main loop itself made (the kernel check, a policy
    /// change), in order, with the wall clock they were made at.
    @exclusivity(unchecked) private var announcements: [(event: Announcement, timeMicros: Int64)] = []
    /// Monotonic microseconds of the pin deadline; nil when none is running.
    @exclusivity(unchecked) private var deadlineDue: Int64? = nil
    private var started = false
    private var dispatching = false
    private var freeRequested = false
    /// Set once the teardown's flush has begun: a free() from one of its
    /// callbacks must not start a second teardown (found by Fuzz/api).
    private var finishing = false

    /// `hostCanCheck`: the host's struct has check_extension and enable_cap
    /// (its size covers them and both are set).
    init(host: HekiHost, hostCanCheck: Bool, config: Configuration) throws(StartError) {
        guard hostCanCheck || !config.requireCaps else {
            throw StartError("require-caps", "on needs a host that lets the plugin check the kernel (HekiHost.check_extension and enable_cap, heki-plugin 1.1)")
        }
        guard let queue = Queue() else {
            throw StartError(resource: "no memory for the event queue (\(ShardedCounts.shards) x \(Plugin.queueCapacity) records)")
        }
        self.queue = queue
        self.config = config
        policy = LivePolicy(config.policy)
        self.host = host
        self.hostCanCheck = hostCanCheck
        limiter = RateLimiter(limit: config.rateLimit)
        counters = Counters()
        renderer = EventRenderer(config: config)
        // The audit file first: it needs no context, so failing leaves nothing to undo.
        audit = try config.auditLogPath.map { path throws(StartError) in try AuditLog(path: path) }
        context = g_main_context_ref(host.context ?? g_main_context_default())
        do {
            source = try MainLoopSource(context: context)
        } catch {
            g_main_context_unref(context)
            throw error
        }
        source.attach(opaque: Unmanaged.passUnretained(self).toOpaque()) { opaque in
            Unmanaged<Plugin>.fromOpaque(opaque!).takeUnretainedValue().dispatch()
        }
        if !hostCanCheck {
            // Said once, at the first dispatch: nothing will be enabled.
            announce(.hostCannotCheck)
        }
    }

    // MARK: The vCPU side

    /// heki_plugin_handle_exit's body, one jump from the export: the
    /// plugin an argument (a method's self would be the callee-saved r13
    /// the C caller expects back) and the C verdict returned.
    @inline(never)
    static func handleExit(_ plugin: Plugin, vcpu: UInt32, run: OpaquePointer) -> HekiVerdict {
        plugin.handleExit(vcpu: vcpu, run: run).cValue
    }

    /// The path of one exit: decode, ledger, policy, record. Any vCPU
    /// thread; no lock, no allocation, no call into the host.
    @inline(always)
    func handleExit(vcpu: UInt32, run: OpaquePointer) -> Verdict {
        let configure = claims.claim(.configure)
        let denial = claims.claim(.denial)
        switch decodeExit(run, configure: configure, denial: denial) {
        case .foreign:
            return .notHeki
        case let .malformed(kind, reason, register, problem):
            counters.malformedExits.wrappingAdd(1, ordering: .relaxed)
            recordRare(.malformedExit(MalformedExitEvent(
                vcpu: vcpu, kind: kind, exit: (kind == .configure ? configure : denial).exit ?? 0,
                reason: reason, register: register, problem: problem)), vcpu: vcpu)
            return .notHeki
        case let .configure(register, bits):
            let policy = self.policy.exitPolicy(register)
            let pinned = ledger.pin(bits, on: register)
            let (verdict, missing) = policy.judgePin(pinnedNow: pinned)
            guard missing == 0 else {
                return recordWeakPin(vcpu: vcpu, register: register, bits: bits, pinned: pinned, policy: policy)
            }
            record(.configure(PinEvent(vcpu: vcpu, register: register, bits: bits, pinned: pinned,
                                       verdict: verdict)), vcpu: vcpu, register: register)
            return verdict
        case let .denial(register, value):
            let pinned = ledger.pins(register)
            guard bootJudged.load(ordering: .relaxed) else {
                return recordFirstDenial(vcpu: vcpu, register: register, value: value, pinned: pinned,
                                         configure: configure)
            }
            let verdict = self.policy.exitPolicy(register).judgeDenial()
            record(.denial(DenialEvent(vcpu: vcpu, register: register, value: value, pinned: pinned,
                                       verdict: verdict)), vcpu: vcpu, register: register)
            return verdict
        }
    }

    /// A pin that leaves required bits unpinned: its configure event, then
    /// the weak pinning. Out of line, and judged again from the policy
    /// word, so the exit path keeps nothing live across a call.
    @inline(never)
    private func recordWeakPin(vcpu: UInt32, register: ControlRegister, bits: UInt64, pinned: UInt64,
                               policy: ExitPolicy) -> Verdict {
        let (verdict, missing) = policy.judgePin(pinnedNow: pinned)
        record(.configure(PinEvent(vcpu: vcpu, register: register, bits: bits, pinned: pinned, verdict: verdict)),
               vcpu: vcpu, register: register)
        record(.weakPinning(WeakPinningEvent(vcpu: vcpu, register: register, pinned: pinned, required: policy.required,
                                             missing: missing, verdict: verdict)), vcpu: vcpu, register: register)
        return verdict
    }

    /// A denial means the guest has booted far enough to pin: judge the
    /// registers it never pinned now if the deadline has not. The denial's
    /// own verdict wins unless it is resume. Both from one whole policy.
    /// Out of line, recording the denial too: this happens once per VM, and
    /// the exit path keeps nothing live across a call.
    @inline(never)
    private func recordFirstDenial(vcpu: UInt32, register: ControlRegister, value: UInt64, pinned: UInt64,
                                   configure: Claim) -> Verdict {
        let policy = self.policy.current()
        var verdict = policy.judgeDenial(on: register)
        let weak = judgeBoot(vcpu: vcpu, exit: configure, policy: policy)
        if verdict == .resume { verdict = weak }
        record(.denial(DenialEvent(vcpu: vcpu, register: register, value: value, pinned: pinned, verdict: verdict)),
               vcpu: vcpu, register: register)
        return verdict
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
            recordRare(.weakPinning(WeakPinningEvent(vcpu: vcpu, register: register, pinned: 0, required: required,
                                                     missing: required, verdict: verdict)),
                       vcpu: vcpu ?? 0, register: register)
        }
        return verdict
    }

    /// Queues `record` for the main loop, or counts it for a summary when the
    /// rate limit or a full queue holds it back: either way one count (the
    /// queue's per-slot count or the limiter's held-back count), which is
    /// what `eventTotal` adds up. Never blocks. `vcpu` picks the queue's
    /// and the counts' shard; `register` is the event's, for the kinds
    /// counted per register.
    @inline(always)
    private func record(_ payload: EventPayload, vcpu: UInt32, register: ControlRegister? = nil) {
        let record = EventRecord(payload: payload)
        if limiter.admit(record.kind) {
            // Stamped once a cell is reserved: a full queue costs no clock read.
            let push = queue.push(record, vcpu: vcpu, counting: RateLimiter.slot(record.kind, register), stamping: true)
            if push != .queued { pushed(push, record.kind, vcpu: vcpu, register: register) }
            return
        }
        if limiter.suppress(record.kind, register: register, vcpu: vcpu) { source.wake() }
    }

    /// A push that was the first after a drain (signal the main loop), or
    /// that found the shard full (count the record as held back). Out of
    /// line: the exit path keeps nothing live across the queue for it.
    @inline(never)
    private func pushed(_ push: Queue.Push, _ kind: EventKind, vcpu: UInt32, register: ControlRegister?) {
        if push == .queuedFirst {
            source.signal()
        } else if limiter.suppress(kind, register: register, vcpu: vcpu) {
            source.wake()
        }
    }

    /// Every event of `kind` (.configure, .denial or .weakPinning) on
    /// `register` this VM saw, and its migration source before it.
    func eventTotal(_ kind: EventKind, _ register: ControlRegister) -> UInt64 {
        counters.total(kind, register, queued: queue.queued(RateLimiter.slot(kind, register)), heldBackBy: limiter)
    }

    /// `record` out of line, for the events no storm is made of: the exit
    /// path inlines only its configure and denial.
    @inline(never)
    private func recordRare(_ payload: EventPayload, vcpu: UInt32, register: ControlRegister? = nil) {
        record(payload, vcpu: vcpu, register: register)
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
        announce(.kernelCheck(check, answers))

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
            claims.record(kind, result: result, numbers: numbers, granted: mask)
            if result != 0 && config.requireCaps && failure == nil {
                failure = "heki-plugin: require-caps=on: KVM refused capability \(cap) (heki \(kind.name), mask \(mask.spelling)): \(errorName(result))"
            }
            counters.capabilityReports.wrappingAdd(1, ordering: .relaxed)
            recordRare(.capability(CapabilityEvent(kind: kind, capability: cap, mask: mask, result: result)), vcpu: 0)
        }
        return failure
    }

    /// ABI 1.0's report: changes nothing (heki_plugin_enable_caps reports).
    func legacyCapabilityResult(_ kind: ExitKind, kvmResult: Int32) -> Int32 {
        claim(kind).isClaimed && kvmResult == 0 ? 0 : -1
    }

    @inline(__always)
    func claim(_ kind: ExitKind) -> Claim { claims.claim(kind) }

    /// The kernel check's answers and outcome; nil before it ran.
    var kernel: (answers: KernelAnswers, check: KernelCheck)? {
        kernelChecked.load(ordering: .acquiring) ? kernelReport : nil
    }

    /// The verified profile's numbers; nil before the check or without one.
    var verifiedNumbers: HekiNumbers? {
        if case let .heki(_, numbers)? = kernel?.check { return numbers }
        return nil
    }

    func capResult(_ kind: ExitKind) -> Int64? { claims.result(kind) }

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
        announce(.policy(new, changed: old.changedKeys(to: new)))
        return nil
    }

    func announce(_ event: Announcement) {
        announcements.append((event, Int64(g_get_real_time())))
        source.wake()
    }

    // MARK: The main loop side

    /// The GSource fired: deliver what the vCPUs queued, then any summary due.
    /// heki_plugin_flush: what the vCPUs queued, delivered now, before the
    /// host reports a verdict's consequences. Inside one of our own
    /// callbacks (a dispatch, a flush, the teardown) it does nothing.
    func flush() { flush(then: nil) }

    /// `last`: announced after everything made before it, the vCPUs'
    /// whole queue included (a reset's HEKI_RESET after the denial that
    /// asked for it, and after the kernel check no dispatch delivered
    /// yet); from inside a callback, at the next dispatch. A free from one
    /// of the callbacks ends the plugin when this returns.
    func flush(then last: Announcement?) {
        guard !dispatching, !finishing else {
            if let last { announce(last) }
            return
        }
        let made = last == nil ? 0 : Int64(g_get_real_time())  // `last`'s time: now, not after the queue
        asDispatch {
            deliverAnnouncements()
            // A reset comes with every vCPU stopped: the queue has an end.
            drain(all: last != nil)
            if let last {
                announcements.append((last, made))
                deliverAnnouncements()
            }
            if tellMigrationBlocker() { deliverAnnouncements() }
        }
    }

    private func dispatch() -> Int32 {
        source.acknowledge()
        asDispatch {
            var deadlineVerdict = Verdict.resume
            if let due = deadlineDue, Int64(g_get_monotonic_time()) >= due {
                deadlineDue = nil
                deadlineVerdict = judgeBoot(vcpu: nil, exit: claim(.configure), policy: policy.current())
            }
            deliverAnnouncements()
            drain()
            // After the pin's event went out; its own event follows.
            if tellMigrationBlocker() { deliverAnnouncements() }
            // After the HEKI_WEAK_PINNING event went out.
            if deadlineVerdict != .resume { apply(deadlineVerdict) }
            // The earlier of the next summary and the deadline (no array: no allocation per dispatch).
            let summary = summarise(force: false)
            let next = summary.map { min($0, deadlineDue ?? .max) } ?? deadlineDue
            source.setReadyTime(next ?? -1)
        }
        return 1  // G_SOURCE_CONTINUE
    }

    /// Runs `body`, which calls the host back: a heki_plugin_free from one
    /// of those callbacks waits until `body` is done, then tears down.
    private func asDispatch(_ body: () -> Void) {
        dispatching = true
        body()
        flushAudit()
        dispatching = false
        if freeRequested { finish() }
    }

    /// A verdict reached on the main loop goes to the host's apply_verdict.
    private func apply(_ verdict: Verdict) {
        flushAudit()  // the host may end the process: the lines before it are on disk
        if let applyVerdict = host.apply_verdict {
            applyVerdict(host.opaque, verdict.cValue)
        } else {
            log(HEKI_LOG_ERROR, renderer.vmLine("verdict \(verdict.name) not applied: the host has no apply_verdict"))
        }
    }

    private func deliverAnnouncements() {
        let pending = announcements
        announcements.removeAll()
        for (event, time) in pending {
            deliver(name: renderer.name(event), time: time, data: { renderer.data(event, appendingTo: &$0) },
                    level: { renderer.level(event) }, message: { renderer.message(event) })
        }
    }

    /// Delivers what is queued: in the shards pushes named since the last
    /// drain and in those an earlier drain left unfinished (a shard with
    /// records is one or the other). From a dispatch, at most one queue's worth: when
    /// vCPUs keep pushing, the loop gets back to its other sources and the
    /// source fires again at once (`wake`).
    private func drain(all: Bool = false) {
        queue.expect(queue.takeWoken())
        var budget = Plugin.queueCapacity
        // Only the audit line has a time: without one, no stamp is converted.
        var anchored = audit == nil
        // Once: claims are made on this thread, before any exit they claim.
        let exits = claims.exits()
        while all || budget > 0, var record = queue.pop() {
            if !anchored {  // once per drain that has records
                stamps.anchor()
                anchored = true
            }
            if audit != nil { record.timeMicros = stamps.micros(of: UInt64(bitPattern: record.timeMicros)) }
            deliver(record, exits: exits)
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
        limiter.reopen(now)
        var next: UInt64? = nil
        for kind in EventKind.allCases where kind != .suppressed {
            let index = Int(kind.rawValue)
            if summaryDue[index] == nil, force || limiter.mayHavePending(kind), limiter.pendingCount(kind) > 0 {
                summaryDue[index] = now + 1
            }
            guard let due = summaryDue[index] else { continue }
            if force || now >= due {
                summaryDue[index] = nil
                let count = limiter.takePending(kind)
                guard count > 0 else { continue }
                counters.addSummarised(kind, count)
                deliver(EventRecord(payload: .suppressed(SuppressedEvent(coalesced: kind, count: count)),
                                    timeMicros: Int64(g_get_real_time())), exits: claims.exits())
            } else {
                next = min(next ?? .max, due)
            }
        }
        // The windows are the coarse clock's seconds, up to a tick behind.
        return next.map { Int64($0) * 1_000_000 + 1_000 + RateLimiter.coarseLagMicros }
    }

    /// Renders one record and hands it to every sink. Inlined: drain's
    /// loop makes no call of its own per record.
    @inline(__always)
    private func deliver(_ record: EventRecord, exits: ClaimedExits) {
        deliver(name: renderer.name(record), time: record.timeMicros,
                data: { renderer.data(record, exits: exits, appendingTo: &$0) },
                level: { renderer.level(record) }, message: { renderer.message(record) })
    }

    /// Hands one event to every sink: the host's event callback, the audit
    /// log, the log callback (its level and line are made only when there is one).
    /// `data` appends the event's JSON to a buffer: with an audit log, its
    /// batch, so the host's callback reads the line's own bytes (no copy).
    @inline(__always)
    private func deliver(name: ByteString, time: Int64, data: (inout ByteWriter) -> ByteString,
                         level: () -> HekiLogLevel, message: () -> UnsafePointer<CChar>) {
        // One writer (the main loop): a plain add, no locked instruction.
        counters.delivered.store(counters.delivered.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        let event = host.event, opaque = host.opaque
        if audit != nil {
            // `self` holds the log for the whole call: no retain and release per event.
            let outcome = Unmanaged.passUnretained(audit.unsafelyUnwrapped)._withUnsafeGuaranteedRef { audit in
                audit.append(time: time, event: name, room: renderer.dataRoom, data: data) { data in
                    if let event { event(opaque, name.cString, data.cString) }
                }
            }
            if let outcome { report(outcome) }
        } else if let event {
            event(opaque, name.cString, renderer.data(data).cString)
        }
        if let callback = host.log { callback(host.opaque, level(), message()) }
    }

    /// Writes the audit lines of this dispatch (one write), if any.
    private func flushAudit() {
        if let audit, let outcome = audit.flush() { report(outcome) }
    }

    private func report(_ outcome: AuditLog.Outcome) {
        if outcome.failed > 0 { counters.auditFailures.wrappingAdd(UInt64(outcome.failed), ordering: .relaxed) }
        if let transition = outcome.transition { log(outcome.failed == 0 ? HEKI_LOG_INFO : HEKI_LOG_ERROR, "heki: " + transition) }
    }

    func log(_ level: HekiLogLevel, _ message: String) {
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
    }

    /// Detaches the source, then delivers everything still queued or
    /// counted: nothing is lost at teardown. Drops the reference the host
    /// held: nothing may touch `self` after it.
    private func finish() {
        finishing = true
        source.destroy()
        deliverAnnouncements()
        drain(all: true)
        summarise(force: true)
        flushAudit()
        g_main_context_unref(context)
        Unmanaged.passUnretained(self).release()
    }
}

/// "Invalid argument (-22)" for a -errno result.
private func errorName(_ result: Int32) -> String {
    result < 0 ? "\(String(cString: strerror(-result))) (\(result))" : "\(result)"
}
