import CPJRT
import Foundation
import LoomCore

/// A PJRT plugin opened in this process and its client: the one door to XLA. Every
/// failure the plugin reports becomes a `LoomError.backend` with the plugin's own words.
final class PJRTClient: @unchecked Sendable {
    let pointer: OpaquePointer
    let path: String
    let platform: String
    let deviceCount: Int
    let apiVersion: (major: Int, minor: Int)

    init(path: String) throws {
        var p: OpaquePointer?
        try PJRTClient.check(loom_pjrt_open(path, &p), "opening the PJRT plugin")
        pointer = p!
        self.path = path
        platform = String(cString: loom_pjrt_platform(pointer))
        deviceCount = Int(loom_pjrt_device_count(pointer))
        var major: Int32 = 0, minor: Int32 = 0
        loom_pjrt_api_version(pointer, &major, &minor)
        apiVersion = (Int(major), Int(minor))
    }

    static func check(_ error: UnsafeMutablePointer<CChar>?, _ what: String) throws {
        guard let error else { return }
        defer { free(error) }
        throw LoomError.backend("xla: \(what): \(String(cString: error))")
    }

    /// A program compiled for one device, and how many results it returns.
    final class Executable: @unchecked Sendable {
        let client: PJRTClient
        let pointer: UnsafeMutableRawPointer
        let outputs: Int
        init(client: PJRTClient, pointer: UnsafeMutableRawPointer, outputs: Int) {
            self.client = client; self.pointer = pointer; self.outputs = outputs
        }
        deinit { loom_pjrt_executable_destroy(client.pointer, pointer) }
    }

    /// Compiled programs by their text: portable executables, so every backend on this
    /// plugin (data parallel ranks on its devices) shares one compilation.
    private var cache: [String: Executable] = [:]
    private let cacheLock = NSLock()
    /// Where compiled programs outlive the process (`ProgramCache`), nil when off.
    private lazy var disk = ProgramCache(plugin: self)

    /// Where a program came from: this process's cache, the disk's, or the compiler.
    enum Source { case memory, disk, compiled(seconds: Double) }

    /// The program for `text`.
    func executable(for text: String) throws -> (Executable, Source) {
        cacheLock.lock(); defer { cacheLock.unlock() }
        if let e = cache[text] { return (e, .memory) }
        if let e = disk?.load(text) {
            cache[text] = e
            return (e, .disk)
        }
        let started = Date()
        let e = try compile(text)
        cache[text] = e
        disk?.store(e, for: text)
        return (e, .compiled(seconds: Date().timeIntervalSince(started)))
    }

    func serialize(_ e: Executable) throws -> Data {
        var bytes: UnsafeMutablePointer<CChar>?
        var size = 0
        try PJRTClient.check(loom_pjrt_serialize(pointer, e.pointer, &bytes, &size), "serialising a program")
        defer { free(bytes) }
        return Data(bytes: bytes!, count: size)
    }

    func deserialize(_ data: Data) throws -> Executable {
        var exe: UnsafeMutableRawPointer?
        var outputs = 0
        try data.withUnsafeBytes { raw in
            try PJRTClient.check(loom_pjrt_deserialize(pointer, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count, &exe, &outputs),
                                 "loading a compiled program")
        }
        return Executable(client: self, pointer: exe!, outputs: outputs)
    }

    func compile(_ text: String) throws -> Executable {
        var exe: UnsafeMutableRawPointer?
        var outputs = 0
        try text.utf8CString.withUnsafeBufferPointer { code in
            try PJRTClient.check(loom_pjrt_compile(pointer, code.baseAddress, code.count - 1, &exe, &outputs), "compiling a step")
        }
        return Executable(client: self, pointer: exe!, outputs: outputs)
    }

