import CGLib
#if canImport(Glibc)
import Glibc
#endif

/// The JSON-lines audit file: opened append-only, created 0600, never
/// through a symlink. Written on the main loop thread only.
///
/// Lines are batched: `append` adds a line to a buffer, `flush` writes the
/// buffer with one write(2) (the plugin flushes at the end of every
/// dispatch, flush and teardown, and before a verdict it applies itself);
/// a batch that would outgrow `batchBytes` is written first.
///
/// Failure rule: a line that cannot be written whole is dropped (a fragment
/// a short write left is cut off again) and counted
/// (`Counters.auditFailures`); the first failure and each recovery are
/// logged once, so a full disk cannot flood the log. Counters stay exact.
final class AuditLog {
    let path: String
    private let descriptor: Int32
    private(set) var failing = false
    // Main loop only, never reentered: no dynamic exclusivity checks.
    /// The lines not written yet, and how many.
    @exclusivity(unchecked) private var batch: ByteWriter
    @exclusivity(unchecked) private var batchLines = 0
    @exclusivity(unchecked) private var clock = AuditTimestamp()

    /// One write per this many bytes at most: large enough that the system
    /// call is a small part of a line's cost, small enough to stay in cache.
    static let batchBytes = 64 * 1024

    /// What a write of the batch did: lines dropped, and the text to log
    /// when this write starts a run of failures or ends one.
    struct Outcome {
        let failed: Int
        let transition: String?
    }

    init(path: String) throws(StartError) {
        self.path = path
        let flags = O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK
        let fd = open(path, flags, mode_t(0o600))
        guard fd >= 0 else {
            let reason = errno == ELOOP ? "is a symbolic link (refused)" : String(cString: strerror(errno))
            throw StartError("audit-log", "cannot open '\(Options.printable(path))': \(reason)")
        }
        var status = stat()
        guard fstat(fd, &status) == 0,
              (status.st_mode & S_IFMT) == S_IFREG || (status.st_mode & S_IFMT) == S_IFCHR else {
            close(fd)
            throw StartError("audit-log", "'\(Options.printable(path))' is not a regular file")
        }
        descriptor = fd
        batch = ByteWriter(capacity: AuditLog.batchBytes)
    }

    /// The plugin flushes before it lets go; this only keeps a line from
    /// being lost if it did not.
    deinit {
        _ = flush()
        batch.deallocate()
        close(descriptor)
    }

    /// Adds `{"time":"...","event":"NAME","data":DATA}` and a newline to the
    /// batch (`data` is JSON already). Returns the outcome of a write when
    /// the batch was full and had to be written first.
    func append(time: Int64, event: ByteString, data: ByteString) -> Outcome? {
        append(time: time, event: event, room: data.count, data: { line in
            let start = line.count
            line.reserve(data.count)
            line.append(data)
            return line.terminated(from: start)
        }, then: { _ in })
    }

    /// The same with DATA rendered straight into the batch by `render`
    /// (JSON; about `room` bytes at most, a larger one grows the batch),
    /// no copy: `use` gets it, NUL-terminated in the batch, before the line
    /// is closed (the host's event callback).
    @inline(__always)
    func append(time: Int64, event: ByteString, room: Int, data render: (inout ByteWriter) -> ByteString,
                then use: (ByteString) -> Void) -> Outcome? {
        // Wrapping adds: counts far below Int.max.
        let fixed = 64 &+ AuditTimestamp.maximumBytes &+ event.count
        let outcome = batch.count > 0 && batch.count &+ fixed &+ room > AuditLog.batchBytes ? flush() : nil
        var line = batch
        line.reserve(fixed)
        line.append("{\"time\":\"")
        clock.append(time, to: &line)
        line.append("\",\"event\":\"")
        line.append(event)
        line.append("\",\"data\":")
        use(render(&line))
        line.reserve(2)
        line.append("}\n")
        batch = line
        batchLines &+= 1
        return outcome
    }

