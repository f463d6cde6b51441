import Foundation
import LoomCore

// A lazy backend: every call of the `Backend` protocol is recorded as StableHLO into the
// current trace instead of being run, and the trace is compiled (once per distinct text)
// and run as one PJRT executable when the host needs a value: a download (the step's
// loss), `sumOfSquares`, or `synchronize`. Loom's step reads nothing back but its loss, so
// a training step becomes one executable: the update of step i and the forward and
// backward of step i+1, from one loss read to the next (PyTorch/XLA's lazy tensors, Swift
// for TensorFlow's X10).
//
// A storage is a slot: a flat 1-D device array of its elements, its current value a PJRT
// buffer between executions and an SSA value inside a trace. A tensor is a view of a slot
// (offset, count); reading it slices the slot, writing it is a dynamic_update_slice of the
// slot, which XLA turns into in-place writes. Slots written by a trace and still alive are
// the executable's results; their previous buffers are donated.
//
// The text names nothing of the process (values by position; what changes between steps,
// such as the learning rate or dropout's counter, read at run time from a float32 and a
// uint32 vector), so the same step gives the same text: the compilation cache is keyed by
// it, and a new shape is a new entry, named in a log line (LOOM_XLA_LOG=1).

/// Compilations and executions of a backend, for tests and `loom bench`.
public struct XLACounters: Sendable, Equatable {
    public var compilations = 0
    /// Programs loaded compiled from the cache on disk (`ProgramCache`).
    public var diskLoads = 0
    public var executions = 0
    public var cacheHits = 0
    /// Seconds spent writing programs' text and finding them in the cache, compiling, and
    /// running them: starting each (uploads of scalars included) and waiting for it to end.
    public var traceSeconds = 0.0, compileSeconds = 0.0, runSeconds = 0.0
}

public final class XLABackend: Backend, GEMMCounting, @unchecked Sendable {
    public let device: Device
    /// "xla:0 (cpu, PJRT 0.115, lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so)": the plugin
    /// named by its file, since two XLA:CPU plugins of one API version ran the same program
    /// at speeds 2x apart.
    public var name: String {
        let file = client.path.split(separator: "/").suffix(2).joined(separator: "/")
        return "\(device) (\(client.platform), PJRT \(client.apiVersion.major).\(client.apiVersion.minor), \(file))"
    }
    public let index: Int
    let client: PJRTClient
    let lock = NSRecursiveLock()

    final class Slot {
        let bytes: Int
        var type: HLOType?
        var count = 0
        var buffer: PJRTClient.Buffer?
        init(bytes: Int) { self.bytes = bytes }
    }

    var slots: [UInt: Slot] = [:]
    private var nextSlot: UInt = 1
    var trace = Trace()
    private var counters = XLACounters()
    /// An error a trace's checks found (an index out of range), thrown by `deferredErrors`.
    private var pendingError: LoomError?
    /// The program last started, while it may be running, with the flags its checks
    /// compute and their messages (read once it has finished).
    private var running: (run: PJRTClient.Run, flags: PJRTClient.Buffer?, messages: [String])?
    /// Whether each new compilation is logged (to standard error).
    public var logsCompilations = ProcessInfo.processInfo.environment["LOOM_XLA_LOG"] != nil

    /// Opens the plugin at `plugin` (or the one `PJRTPlugin.locate` finds) and serves its
    /// device `index`.
    /// Opens the plugin at `plugin` (or the one `PJRTPlugin.locate` finds for `kind`) and
    /// serves its device `index`: `.xla(index)`, or `.tpu(index)` on libtpu.
    public init(index: Int = 0, plugin: String? = nil, kind: PJRTPlugin.Kind = .cpu) throws {
        if kind == .tpu { try PJRTPlugin.requireTPU() }
        let path = try XLABackend.locate(plugin, kind)
        client = try XLABackend.openClient(path)
        guard index >= 0 && index < client.deviceCount else {
            throw LoomError.backend("xla: device \(index) of \(client.deviceCount) (\(client.platform) plugin \(path))")
        }
        self.index = index
        device = kind == .tpu ? .tpu(index) : .xla(index)
        Backends.register(self)
    }

    /// The devices of the plugin at `plugin` (or the one `PJRTPlugin.locate` finds).
    public static func deviceCount(plugin: String? = nil, kind: PJRTPlugin.Kind = .cpu) throws -> Int {
        if kind == .tpu { try PJRTPlugin.requireTPU() }
        return try openClient(try locate(plugin, kind)).deviceCount
    }