    /// One device array. Destroyed with its last reference, unless an execution took it
    /// (donated).
    final class Buffer: @unchecked Sendable {
        let client: PJRTClient
        private(set) var pointer: UnsafeMutableRawPointer?
        init(client: PJRTClient, pointer: UnsafeMutableRawPointer) { self.client = client; self.pointer = pointer }
        /// The execution that donated it destroyed it.
        func consumed() { pointer = nil }
        deinit { if let pointer { loom_pjrt_buffer_destroy(client.pointer, pointer) } }
    }

    func upload(_ bytes: UnsafeRawPointer, type: HLOType, shape: [Int], device: Int) throws -> Buffer {
        var out: UnsafeMutableRawPointer?
        let dims = shape.map(Int64.init)
        try dims.withUnsafeBufferPointer { d in
            try PJRTClient.check(loom_pjrt_buffer_from_host(pointer, Int32(device), bytes, Int32(Self.code(type)), d.baseAddress, d.count, &out),
                                 "uploading \(shape) \(type)")
        }
        return Buffer(client: self, pointer: out!)
    }

    func download(_ buffer: Buffer, into destination: UnsafeMutableRawPointer, bytes: Int) throws {
        try PJRTClient.check(loom_pjrt_buffer_to_host(pointer, buffer.pointer, destination, bytes), "downloading \(bytes) bytes")
    }

    /// A run in flight: its results are already buffers that later runs and downloads may
    /// use (PJRT orders them); `wait` returns when it has finished, with its error if it
    /// failed.
    final class Run: @unchecked Sendable {
        let client: PJRTClient
        private var event: UnsafeMutableRawPointer?
        init(client: PJRTClient, event: UnsafeMutableRawPointer?) { self.client = client; self.event = event }
        func wait() throws {
            guard let e = event else { return }
            event = nil
            try PJRTClient.check(loom_pjrt_wait(client.pointer, e), "running a step")
        }
        deinit { try? wait() }
    }

    /// Starts `executable` on `device` and returns once the run is enqueued, with its
    /// results; `donated[i]`: argument i may be consumed.
    func start(_ executable: Executable, device: Int, arguments: [Buffer], donated: [Bool]) throws -> (results: [Buffer], run: Run) {
        var args: [UnsafeMutableRawPointer?] = arguments.map(\.pointer)
        var outs = [UnsafeMutableRawPointer?](repeating: nil, count: executable.outputs)
        var event: UnsafeMutableRawPointer?
        let flags = donated.map { UInt8($0 ? 1 : 0) }
        try args.withUnsafeMutableBufferPointer { a in
            try outs.withUnsafeMutableBufferPointer { o in
                try PJRTClient.check(loom_pjrt_execute(pointer, executable.pointer, Int32(device), a.baseAddress, a.count, flags,
                                                       o.baseAddress, o.count, &event), "running a step")
            }
        }
        for (b, d) in zip(arguments, donated) where d { b.consumed() }
        return (outs.map { Buffer(client: self, pointer: $0!) }, Run(client: self, event: event))
    }

    private static func code(_ type: HLOType) -> Int {
        switch type {
        case .bf16: return Int(LOOM_PJRT_BF16)
        case .i32: return Int(LOOM_PJRT_S32)
        case .f16: return Int(LOOM_PJRT_F16)
        case .ui32: return Int(LOOM_PJRT_U32)
        default: return Int(LOOM_PJRT_F32)
        }
    }
}

/// Compiled programs on disk, so that the next process (a resumed run, `loom eval`, the
/// next test) loads instead of compiling: `$XDG_CACHE_HOME/loom/xla-programs` (or
/// `LOOM_XLA_CACHE=dir`; `LOOM_XLA_CACHE=0` turns it off). An entry is the program's text
/// and its executable, named by a hash of the text and of the plugin (its path, size and
/// modification time, its API version and platform) and of `XLA_FLAGS` (the compiler's
/// options): another plugin, or other flags, never load it, and a
/// load compares the whole text, so a hash collision only costs a compilation. Every
/// failure to read or write is a miss, never an error. Past `limit` bytes (1 GiB, or
/// `LOOM_XLA_CACHE_MB`), a store removes the entries used longest ago (a load renews an
/// entry's time) until a quarter of the limit is free.
final class ProgramCache {
    private let directory: String
    private let limit: Int
    private let plugin: String
    private unowned let client: PJRTClient

