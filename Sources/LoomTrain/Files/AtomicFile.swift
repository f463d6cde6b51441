import Foundation
import LoomCore

/// Files that appear whole or not at all. Every file Loom writes for a user (checkpoints,
/// run outputs, tokenizers, GPT-2 exports) goes through here, so a crash or `kill -9` at
/// any byte leaves the previous version or the new one, never a partial file under the
/// final name.
public enum AtomicFile {
    /// Writes through a temporary file in the same directory: write, fsync, rename over
    /// `path`, fsync of the directory.
    public static func write(_ bytes: [UInt8], to path: String) throws {
        try write(to: path, size: bytes.count) { sink in try bytes.withUnsafeBytes { try sink.append($0) } }
    }

    /// Where a streamed file's bytes go (`write(to:size:_:)`), in order.
    public final class Sink {
        let fd: Int32
        let path: String
        let fault: FaultInjection.WriteFault?
        private var stops: [Int]
        /// Bytes appended so far.
        public private(set) var written = 0

        init(fd: Int32, path: String, fault: FaultInjection.WriteFault?) {
            self.fd = fd; self.path = path; self.fault = fault
            stops = fault?.stops ?? []
        }

        /// Appends `bytes` at the end of what was written.
        public func append(_ bytes: UnsafeRawBufferPointer) throws {
            var at = 0
            while at < bytes.count {
                var end = bytes.count
                if let stop = stops.first, stop < written + (end - at) { end = at + max(0, stop - written) }
                try AtomicFile.writeAll(fd, UnsafeRawBufferPointer(rebasing: bytes[at..<end]), path: path)
                written += end - at
                at = end
                if let stop = stops.first, stop <= written { stops.removeFirst(); fault?.reached(written) }
            }
        }

        /// Overwrites bytes already written at `offset` (a checksum known only at the end).
        public func patch(_ bytes: [UInt8], at offset: Int) throws {
            precondition(offset + bytes.count <= written, "AtomicFile.Sink.patch past what was written")
            let w = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
            guard w == bytes.count else { throw LoomError.io("cannot write '\(path)': \(String(cString: strerror(errno)))") }
        }
    }

