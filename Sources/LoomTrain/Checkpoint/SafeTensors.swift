import CZlib
import Foundation
import LoomCore

/// The safetensors format (what PyTorch and Hugging Face load without executing code):
///
///     [8 bytes: little-endian u64 N][N bytes: JSON header][raw tensor bytes]
///
/// The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
/// (offsets into the raw bytes) and "__metadata__" to a string→string map. Loom adds
/// "loom.file_crc32", the CRC-32 of the whole file (length, header and data) computed with
/// those 8 hex digits as zeros, and verifies it on load: a flipped bit anywhere, in a
/// tensor, a shape or the step count, is caught. (Checkpoints of older Loom versions carry
/// "loom.crc32", over the data only, and are still read.)
public enum SafeTensors {
    public struct Entry: Equatable {
        public var dtype: DType
        public var shape: [Int]
        public var range: Range<Int>  // into `data`
    }

    /// A file's bytes: memory-mapped (`read`: pages come from the file as a tensor is
    /// read, and go when the file is dropped), or a copy of a buffer (`decode`).
    public final class Bytes: @unchecked Sendable {
        public let buffer: UnsafeRawBufferPointer
        private let mapped: Bool

        init(copying bytes: [UInt8]) {
            let b = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 64)
            bytes.withUnsafeBytes { if !$0.isEmpty { b.copyMemory(from: $0) } }
            buffer = UnsafeRawBufferPointer(rebasing: b[0..<bytes.count])
            mapped = false
        }

        /// `path` mapped read-only (nil: it cannot be opened or mapped).
        init?(mapping path: String) {
            let fd = open(path, O_RDONLY)
            guard fd >= 0 else { return nil }
            defer { close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
            let size = Int(st.st_size)
            if size == 0 { buffer = UnsafeRawBufferPointer(start: nil, count: 0); mapped = false; return }
            guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else { return nil }
            buffer = UnsafeRawBufferPointer(start: p, count: size)
            mapped = true
        }

        /// The CRC-32 of `range` continued from `crc`, reading the pages once: mapped pages
        /// are dropped from this process as they are passed (the page cache keeps them).
        func crc(_ range: Range<Int>, from start: UInt32 = 0) -> UInt32 {
            var c = uLong(start), at = range.lowerBound
            let chunk = 16 << 20, page = Int(sysconf(Int32(_SC_PAGESIZE)))
            while at < range.upperBound {
                let end = min(range.upperBound, at + chunk)
                c = crc32(c, buffer.baseAddress!.assumingMemoryBound(to: UInt8.self) + at, uInt(end - at))
                if mapped {
                    let lo = at / page * page
                    madvise(UnsafeMutableRawPointer(mutating: buffer.baseAddress! + lo), end - lo, MADV_DONTNEED)
                }
                at = end
            }
            return UInt32(c)
        }

        deinit {
            if mapped { munmap(UnsafeMutableRawPointer(mutating: buffer.baseAddress!), buffer.count) }
            else if let base = buffer.baseAddress { UnsafeMutableRawPointer(mutating: base).deallocate() }
        }
    }

    /// A file read: its header parsed, its tensors' bytes where `bytes` finds them.
    public struct File {
        public var metadata: [String: String]
        public var entries: [String: Entry]
        let storage: Bytes
        /// Where the data section starts in `storage`.
        let dataStart: Int

        /// The stored bytes of entry `e`, valid while this file is alive (keep it with
        /// `withExtendedLifetime` around their use).
        public func bytes(_ e: Entry) -> UnsafeRawBufferPointer {
            UnsafeRawBufferPointer(rebasing: storage.buffer[(dataStart + e.range.lowerBound)..<(dataStart + e.range.upperBound)])
        }

        public func floats(_ name: String) -> [Float]? {
            guard let e = entries[name], e.dtype == .float32 else { return nil }
            return withExtendedLifetime(storage) { Array(bytes(e).bindMemory(to: Float.self)) }
        }
    }

    /// Serialises tensors (in the given order) and metadata into one buffer.
    public static func encode(_ tensors: [(name: String, tensor: Tensor)], metadata: [String: String]) -> [UInt8] {
        let head = header(tensors.map { ($0.name, $0.tensor.dtype, $0.tensor.shape) }, metadata: metadata)
        var out = head.bytes
        out.reserveCapacity(head.bytes.count + head.dataBytes)
        for (_, t) in tensors {
            let bytes = HostBuffer(t)  // any dtype, as stored; a device tensor is downloaded
            withExtendedLifetime(bytes) { out.append(contentsOf: bytes.bytes) }
        }
        out.replaceSubrange(head.checksumAt..<(head.checksumAt + 8), with: Array(hex8(crc(out)).utf8))
        return out
    }