    init?(plugin client: PJRTClient) {
        let env = ProcessInfo.processInfo.environment
        if env["LOOM_XLA_CACHE"] == "0" { return nil }
        directory = env["LOOM_XLA_CACHE"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (env["XDG_CACHE_HOME"] ?? (env["HOME"] ?? "/root") + "/.cache") + "/loom/xla-programs"
        guard (try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)) != nil else { return nil }
        let attributes = try? FileManager.default.attributesOfItem(atPath: client.path)
        let stamp = "\((attributes?[.size] as? Int) ?? 0) \((attributes?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0)"
        plugin = "\(client.path) \(stamp) PJRT \(client.apiVersion.major).\(client.apiVersion.minor) \(client.platform)"
            + " XLA_FLAGS=\(env["XLA_FLAGS"] ?? "")"
        limit = (env["LOOM_XLA_CACHE_MB"].flatMap(Int.init) ?? 1024) << 20
        self.client = client
    }

    /// FNV-1a over the plugin's identity and the text.
    private func path(_ text: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in plugin.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
        for byte in text.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return directory + "/" + String(h, radix: 16)
    }

    func load(_ text: String) -> PJRTClient.Executable? {
        let p = path(text)
        guard let stored = try? String(contentsOfFile: p + ".mlir", encoding: .utf8), stored == text,
              let bytes = FileManager.default.contents(atPath: p + ".bin") else { return nil }
        try? FileManager.default.setAttributes([.modificationDate: Date()], ofItemAtPath: p + ".mlir")
        return try? client.deserialize(bytes)
    }

    /// Once the folder holds more than the limit, removes the entries used longest ago
    /// until it holds 3/4 of it.
    private func evict() {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: directory) else { return }
        var entries: [(base: String, used: Date, bytes: Int)] = []
        var total = 0
        for name in names where name.hasSuffix(".mlir") {
            let base = directory + "/" + String(name.dropLast(5))
            let text = try? fm.attributesOfItem(atPath: base + ".mlir"), bin = try? fm.attributesOfItem(atPath: base + ".bin")
            let bytes = ((text?[.size] as? Int) ?? 0) + ((bin?[.size] as? Int) ?? 0)
            entries.append((base, (text?[.modificationDate] as? Date) ?? .distantPast, bytes))
            total += bytes
        }
        guard total > limit else { return }
        for e in entries.sorted(by: { $0.used < $1.used }) where total > limit / 4 * 3 {
            unlink(e.base + ".mlir")
            unlink(e.base + ".bin")
            total -= e.bytes
        }
    }

    /// The executable first, then the text that makes the entry valid, each written whole
    /// (to a temporary name, then renamed).
    func store(_ e: PJRTClient.Executable, for text: String) {
        let p = path(text)
        guard let bytes = try? client.serialize(e) else { return }
        let tmp = p + ".\(getpid()).tmp"
        guard FileManager.default.createFile(atPath: tmp, contents: bytes), rename(tmp, p + ".bin") == 0,
              (try? text.write(toFile: tmp, atomically: false, encoding: .utf8)) != nil, rename(tmp, p + ".mlir") == 0 else {
            unlink(tmp)
            return
        }
        evict()
    }
}

/// Compiling without a device: a plugin's compiler for a named topology (libtpu for TPU
/// v5e or v6e slices on a machine with no TPU). What CI can prove of TPUs: that XLA's TPU
/// compiler accepts the programs Loom writes.
public final class PJRTCompiler: @unchecked Sendable {
    private let pointer: OpaquePointer
    public let path: String

