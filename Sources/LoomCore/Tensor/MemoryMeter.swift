import Foundation

/// Counts the bytes of tensor storage allocated while it is the thread's current meter
/// and not yet freed, and the high-water mark of that count: how a pipeline stage
/// measures the memory one training step holds beyond what it starts with (activations
/// kept for backward, gradients, temporaries). A storage is charged to the meter that was
/// current when it was allocated and credited back to that meter when it is freed, on
/// whatever thread frees it. Threads with no current meter are not counted.
///
/// Each storage's bytes are counted under a `MemoryCategory` (what the block holds), so a
/// meter also gives the split of what is live and of its high-water mark: parameters,
/// gradients, optimizer state, activations and communication buffers (the ZeRO paper's
/// accounting; PyTorch's memory profiler has the same categories).
///
/// A meter may have a `limit`: then an allocation that would take its count past the
/// limit fails with `LoomError.outOfMemory`, naming the bytes (a rank's memory budget,
/// `LOOM_MEMORY_LIMIT`). A meter made current inside another (a pipeline stage's inside
/// its rank's) passes its charges on to the outer one, whose limit holds too.
public final class MemoryMeter: @unchecked Sendable {
    private let lock = NSLock()
    private var live = 0
    private var high = 0
    /// `live` by category, and what it was when `high` was last reached.
    private var split = MemorySplit(), highSplit = MemorySplit()
    /// Bytes this meter's count may not exceed (nil: no limit).
    public let limit: Int?
    /// Whose bytes these are, for the error ("rank 2").
    public let label: String
    /// The meter that was current when this one was first made current.
    private var parent: MemoryMeter?

    public init(limit: Int? = nil, label: String = "this process") {
        self.limit = limit
        self.label = label
    }

    /// Bytes allocated under this meter and not yet freed.
    public var liveBytes: Int { lock.lock(); defer { lock.unlock() }; return live }
    /// The most `liveBytes` has been since the last `resetPeak()`.
    public var peakBytes: Int { lock.lock(); defer { lock.unlock() }; return high }

    /// `liveBytes` by what the bytes hold.
    public var liveSplit: MemorySplit { lock.lock(); defer { lock.unlock() }; return split }
    /// `liveBytes` by what the bytes held at the moment of the peak (`peakBytes`).
    public var peakSplit: MemorySplit { lock.lock(); defer { lock.unlock() }; return highSplit }

    /// Starts a new high-water mark at the current live count.
    public func resetPeak() { lock.lock(); high = live; highSplit = split; lock.unlock() }

    func charge(_ bytes: Int, _ category: MemoryCategory) {
        lock.lock()
        live += bytes
        split[category] += bytes
        if live > high { high = live; highSplit = split }
        lock.unlock()
        parent?.charge(bytes, category)
    }

    func credit(_ bytes: Int, _ category: MemoryCategory) {
        lock.lock(); live -= bytes; split[category] -= bytes; lock.unlock()
        parent?.credit(bytes, category)
    }

    /// Counts `bytes` already charged under `from` under `to` instead (the total is unchanged).
    func move(_ bytes: Int, from: MemoryCategory, to: MemoryCategory) {
        lock.lock(); split[from] -= bytes; split[to] += bytes; lock.unlock()
        parent?.move(bytes, from: from, to: to)
    }

    /// Throws if allocating `bytes` more would take this meter, or one it passes its
    /// charges to, past its limit. (Allocations that cannot throw, a layer's initial
    /// values, are counted but not refused: the next one that can throw is.)
    public func admit(_ bytes: Int, shape: [Int]) throws {
        var meter: MemoryMeter? = self
        while let m = meter {
            if let limit = m.limit {
                let held = m.liveBytes
                if held + bytes > limit {
                    throw LoomError.outOfMemory("\(m.label): allocating \(MemoryMeter.format(bytes)) for a tensor \(describe(shape)) "
                        + "while holding \(MemoryMeter.format(held)) would pass its limit of \(MemoryMeter.format(limit)) (LOOM_MEMORY_LIMIT); "
                        + "shard the model's states (--zero 3, --tp, --pp) or lower the batch")
                }
            }
            meter = m.parent
        }
    }

    /// "1.50 GiB (1610612736 bytes)".
    public static func format(_ bytes: Int) -> String {
        let units = ["bytes", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(bytes), u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        return u == 0 ? "\(bytes) bytes" : String(format: "%.2f %@ (%ld bytes)", v, units[u], bytes)
    }

    /// A byte count as `LOOM_MEMORY_LIMIT` takes it: a number of bytes, or one with a
    /// suffix K, M, G, T (powers of 1024; `KiB`, `MB`... read alike). Nil when it is not one.
    public static func parseBytes(_ text: String) -> Int? {
        let t = text.trimmingCharacters(in: .whitespaces).uppercased()
        let digits = t.prefix { $0.isNumber || $0 == "." }
        guard let v = Double(digits), v > 0 else { return nil }
        let k = 1024.0
        let scales: [String: Double] = ["": 1, "B": 1, "K": k, "KB": k, "KIB": k, "M": k * k, "MB": k * k, "MIB": k * k,
                                        "G": k * k * k, "GB": k * k * k, "GIB": k * k * k, "T": k * k * k * k, "TB": k * k * k * k, "TIB": k * k * k * k]
        guard let scale = scales[String(t.dropFirst(digits.count)).trimmingCharacters(in: .whitespaces)] else { return nil }
        return Int(v * scale)
    }

    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    /// The meter allocations on this thread are charged to (nil: none).
    public static var current: MemoryMeter? {
        pthread_getspecific(key).map { Unmanaged<MemoryMeter>.fromOpaque($0).takeUnretainedValue() }
    }

    /// Runs `body` with `meter` as this thread's current meter.
    public static func measuring<T>(_ meter: MemoryMeter, _ body: () throws -> T) rethrows -> T {
        let previous = pthread_getspecific(key)
        if let outer = current, outer !== meter, meter.parent == nil { meter.parent = outer }
        pthread_setspecific(key, Unmanaged.passUnretained(meter).toOpaque())
        defer { pthread_setspecific(key, previous) }
        return try withExtendedLifetime(meter) { try body() }
    }
}

/// What a block of tensor memory holds. A storage starts as `activations` (everything a
/// step computes: saved activations, temporaries, inputs); the code that gives it a role
/// says so (`Tensor.tagMemory`): a layout its parameters, an optimizer its state, data
/// parallelism its buckets, and a leaf's `grad` is a gradient when it is assigned.
public enum MemoryCategory: Int, CaseIterable, Sendable {
    case parameters, gradients, optimizerState, activations, communication

    /// The name in `loom bench --json` (`optimizer_state`).
    public var name: String {
        switch self {
        case .parameters: "parameters"
        case .gradients: "gradients"
        case .optimizerState: "optimizer_state"
        case .activations: "activations"
        case .communication: "communication"
        }
    }
}

/// Bytes by `MemoryCategory`.
public struct MemorySplit: Equatable, Sendable {
    private var bytes = [Int](repeating: 0, count: MemoryCategory.allCases.count)
    public init() {}
    public subscript(_ category: MemoryCategory) -> Int {
        get { bytes[category.rawValue] }
        set { bytes[category.rawValue] = newValue }
    }
    public var total: Int { bytes.reduce(0, +) }
    /// Name to bytes, every category present.
    public var named: [String: Int] {
        Dictionary(uniqueKeysWithValues: MemoryCategory.allCases.map { ($0.name, self[$0]) })
    }
}