    /// Writes tensors (in the given order) and metadata to `path` as `encode` lays them
    /// out, streamed: the header, then each tensor's bytes as it is made (`LazyTensor`)
    /// and read (downloaded from a device), the checksum continued across them and
    /// written into the header last. A writer holds one tensor at a time beyond what its
    /// tensors already are. Atomic: the file appears whole or not at all (`AtomicFile`).
    public static func write(_ tensors: [LazyTensor], metadata: [String: String], to path: String) throws {
        let head = header(tensors.map { ($0.name, $0.dtype, $0.shape) }, metadata: metadata)
        try AtomicFile.write(to: path, size: head.bytes.count + head.dataBytes) { sink in
            var checksum = crc(head.bytes)
            try head.bytes.withUnsafeBytes { try sink.append($0) }
            for item in tensors {
                try withBytes(of: try item.make(), count: item.shape.reduce(1, *), dtype: item.dtype, "writing '\(path)': '\(item.name)'") { raw in
                    checksum = crc(raw, from: checksum)
                    try sink.append(raw)
                }
            }
            try sink.patch(Array(hex8(checksum).utf8), at: head.checksumAt)
        }
    }

    public static func write(_ tensors: [(name: String, tensor: Tensor)], metadata: [String: String], to path: String) throws {
        try write(tensors.map { LazyTensor($0.name, $0.tensor) }, metadata: metadata, to: path)
    }

