import CGLib
#if canImport(Glibc)
import Glibc
#endif

/// The JSON-lines audit file: opened append-only, created 0600, never
/// through a symlink. Written on the main loop thread only.
///
/// Failure rule: a line that cannot be written whole is dropped (a fragment
/// a short write left is cut off again) and counted
/// (`Counters.auditFailures`); the first failure and each recovery are
/// logged once, so a full disk cannot flood the log. Counters stay exact.
final class AuditLog {
    let path: String
    private let descriptor: Int32
    private(set) var failing = false

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
    }

    deinit { close(descriptor) }

    /// Appends one line. `ok`: the whole line was written. `transition`:
    /// the text to log when this write starts a run of failures or ends
    /// one; nil otherwise.
    func append(time: Int64, event: String, data: String) -> (ok: Bool, transition: String?) {
        var line = "{\"time\":\"" + AuditLog.timestamp(time) + "\",\"event\":\"" + event + "\",\"data\":" + data + "}\n"
        let (error, fragment): (Int32, Int) = line.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return (errno, offset)
                }
                if written == 0 { return (EIO, offset) }
                offset += written
            }
            return (0, 0)
        }
        if error != 0 {
            // A full disk often takes the first part of a line (a short
            // write) and then fails: cut that fragment, or the next line
            // would be glued to it. The file holds whole lines only.
            if fragment > 0 {
                let end = lseek(descriptor, 0, SEEK_END)
                if end >= off_t(fragment) { _ = ftruncate(descriptor, end - off_t(fragment)) }
            }
            defer { failing = true }
            return (false, failing ? nil : "audit log '\(Options.printable(path))': write failed: \(String(cString: strerror(error))); lines are dropped and counted until writes succeed")
        }
        defer { failing = false }
        return (true, failing ? "audit log '\(Options.printable(path))': writes succeed again" : nil)
    }

    /// UTC, ISO 8601 with microseconds: 2026-11-25T12:00:00.123456Z.
    static func timestamp(_ micros: Int64) -> String {
        var seconds = time_t(micros / 1_000_000)
        let fraction = Int(micros % 1_000_000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return pad(Int(parts.tm_year) + 1900, 4) + "-" + pad(Int(parts.tm_mon) + 1, 2) + "-" + pad(Int(parts.tm_mday), 2)
            + "T" + pad(Int(parts.tm_hour), 2) + ":" + pad(Int(parts.tm_min), 2) + ":" + pad(Int(parts.tm_sec), 2)
            + "." + pad(fraction, 6) + "Z"
    }
}