    public init(plugin path: String) throws {
        var p: OpaquePointer?
        try PJRTClient.check(loom_pjrt_open_compiler(path, &p), "opening the PJRT plugin for compiling")
        pointer = p!
        self.path = path
    }

    /// Compiles a StableHLO module for `topology` ("v5e:2x2", "v6e:2x2"); the serialised
    /// executable's size in bytes. Throws the compiler's message on any rejection.
    public func compile(_ text: String, topology: String) throws -> Int {
        var bytes = 0
        try text.utf8CString.withUnsafeBufferPointer { code in
            try PJRTClient.check(loom_pjrt_compile_for_topology(pointer, topology, code.baseAddress, code.count - 1, &bytes),
                                 "compiling for \(topology)")
        }
        return bytes
    }
}

/// Where a PJRT plugin is found.
public enum PJRTPlugin {
    /// XLA:CPU (or any plugin `LOOM_PJRT_PLUGIN` names), or libtpu.
    public enum Kind: String, Sendable { case cpu, tpu }

    /// Throws unless the machine has a TPU: a PCI device of Google's (vendor 0x1ae0), as
    /// libtpu finds its chips. Without one, libtpu's client asks the cloud's metadata server
    /// for the slice, 30 tries a key, for minutes; compiling for a TPU needs no TPU
    /// (`PJRTCompiler`).
    static func requireTPU() throws {
        guard machineHasTPU else {
            throw LoomError.backend("tpu: this machine has no TPU (no Google PCI device under /sys/bus/pci/devices); run on a Cloud TPU VM (docs/xla.md)")
        }
    }

    /// Whether a PCI device of Google's (vendor 0x1ae0) is present.
    public static var machineHasTPU: Bool {
        let root = "/sys/bus/pci/devices"
        return ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).contains {
            (try? String(contentsOfFile: root + "/" + $0 + "/vendor", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) == "0x1ae0"
        }
    }

    /// The wheels a plugin comes in, best first: (the folder Loom's test script caches it
    /// in, the plugin's path inside the wheel). XLA:CPU: the plugin built from jaxlib
    /// 0.11.2's XLA (`lammps-jax-pjrt-cpu`: it ran JAX's own mlp step in about half the
    /// time), then OpenXLA's older `xla-cpu-pjrt` 0.0.1.
    static func wheels(_ kind: Kind) -> [(cache: String, file: String)] {
        kind == .tpu ? [("libtpu-0.0.51", "libtpu/libtpu.so")]
            : [("lammps-jax-pjrt-cpu-0.11.2", "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so"),
               ("xla-cpu-pjrt-0.0.1", "xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so")]
    }

    /// `LOOM_PJRT_PLUGIN` (`LOOM_LIBTPU` for a TPU), else a wheel's file where Loom's test
    /// script caches it (~/.cache/loom) or where pip installs it (site-packages).
    public static func locate(_ kind: Kind) -> String? {
        let env = ProcessInfo.processInfo.environment
        if let p = env[kind == .tpu ? "LOOM_LIBTPU" : "LOOM_PJRT_PLUGIN"], !p.isEmpty { return p }
        let home = env["HOME"] ?? "/root", cache = (env["XDG_CACHE_HOME"] ?? home + "/.cache") + "/loom/"
        var candidates = wheels(kind).map { cache + $0.cache + "/" + $0.file }
        let fm = FileManager.default
        for base in ["/usr/local/lib", "/usr/lib", home + "/.local/lib"] {
            for py in (try? fm.contentsOfDirectory(atPath: base))?.filter({ $0.hasPrefix("python3") }).sorted() ?? [] {
                for packages in ["site-packages", "dist-packages"] {
                    candidates += wheels(kind).map { base + "/" + py + "/" + packages + "/" + $0.file }
                }
            }
        }
        return candidates.first { fm.fileExists(atPath: $0) }
    }
}
