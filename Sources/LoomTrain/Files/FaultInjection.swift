import Foundation
import LoomDistributed

/// The failures the end-to-end tests inject into a real `loom` process, all read from the
/// environment here and nowhere else. None is set in normal use; each names what it does:
///
/// - `LOOM_TEST_FAIL_ONCE=rank:step:marker`: that rank dies as it starts that step
///   (0-based), once (the marker file records it, so the restarted job runs through). An
///   MPI rank, or a single process, is killed with SIGKILL; an in-process rank's thread
///   ends where it stands (`Thread.exit`: no error thrown, nothing unwound), and the world
///   sees it die.
/// - `LOOM_TEST_KILL_WRITE=name:nth:at`: the process kills itself (SIGKILL) during its
///   `nth` (1-based) atomic write of a file named `name`, `at` = a byte offset (after that
///   many bytes of the temporary file), `rename` (written and synced, not yet renamed) or
///   `renamed` (renamed, the directory not yet synced).
/// - `LOOM_TEST_CHECKPOINT_PAUSE_MS=ms`: every `.safetensors` write pauses halfway for
///   that long (a slow disk).
public enum FaultInjection {
    static var environment: [String: String] { ProcessInfo.processInfo.environment }

    // MARK: A rank that dies

    struct RankDeath {
        let step: Int
        let marker: String
        let rank: Int
        let inProcess: Bool

        func fire(at current: Int) {
            guard current == step, !FileManager.default.fileExists(atPath: marker) else { return }
            _ = FileManager.default.createFile(atPath: marker, contents: nil)
            if inProcess { Thread.exit() }
            kill(getpid(), SIGKILL)
        }
    }

    /// This rank's injected death, if any. `inProcess`: the rank is a thread of an
    /// in-process world (else a process of its own).
    static func rankDeath(rank: Int, inProcess: Bool) -> RankDeath? {
        guard let spec = environment["LOOM_TEST_FAIL_ONCE"] else { return nil }
        let parts = spec.split(separator: ":", maxSplits: 2).map(String.init)
        guard parts.count == 3, let r = Int(parts[0]), let s = Int(parts[1]), r == rank else { return nil }
        return RankDeath(step: s, marker: parts[2], rank: r, inProcess: inProcess)
    }

    // MARK: A write that is cut short

    /// A fault in one atomic write; nil for every write it does not concern.
    struct WriteFault {
        /// Kill the process after this many bytes of the temporary file.
        var killAt: Int?
        /// Pause for `milliseconds` after `at` bytes.
        var pause: (at: Int, milliseconds: UInt32)?
        var killBeforeRename = false, killAfterRename = false

        /// The offsets where the writer must stop and call `reached`, in order.
        var stops: [Int] { Array(Set([killAt, pause?.at].compactMap { $0 })).sorted() }

        func reached(_ written: Int) {
            if let pause, written == pause.at { usleep(pause.milliseconds * 1000) }
            if written == killAt { kill(getpid(), SIGKILL) }
        }
        func beforeRename() { if killBeforeRename { kill(getpid(), SIGKILL) } }
        func afterRename() { if killAfterRename { kill(getpid(), SIGKILL) } }
    }

    private static let lock = NSLock()
    nonisolated(unsafe) private static var writeCounts: [String: Int] = [:]

    /// The fault for this write of `path` (`size` bytes), if any. Writes are counted per
    /// file name.
    static func write(_ path: String, size: Int) -> WriteFault? {
        let name = (path as NSString).lastPathComponent
        var fault = WriteFault()
        if let ms = environment["LOOM_TEST_CHECKPOINT_PAUSE_MS"].flatMap(UInt32.init), name.hasSuffix(".safetensors") {
            fault.pause = (size / 2, ms)
        }
        if let spec = environment["LOOM_TEST_KILL_WRITE"] {
            let parts = spec.split(separator: ":").map(String.init)
            lock.lock(); writeCounts[name, default: 0] += 1; let nth = writeCounts[name]!; lock.unlock()
            if parts.count == 3, parts[0] == name, Int(parts[1]) == nth {
                fault.killAt = Int(parts[2]).map { min($0, size) }
                fault.killBeforeRename = parts[2] == "rename"
                fault.killAfterRename = parts[2] == "renamed"
            }
        }
        return fault.stops.isEmpty && !fault.killBeforeRename && !fault.killAfterRename ? nil : fault
    }
}
