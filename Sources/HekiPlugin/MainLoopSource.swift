import CGLib
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The plugin's GSource on the host's GMainContext: an eventfd that vCPU
/// threads signal (a non-blocking write, at most once per drain: the
/// queue's shards have wake flags of their own, `wake` has this one), plus
/// a ready time for the next HEKI_SUPPRESSED summary. Dispatch runs on the
/// thread that runs the context.
final class MainLoopSource {
    private let eventFD: Int32
    private let source: UnsafeMutablePointer<GSource>
    private let context: OpaquePointer
    /// Set by the first producer after a drain; cleared by the consumer
    /// before it drains, so no push is ever left unseen.
    private let wakePending = Atomic<Bool>(false)

    /// Made before its owner is whole (so the owner holds it in a `let`,
    /// read on the exit path without a retain); `attach` starts it.
    init(context: OpaquePointer) throws(StartError) {
        let fd = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard fd >= 0 else {
            throw StartError(resource: "eventfd: \(String(cString: strerror(errno)))")
        }
        eventFD = fd
        self.context = context
        source = g_source_new(MainLoopSource.funcs, UInt32(MemoryLayout<GSource>.size))
        g_source_set_name(source, "heki-plugin")
        g_source_add_unix_fd(source, fd, G_IO_IN)
    }

    /// `dispatch(opaque)` runs each time the source fires, from now on.
    func attach(opaque: UnsafeMutableRawPointer, dispatch: @convention(c) (UnsafeMutableRawPointer?) -> Int32) {
        g_source_set_callback(source, dispatch, opaque, nil)
        g_source_attach(source, context)
    }

    /// GLib keeps a pointer to the funcs for the source's lifetime.
    private nonisolated(unsafe) static let funcs: UnsafeMutablePointer<GSourceFuncs> = {
        let funcs = UnsafeMutablePointer<GSourceFuncs>.allocate(capacity: 1)
        funcs.initialize(to: GSourceFuncs(
            prepare: nil, check: nil,
            dispatch: { _, callback, userData in callback?(userData) ?? 1 },
            finalize: nil, closure_callback: nil, closure_marshal: nil))
        return funcs
    }()

    /// Any thread: makes the main loop dispatch soon. Never blocks.
    @inline(__always)
    func wake() {
        if !wakePending.exchange(true, ordering: .acquiringAndReleasing) { signal() }
    }

    /// Any thread: makes the main loop dispatch now, for a flag that was
    /// just set (a queue shard's). Out of line: the exit path's frame stays
    /// free of the write's buffer.
    @inline(never)
    func signal() {
        var one: UInt64 = 1
        _ = write(eventFD, &one, 8)
    }

    /// Main loop thread, at the start of a dispatch, before draining:
    /// re-arms the wake-up. The eventfd is read before the flag is cleared
    /// (and before the queue's flags are, `EventQueue.takeWoken`):
    /// the other order loses a wake-up (a producer sets the flag and writes,
    /// the read swallows that write after the clear, the next producer sees
    /// the flag still set and writes nothing, and its record waits).
    func acknowledge() {
        var counter: UInt64 = 0
        _ = read(eventFD, &counter, 8)
        _ = wakePending.exchange(false, ordering: .acquiringAndReleasing)
    }

    /// Main loop thread: dispatch again at `monotonicMicros` (-1: no timer).
    func setReadyTime(_ monotonicMicros: Int64) {
        g_source_set_ready_time(source, gint64(monotonicMicros))
    }

    /// Main loop thread: detaches the source; dispatch never runs again.
    func destroy() {
        g_source_destroy(source)
        g_source_unref(source)
        close(eventFD)
    }
}