    /// The length prefix and JSON header of a file of `tensors` (the checksum's 8 digits
    /// zeros), where those digits are, and the data section's size.
    static func header(_ tensors: [(name: String, dtype: DType, shape: [Int])], metadata: [String: String])
        -> (bytes: [UInt8], checksumAt: Int, dataBytes: Int) {
        var fields: [String] = [], size = 0
        for (name, dtype, shape) in tensors {
            let begin = size
            size += shape.reduce(1, *) * dtype.byteSize
            fields.append("\(jsonString(name)):{\"dtype\":\"\(dtype.rawValue)\",\"shape\":[\(shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(begin),\(size)]}")
        }
        var meta = metadata
        meta[checksumKey] = String(repeating: "0", count: 8)
        let metaJSON = meta.keys.sorted().map { "\(jsonString($0)):\(jsonString(meta[$0]!))" }.joined(separator: ",")
        var json = Array("{\"__metadata__\":{\(metaJSON)}\(fields.isEmpty ? "" : ",")\(fields.joined(separator: ","))}".utf8)
        while json.count % 8 != 0 { json.append(UInt8(ascii: " ")) }  // align the data section
        var out: [UInt8] = []
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: json)
        return (out, checksumOffset(in: out, headerEnd: out.count)!, size)
    }

    static let checksumKey = "loom.file_crc32"

    /// Where the 8 hex digits of the whole-file checksum start, if the header has them in
    /// the layout `encode` writes.
    static func checksumOffset(in bytes: [UInt8], headerEnd: Int) -> Int? {
        let needle = Array("\"\(checksumKey)\":\"".utf8)
        guard headerEnd > needle.count + 8 else { return nil }
        var i = 8
        while i + needle.count + 8 <= headerEnd {
            if bytes[i] == needle[0] && Array(bytes[i..<(i + needle.count)]) == needle { return i + needle.count }
            i += 1
        }
        return nil
    }

    static func hex8(_ v: UInt32) -> String {
        let h = String(v, radix: 16)
        return String(repeating: "0", count: 8 - h.count) + h
    }

    /// Parses and verifies a buffer; `path` is only for messages. `foreign`: a file another
    /// program wrote (Hugging Face's): no Loom checksum is required, and tensors of dtypes
    /// Loom does not hold are left out.
    public static func decode(_ bytes: [UInt8], path: String, foreign: Bool = false) throws -> File {
        try decode(Bytes(copying: bytes), path: path, foreign: foreign)
    }

    /// Maps the file at `path` and verifies it; tensors are read from the mapping when
    /// they are loaded, so reading holds no copy of the file.
    public static func read(_ path: String, foreign: Bool = false) throws -> File {
        guard let bytes = Bytes(mapping: path) else {
            throw LoomError.io("\(foreign ? "safetensors file" : "checkpoint") '\(path)': cannot read (missing or unreadable)")
        }
        return try decode(bytes, path: path, foreign: foreign)
    }

    static func decode(_ file: Bytes, path: String, foreign: Bool) throws -> File {
        func bad(_ why: String) -> LoomError { LoomError.io("\(foreign ? "safetensors file" : "checkpoint") '\(path)': \(why)") }
        let bytes = file.buffer
        guard bytes.count >= 8 else { throw bad("\(bytes.count) bytes is too short to be a safetensors file (truncated?)") }
        let n = (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[$1]) << (8 * UInt64($1)) }
        guard n <= UInt64(bytes.count - 8) else {
            throw bad("header says \(n) bytes but the file has \(bytes.count - 8) after the length (truncated, or not a safetensors file)")
        }
        let headerEnd = 8 + Int(n)
        let header = Array(bytes[0..<headerEnd])
        guard let json = try? JSONSerialization.jsonObject(with: Data(header[8...])) as? [String: Any] else {
            throw bad("header is not a JSON object (not a safetensors file?)")
        }
        let dataCount = bytes.count - headerEnd
        var entries: [String: Entry] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in json {
            if name == "__metadata__" {
                guard let m = value as? [String: String] else { throw bad("__metadata__ is not a string map") }
                metadata = m
                continue
            }
            guard let v = value as? [String: Any], let dt = v["dtype"] as? String, let shape = v["shape"] as? [Int],
                  let offs = v["data_offsets"] as? [Int], offs.count == 2 else {
                throw bad("entry '\(name)' lacks dtype, shape or data_offsets")
            }
            guard let dtype = DType(rawValue: dt) else {
                if foreign { continue }
                throw bad("entry '\(name)' has dtype \(dt); Loom reads \(DType.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            guard shape.allSatisfy({ $0 >= 0 && $0 <= 1 << 40 }), shape.count <= 16 else {
                throw bad("entry '\(name)' has shape \(shape), which no tensor has")
            }
            guard offs[0] >= 0, offs[0] <= offs[1], offs[1] <= dataCount else {
                throw bad("entry '\(name)' spans bytes \(offs[0])..<\(offs[1]) of a \(dataCount)-byte data section (truncated?)")
            }
            let bytesNeeded = shape.reduce(Optional(dtype.byteSize)) { n, d in
                n.flatMap { let (p, o) = $0.multipliedReportingOverflow(by: d); return o ? nil : p }
            }
            guard offs[1] - offs[0] == bytesNeeded else {
                throw bad("entry '\(name)' has shape \(describe(shape)) but \(offs[1] - offs[0]) bytes")
            }
            entries[name] = Entry(dtype: dtype, shape: shape, range: offs[0]..<offs[1])
        }
        if let expected = metadata[checksumKey] {
            guard let at = checksumOffset(in: header, headerEnd: headerEnd) else {
                throw bad("its checksum field is not where Loom writes it (the header was rewritten?)")
            }
            var zeroed = header
            zeroed.replaceSubrange(at..<(at + 8), with: Array(String(repeating: "0", count: 8).utf8))
            let computed = hex8(file.crc(headerEnd..<bytes.count, from: crc(zeroed)))
            guard computed == expected else {
                throw bad("checksum mismatch (stored \(expected), computed \(computed)): the file is corrupt")
            }
        } else if let expected = metadata["loom.crc32"] {  // an older Loom's: data only
            let computed = String(file.crc(headerEnd..<bytes.count), radix: 16)
            guard expected == computed else {
                throw bad("checksum mismatch (stored \(expected), computed \(computed)): the file is corrupt")
            }
        } else if !foreign {
            throw bad("has no Loom checksum (\(checksumKey)): not written by loom train, or its header was rewritten")
        }
        return File(metadata: metadata, entries: entries, storage: file, dataStart: headerEnd)
    }

    static func crc(_ data: [UInt8]) -> UInt32 { data.withUnsafeBytes { crc($0) } }

    /// The CRC-32 of `bytes`, continued from `start` (zlib's `crc32` continues across calls).
    static func crc(_ bytes: UnsafeRawBufferPointer, from start: UInt32 = 0) -> UInt32 {
        UInt32(crc32(uLong(start), bytes.bindMemory(to: UInt8.self).baseAddress, uInt(bytes.count)))
    }

    /// `body` over `t`'s bytes as stored (downloaded first from a device), after checking
    /// that it was made as announced (`what`: how to name it in the error).
    static func withBytes<R>(of t: Tensor, count: Int, dtype: DType, _ what: @autoclosure () -> String,
                             _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        guard t.count == count, t.dtype == dtype else {
            throw LoomError.shapeMismatch("\(what()) was announced as \(count) \(dtype) elements and made as \(describe(t.shape)) \(t.dtype)")
        }
        let bytes = HostBuffer(t)
        return try withExtendedLifetime(bytes) { try body(UnsafeRawBufferPointer(bytes.bytes)) }
    }

    static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }
}