    private static func locate(_ plugin: String?, _ kind: PJRTPlugin.Kind) throws -> String {
        guard let path = plugin ?? PJRTPlugin.locate(kind) else {
            throw LoomError.backend(kind == .tpu
                ? "tpu: libtpu not found: set LOOM_LIBTPU to libtpu.so, or `pip install libtpu` (docs/xla.md)"
                : "xla: no PJRT plugin found: set LOOM_PJRT_PLUGIN to a plugin's .so, or `pip install lammps-jax-pjrt-cpu` (XLA:CPU; docs/xla.md)")
        }
        return path
    }

    // One client per plugin per process: PJRT plugins hold process-wide state.
    nonisolated(unsafe) private static var clients: [String: PJRTClient] = [:]
    private static let clientLock = NSLock()
    private static func openClient(_ path: String) throws -> PJRTClient {
        clientLock.lock(); defer { clientLock.unlock() }
        if let c = clients[path] { return c }
        let c = try PJRTClient(path: path)
        clients[path] = c
        return c
    }

    /// The StableHLO text of every program this backend compiled or loaded from disk, in
    /// order (a TPU compile check recompiles them for other targets).
    public var programs: [String] { lock.withLock { compiledTexts } }
    private var compiledTexts: [String] = []

    public var counts: XLACounters { lock.withLock { counters } }
    public func resetCounters() { lock.withLock { counters = XLACounters(); flops = 0 } }

    /// The matrix products' work recorded since `resetCounters` (2mnk each), for
    /// `loom bench`'s GFLOP/s: counted as the products are recorded, run or not.
    public var gemmFlops: Double { lock.withLock { flops } }
    var flops = 0.0

    // MARK: Memory

    public func allocate(bytes: Int) throws -> Storage {
        let id: UInt = lock.withLock {
            let id = nextSlot
            nextSlot += 1
            slots[id] = Slot(bytes: bytes)
            return id
        }
        return Storage(device: device, byteCount: bytes, handle: id) { [weak self] handle, _ in
            guard let self else { return }
            self.lock.withLock { _ = self.slots.removeValue(forKey: handle) }
        }
    }

    /// The slot of a tensor, typed by its first use.
    func slot(_ t: Tensor) -> (UInt, Slot) {
        precondition(t.device == device, "\(name): a tensor on \(t.device) was passed to a kernel of \(device)")
        guard let s = slots[t.storage.handle] else { fatalError("\(name): a tensor whose storage was released") }
        let type = HLOType(t.dtype)
        if s.type == nil {
            s.type = type
            s.count = s.bytes / t.dtype.byteSize
        }
        precondition(s.type == type, "\(name): a \(t.dtype) view of a storage holding \(s.type!) (reinterpreting bytes is not supported on XLA)")
        return (t.storage.handle, s)
    }

    public func upload(_ source: UnsafeRawBufferPointer, to tensor: Tensor) {
        lock.withLock {
            let (id, s) = slot(tensor)
            do {
                let buffer = try client.upload(source.baseAddress!, type: s.type!, shape: [tensor.count], device: index)
                if tensor.offset == 0 && tensor.count == s.count && trace.current[id] == nil {
                    s.buffer = buffer
                } else {
                    write(tensor, trace.argument(buffer, shape: [tensor.count], type: s.type!))
                }
            } catch { fatalError("\(error)") }
        }
    }

    public func download(_ tensor: Tensor, into destination: UnsafeMutableRawBufferPointer) {
        lock.withLock {
            do {
                try flush()
                let (_, s) = slot(tensor)
                let size = tensor.dtype.byteSize
                guard let buffer = s.buffer else {  // never written: zeros, as a fresh device array reads here
                    memset(destination.baseAddress!, 0, tensor.count * size)
                    return
                }
                if tensor.offset == 0 && tensor.count == s.count {
                    try client.download(buffer, into: destination.baseAddress!, bytes: s.count * size)
                } else {
                    let whole = UnsafeMutableRawPointer.allocate(byteCount: s.count * size, alignment: 64)
                    defer { whole.deallocate() }
                    try client.download(buffer, into: whole, bytes: s.count * size)
                    destination.baseAddress!.copyMemory(from: whole + tensor.offset * size, byteCount: tensor.count * size)
                }
            } catch { fatalError("\(error)") }
        }
    }

    public func synchronize() {
        lock.withLock { do { try flush() } catch { fatalError("\(error)") } }
    }

    /// Starts the step's program and returns while it runs: the next step is recorded
    /// meanwhile, and waits for this one only when its own program starts.
    public func endStep() throws {
        try lock.withLock { try flush(waiting: false) }
    }