    /// A file of `size` bytes streamed by `fill` into a `Sink` (which must append exactly
    /// `size`), appearing whole or not at all as `write` does, without its bytes ever
    /// being in memory together.
    public static func write(to path: String, size: Int, _ fill: (Sink) throws -> Void) throws {
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent().path
        let tmp = dir + "/." + url.lastPathComponent + ".tmp-\(getpid())"
        removeStale(dir, prefix: "." + url.lastPathComponent + ".tmp-")
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw LoomError.io("cannot write '\(tmp)': \(String(cString: strerror(errno)))") }
        var isOpen = true, ok = false
        defer { if isOpen { close(fd) }; if !ok { unlink(tmp) } }
        let fault = FaultInjection.write(path, size: size)
        let sink = Sink(fd: fd, path: tmp, fault: fault)
        try fill(sink)
        guard sink.written == size else {
            throw LoomError.io("writing '\(path)': \(sink.written) bytes written, \(size) expected (a tensor changed size while it was saved?)")
        }
        guard fsync(fd) == 0 else { throw LoomError.io("cannot sync '\(tmp)': \(String(cString: strerror(errno)))") }
        close(fd)
        isOpen = false
        fault?.beforeRename()
        guard rename(tmp, path) == 0 else { throw LoomError.io("cannot rename '\(tmp)' to '\(path)': \(String(cString: strerror(errno)))") }
        ok = true
        fault?.afterRename()
        syncDirectory(dir)
    }

    public static func write(_ text: String, to path: String) throws { try write(Array(text.utf8), to: path) }

    /// A file several processes write parts of (the ranks of a run, each its own byte
    /// ranges), appearing whole or not at all as `write` does: one process `create`s it
    /// under a temporary name, every writer `open`s that and writes its ranges (and syncs
    /// them), then the creator `publish`es it under its name, or `discard`s it.
    public struct SharedFile {
        public let path: String
        /// Where it is written until published (the creator sends this name to the others).
        public let temporary: String
        /// The creator's injected fault (tests): a pause once its part is written, a kill
        /// before or after the rename.
        let fault: FaultInjection.WriteFault?

        /// A writer's view of a file another process created.
        public init(path: String, temporary: String) { self.path = path; self.temporary = temporary; fault = nil }
        init(path: String, temporary: String, fault: FaultInjection.WriteFault?) { self.path = path; self.temporary = temporary; self.fault = fault }

        /// The creator's part is written: a test's slow disk pauses here.
        public func creatorWrote() { if let pause = fault?.pause { usleep(pause.milliseconds * 1000) } }

        /// Makes the temporary file: `size` bytes, `head` at its start, the rest zeros.
        public static func create(_ path: String, size: Int, head: [UInt8]) throws -> SharedFile {
            let url = URL(fileURLWithPath: path)
            let dir = url.deletingLastPathComponent().path
            let tmp = dir + "/." + url.lastPathComponent + ".tmp-\(getpid())"
            removeStale(dir, prefix: "." + url.lastPathComponent + ".tmp-")
            let fd = Glibc.open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            guard fd >= 0 else { throw LoomError.io("cannot write '\(tmp)': \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            do {
                try head.withUnsafeBytes { try writeAll(fd, $0, path: tmp) }
                guard ftruncate(fd, off_t(size)) == 0 else { throw LoomError.io("cannot size '\(tmp)' to \(size) bytes: \(String(cString: strerror(errno)))") }
            } catch { unlink(tmp); throw error }
            return SharedFile(path: path, temporary: tmp, fault: FaultInjection.write(path, size: size))
        }

        /// This writer's handle on the temporary file.
        public func open() throws -> Writer {
            let fd = Glibc.open(temporary, O_WRONLY)
            guard fd >= 0 else {
                throw LoomError.io("cannot open '\(temporary)' to write this rank's part: \(String(cString: strerror(errno)))"
                    + (errno == ENOENT ? " (every rank writes its part of a checkpoint: the run directory must be on a filesystem all ranks see)" : ""))
            }
            return Writer(fd: fd, path: temporary)
        }

        /// Writes bytes at given offsets; `close` syncs them.
        public final class Writer {
            let fd: Int32
            let path: String
            private var isOpen = true
            init(fd: Int32, path: String) { self.fd = fd; self.path = path }

            public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
                var done = 0
                while done < bytes.count {
                    let w = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
                    guard w > 0 else { throw LoomError.io("cannot write '\(path)': \(String(cString: strerror(errno)))") }
                    done += w
                }
            }

            /// Syncs what was written and closes.
            public func close() throws {
                guard isOpen else { return }
                isOpen = false
                defer { Glibc.close(fd) }
                guard fsync(fd) == 0 else { throw LoomError.io("cannot sync '\(path)': \(String(cString: strerror(errno)))") }
            }

            deinit { if isOpen { Glibc.close(fd) } }
        }

        /// Renames the whole, synced file to its name (the creator, once every writer has
        /// closed), after writing `patch` at `offset` (a checksum known only at the end).
        public func publish(patch: [UInt8], at offset: Int) throws {
            do {
                let writer = try open()
                try patch.withUnsafeBytes { try writer.write($0, at: offset) }
                try writer.close()
            } catch { discard(); throw error }
            fault?.beforeRename()
            guard rename(temporary, path) == 0 else {
                discard()
                throw LoomError.io("cannot rename '\(temporary)' to '\(path)': \(String(cString: strerror(errno)))")
            }
            fault?.afterRename()
            syncDirectory(URL(fileURLWithPath: path).deletingLastPathComponent().path)
        }

        /// Removes the temporary file (a writer failed): the name keeps what it had.
        public func discard() { unlink(temporary) }
    }

    /// Builds a directory whole: `fill` writes into a hidden staging directory beside
    /// `path`, which then takes `path`'s place by renames. A crash while filling leaves
    /// `path` as it was; one between the two renames leaves the old directory (renamed
    /// `.NAME.old-PID`) and the new one (`.NAME.partial-PID`), both whole, and no `path`.
    public static func writeDirectory(_ path: String, _ fill: (String) throws -> Void) throws {
        let url = URL(fileURLWithPath: path).standardizedFileURL
        let parent = url.deletingLastPathComponent().path, name = url.lastPathComponent
        let staging = parent + "/." + name + ".partial-\(getpid())", old = parent + "/." + name + ".old-\(getpid())"
        let fm = FileManager.default
        do {
            try fm.createDirectory(atPath: parent, withIntermediateDirectories: true)
            removeStale(parent, prefix: "." + name + ".partial-")
            try fm.createDirectory(atPath: staging, withIntermediateDirectories: false)
        } catch { throw LoomError.io("cannot write '\(path)': \(error.localizedDescription)") }
        do { try fill(staging) } catch { try? fm.removeItem(atPath: staging); throw error }
        var isDirectory: ObjCBool = false
        let exists = fm.fileExists(atPath: path, isDirectory: &isDirectory)
        if exists && !isDirectory.boolValue {
            try? fm.removeItem(atPath: staging)
            throw LoomError.io("cannot write '\(path)': it is a file, not a directory")
        }
        if exists { guard rename(path, old) == 0 else { throw LoomError.io("cannot move '\(path)' aside: \(String(cString: strerror(errno)))") } }
        guard rename(staging, path) == 0 else { throw LoomError.io("cannot rename '\(staging)' to '\(path)': \(String(cString: strerror(errno)))") }
        syncDirectory(parent)
        if exists { try? fm.removeItem(atPath: old) }
    }

    static func writeAll(_ fd: Int32, _ buf: UnsafeRawBufferPointer, path: String) throws {
        var done = 0
        while done < buf.count {
            let w = Glibc.write(fd, buf.baseAddress! + done, buf.count - done)
            guard w > 0 else { throw LoomError.io("cannot write '\(path)': \(String(cString: strerror(errno)))") }
            done += w
        }
    }

    /// Removes what an earlier writer killed mid-write left in `dir` (names starting with
    /// `prefix`, a process ID after it). Only one process writes a given file.
    private static func removeStale(_ dir: String, prefix: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasPrefix(prefix) {
            try? FileManager.default.removeItem(atPath: dir + "/" + name)
        }
    }

    private static func syncDirectory(_ dir: String) {
        let dfd = open(dir, O_RDONLY)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }
}