    /// Writes the batch; nil when it was empty.
    func flush() -> Outcome? {
        guard batchLines > 0 else { return nil }
        defer {
            batch.reset()
            batchLines = 0
        }
        var offset = 0
        var error: Int32 = 0
        while offset < batch.count {
            let written = write(descriptor, batch.base + offset, batch.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                error = errno
                break
            }
            if written == 0 {
                error = EIO
                break
            }
            offset += written
        }
        guard error != 0 else {
            defer { failing = false }
            return Outcome(failed: 0, transition: failing ? "audit log '\(Options.printable(path))': writes succeed again" : nil)
        }
        // A full disk often takes the first part of a batch (a short
        // write) and then fails: the whole lines it took stay, the
        // fragment of the next is cut, or the next line would be glued to
        // it. The file holds whole lines only.
        var whole = 0, end = 0
        for index in 0..<offset where batch.base[index] == 0x0a {
            whole += 1
            end = index + 1
        }
        let fragment = offset - end
        if fragment > 0 {
            let size = lseek(descriptor, 0, SEEK_END)
            if size >= off_t(fragment) { _ = ftruncate(descriptor, size - off_t(fragment)) }
        }
        defer { failing = true }
        return Outcome(failed: batchLines - whole,
                       transition: failing ? nil : "audit log '\(Options.printable(path))': write failed: \(String(cString: strerror(error))); lines are dropped and counted until writes succeed")
    }

    /// UTC, ISO 8601 with microseconds: 2026-11-25T12:00:00.123456Z.
    static func timestamp(_ micros: Int64) -> String {
        var clock = AuditTimestamp()
        var text = ByteWriter(capacity: 64)
        defer { text.deallocate() }
        clock.append(micros, to: &text)
        return String(decoding: UnsafeBufferPointer(start: text.base, count: text.count), as: UTF8.self)
    }
}

/// The audit line's time, UTC, ISO 8601 with microseconds
/// (2026-11-25T12:00:00.123456Z). The date and time of day are made once
/// per second and kept as bytes; each line adds its microseconds.
struct AuditTimestamp {
    /// The first microsecond of the second the prefix is of (wrapping:
    /// only differences are used); no prefix yet while `prefixCount` is 0.
    private var secondStart: Int64 = 0
    /// "YYYY-MM-DDTHH:MM:SS." (the year as wide as it needs), zero-padded.
    private var prefix: (UInt64, UInt64, UInt64) = (0, 0, 0)
    private var prefixCount = 0

    /// The most bytes one timestamp takes: the prefix, 6 digits and "Z".
    static let maximumBytes = 24 + 7

    mutating func append(_ micros: Int64, to text: inout ByteWriter) {
        // Within the second of the previous line: no division.
        var fraction = micros &- secondStart
        if UInt64(bitPattern: fraction) >= 1_000_000 || prefixCount == 0 {
            // Floor division: a time before the epoch still has a fraction in 0..<1 s.
            var seconds = micros / 1_000_000
            fraction = micros % 1_000_000
            if fraction < 0 {
                seconds -= 1
                fraction += 1_000_000
            }
            setSecond(seconds)
        }
        text.reserve(AuditTimestamp.maximumBytes)
        let target = UnsafeMutableRawPointer(text.base + text.count)
        target.storeBytes(of: prefix.0, as: UInt64.self)
        target.storeBytes(of: prefix.1, toByteOffset: 8, as: UInt64.self)
        target.storeBytes(of: prefix.2, toByteOffset: 16, as: UInt64.self)
        text.count += prefixCount
        text.appendDecimal(UInt64(fraction), width: 6)
        text.append(byte: 0x5a)  // Z
    }

    @inline(never) private mutating func setSecond(_ seconds: Int64) {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func pad(_ value: Int, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        let text = pad(Int(parts.tm_year) + 1900, 4) + "-" + pad(Int(parts.tm_mon) + 1, 2) + "-" + pad(Int(parts.tm_mday), 2)
            + "T" + pad(Int(parts.tm_hour), 2) + ":" + pad(Int(parts.tm_min), 2) + ":" + pad(Int(parts.tm_sec), 2) + "."
        var bytes = Array(text.utf8.prefix(MemoryLayout.size(ofValue: prefix)))
        prefixCount = bytes.count
        bytes += Array(repeating: 0, count: MemoryLayout.size(ofValue: prefix) - bytes.count)
        withUnsafeMutableBytes(of: &prefix) { $0.copyBytes(from: bytes) }
        secondStart = seconds &* 1_000_000
    }
}