    public func deferredErrors() throws {
        try lock.withLock {
            try flush()
            if let e = pendingError { pendingError = nil; throw e }
        }
    }

    // MARK: Reading and writing views inside the trace

    /// The slot's value in the trace: its latest write, else its buffer as a parameter,
    /// else zeros (never written).
    func value(_ id: UInt, _ s: Slot) -> HLOValue {
        if let v = trace.current[id] { return v }
        let v = s.buffer.map { trace.argument($0, shape: [s.count], type: s.type!, slot: id) }
            ?? trace.hlo.constant(0, [s.count], s.type!)
        trace.current[id] = v
        return v
    }

    /// A tensor's values, shaped as the tensor.
    func read(_ t: Tensor) -> HLOValue {
        let (id, s) = slot(t)
        let whole = value(id, s)
        let flat = t.offset == 0 && t.count == s.count ? whole : trace.hlo.slice(whole, start: [t.offset], limit: [t.offset + t.count])
        return trace.hlo.reshape(flat, t.shape)
    }

    /// Sets a tensor's values (any shape of its element count; converted to its dtype).
    func write(_ t: Tensor, _ v: HLOValue) {
        let (id, s) = slot(t)
        precondition(v.count == t.count, "\(name): writing \(v.count) values into \(t.shape)")
        let flat = trace.hlo.reshape(trace.hlo.convert(v, s.type!), [t.count])
        let new = t.offset == 0 && t.count == s.count ? flat : trace.hlo.updateSlice(value(id, s), flat, at: [t.offset])
        trace.set(id, new)
    }

    /// The matrices of a GEMM operand as [batch, rows, cols] (stored, untransposed).
    func readWindow(_ op: GEMMOperand, batch: Int, rows: Int, cols: Int) -> HLOValue {
        let (id, s) = slot(op.tensor)
        let w = Window(op, batch: batch, rows: rows, cols: cols, base: op.tensor.offset)
        return w.read(value(id, s), slotCount: s.count, trace.hlo)
    }

    /// Writes [batch, rows, cols] into a GEMM operand's matrices.
    func writeWindow(_ op: GEMMOperand, _ v: HLOValue, batch: Int, rows: Int, cols: Int) {
        let (id, s) = slot(op.tensor)
        let w = Window(op, batch: batch, rows: rows, cols: cols, base: op.tensor.offset)
        trace.set(id, w.write(trace.hlo.convert(v, s.type!), into: value(id, s), slotCount: s.count, trace.hlo))
    }

    /// A host scalar as a value of the trace (passed at run time, not written in the text).
    func scalar(_ x: Float) -> HLOValue { trace.hlo.scalar(x) }
    func scalar(_ x: UInt32) -> HLOValue { trace.hlo.scalar(x) }

    /// Records a check: when `bad` (an i1 scalar) is true after the trace runs, the next
    /// `deferredErrors` throws `message`.
    func check(_ bad: HLOValue, _ message: String) { trace.checks.append((bad, message)) }

    // MARK: Running a trace

    /// Compiles (or finds) and runs the trace; `extra` values come back as buffers. Unless
    /// `waiting`, returns once the program has started (`endStep`); the next flush waits
    /// for it before starting its own, so at most one program is in flight.
    @discardableResult
    func flush(extra: [HLOValue] = [], waiting: Bool = true) throws -> [PJRTClient.Buffer] {
        let t = trace
        let outputs = t.writeOrder.filter { slots[$0] != nil }
        if outputs.isEmpty && extra.isEmpty && t.checks.isEmpty {
            trace = Trace()
            if waiting { try finishRunning() }
            return []
        }
        var results = outputs.map { t.current[$0]! }
        let checks = t.checks.map { t.hlo.convert($0.0, .i32) }
        if !checks.isEmpty {
            results.append(t.hlo.concatenate(checks.map { t.hlo.reshape($0, [1]) }, dimension: 0))
        }
        results += extra
        let began = monotonicSeconds()
        // A slot's old buffer is dead after the run when the slot is rewritten or released:
        // donated, and said so in the text, or XLA allocates every result afresh. A rewritten
        // slot's buffer becomes its new value's (aliasing); a released one's, any result's.
        let donated = t.argumentSlots.map { id in id.map { slots[$0] == nil || t.written.contains($0) } ?? false }
        var attributes: [Int: String] = [:]
        for (i, id) in t.argumentSlots.enumerated() where donated[i] {
            attributes[i] = outputs.firstIndex(of: id!).map { "tf.aliasing_output = \($0) : i32" } ?? "jax.buffer_donor = true"
        }
        let text = t.module(returning: results, attributes: attributes)
        let (executable, source) = try client.executable(for: text)
        var compiled = 0.0
        switch source {
        case .memory:
            counters.cacheHits += 1
        case .disk, .compiled:
            if case .compiled(let seconds) = source { compiled = seconds }
            compiledTexts.append(text)
            if case .compiled = source { counters.compilations += 1 } else { counters.diskLoads += 1 }
            counters.compileSeconds += compiled
            if let dir = ProcessInfo.processInfo.environment["LOOM_XLA_DUMP"] {  // each new program's text
                try? text.write(toFile: dir + "/program-\(UInt32(truncatingIfNeeded: text.hashValue)).mlir", atomically: true, encoding: .utf8)
            }
            if logsCompilations {
                let what = compiled > 0 ? String(format: "compiled a program of %d ops, %d parameters, %d results in %.2f s", t.hlo.body.count,
                                                 t.hlo.parameters.count, results.count, compiled)
                    : "loaded a compiled program of \(t.hlo.body.count) ops from the cache on disk"
                fputs("loom: xla: \(what) (\(name))\n", stderr)
            }
        }
        counters.traceSeconds += monotonicSeconds() - began - compiled
        let starting = monotonicSeconds()
        let arguments = try t.arguments(client: client, device: index)
        trace = Trace()
        counters.runSeconds += monotonicSeconds() - starting
        try finishRunning()
        let started = monotonicSeconds()
        let (out, run) = try client.start(executable, device: index, arguments: arguments,
                                          donated: donated + Array(repeating: false, count: arguments.count - donated.count))
        counters.executions += 1
        counters.runSeconds += monotonicSeconds() - started
        for (id, buffer) in zip(outputs, out) { slots[id]?.buffer = buffer }
        running = (run, checks.isEmpty ? nil : out[outputs.count], t.checks.map(\.1))
        if waiting { try finishRunning() }
        return Array(out.suffix(extra.count))
    }

    /// Waits for the program in flight, if any, and reads its checks into `pendingError`.
    private func finishRunning() throws {
        guard let (run, flagsBuffer, messages) = running else { return }
        running = nil
        let began = monotonicSeconds()
        defer { counters.runSeconds += monotonicSeconds() - began }
        try run.wait()
        guard let flagsBuffer else { return }
        var flags = [Int32](repeating: 0, count: messages.count)
        try flags.withUnsafeMutableBytes { try client.download(flagsBuffer, into: $0.baseAddress!, bytes: $0.count) }
        if let i = flags.firstIndex(where: { $0 != 0 }), pendingError == nil {
            pendingError = .invalidArgument(messages[i])
        }
    }
}

/// The ops recorded since the last run, and what they read and wrote.
final class Trace {
    let hlo = HLOBuilder()
    /// The latest value of each slot the trace touched.
    var current: [UInt: HLOValue] = [:]
    var written: Set<UInt> = []
    var writeOrder: [UInt] = []
    /// Buffers passed as parameters (before the scalars), and the slot each came from.
    private var buffers: [PJRTClient.Buffer] = []
    private(set) var argumentSlots: [UInt?] = []
    var checks: [(HLOValue, String)] = []

    func set(_ id: UInt, _ v: HLOValue) {
        current[id] = v
        if written.insert(id).inserted { writeOrder.append(id) }
    }

    func argument(_ buffer: PJRTClient.Buffer, shape: [Int], type: HLOType, slot: UInt? = nil) -> HLOValue {
        buffers.append(buffer)
        argumentSlots.append(slot)
        return hlo.parameter(shape, type)
    }

    func module(returning results: [HLOValue], attributes: [Int: String]) -> String {
        hlo.module(returning: results, attributes: attributes)
    }

    /// The buffers to pass: the recorded ones, then the scalar vectors uploaded now.
    func arguments(client: PJRTClient, device: Int) throws -> [PJRTClient.Buffer] {
        var all = buffers
        if !hlo.floatScalars.isEmpty {
            all.append(try hlo.floatScalars.withUnsafeBytes { try client.upload($0.baseAddress!, type: .f32, shape: [hlo.floatScalars.count], device: device) })
        }
        if !hlo.wordScalars.isEmpty {
            all.append(try hlo.wordScalars.withUnsafeBytes { try client.upload($0.baseAddress!, type: .ui32, shape: [hlo.wordScalars.count], device: device) })
        }
        return all
    }
}
