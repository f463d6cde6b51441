import Foundation
import LoomCore
import TOMLKit

/// The machines a plan is for: nodes of ranks, what one device does, and the links
/// between ranks. Read from TOML (`loom plan --cluster FILE`; examples/clusters/), or
/// measured on this machine (`loom plan --calibrate`).
///
///     [cluster]  name = "DGX A100 80GB", nodes = 192, devices_per_node = 8
///     [device]  memory_gib = 80, matmul_tflops_bf16 = 250, memory_gbps = 1600, ...
///     [intra_node]  bandwidth_gbps = 235, latency_us = 5     (NVLink, per rank)
///     [inter_node]  bandwidth_gbps = 23, latency_us = 10     (InfiniBand, per rank)
///
/// Throughputs are achieved ones (what a large GEMM or a copy reaches), not datasheet
/// peaks. A CPU's ranks share its cores: `cores` > 0 says how many, and the figures
/// are given per thread count (`threads = [1, 2]`, each throughput a list alike).
public struct Cluster: Equatable, Sendable {
    public var name = "cluster"
    public var nodes = 1
    public var devicesPerNode = 8
    public var device = Device()
    public var intraNode = Link()
    public var interNode = Link()
    /// Measured products (this machine's calibration): shape and threads to seconds.
    public var gemms: [GEMMSample] = [] { didSet { gemmIndex = Cluster.index(gemms) } }
    /// `gemms` by shape and threads, for the time model's lookups.
    private var gemmIndex: [GEMMKey: Double] = [:]
    /// Measured attention ops (forward and backward seconds).
    public var attentions: [AttentionSample] = []
    /// Measured kernels (forward and backward seconds at a size).
    public var kernels: [KernelSample] = []

    public init() {}

    public struct Device: Equatable, Sendable {
        public var name = "device"
        public var memoryBytes = 0.0
        /// Compute units the ranks of a node share (a CPU's cores); 0: each rank has its own device.
        public var cores = 0
        /// Thread counts the throughputs below are given for (one entry on a GPU).
        public var threads = [1]
        /// Achieved matrix-product FLOP/s by precision, per entry of `threads`.
        public var matmulFloat32 = [1e12]
        public var matmulBF16 = [1e12]
        /// Convolution FLOP/s (nil: the matrix throughput).
        public var convolution: [Double]? = nil
        /// Bytes/s that elementwise kernels stream, per entry of `threads`.
        public var memoryBandwidth = [1e11]
        /// Seconds of host work per op dispatched (a launch, the op's bookkeeping).
        public var opOverhead = 5e-6
        /// A measured step's time over the sum of its kernels' timings, per entry of
        /// `threads`: what composing kernels timed alone misses (autodiff's gradient sums,
        /// allocation, caches cold between kernels, ranks sharing the memory bus). 1 where
        /// no step was measured.
        public var stepScale = [1.0]
        public init() {}
    }

    /// A link's α–β figures, per rank: a message of S bytes takes latency + S / bandwidth.
    public struct Link: Equatable, Sendable {
        public var bandwidth = 1e10
        public var latency = 1e-5
        public init(bandwidth: Double = 1e10, latency: Double = 1e-5) { self.bandwidth = bandwidth; self.latency = latency }
    }

    public struct GEMMSample: Equatable, Sendable {
        public var shape: GEMMShape
        public var threads: Int
        public var seconds: Double
        public init(shape: GEMMShape, threads: Int, seconds: Double) { self.shape = shape; self.threads = threads; self.seconds = seconds }
    }

    public struct AttentionSample: Equatable, Sendable {
        public var op: AttentionOp
        public var threads: Int
        public var forward: Double, backward: Double
    }

    public struct KernelSample: Equatable, Sendable {
        public var use: KernelUse
        public var threads: Int
        public var forward: Double, backward: Double
    }

    public var ranks: Int { nodes * devicesPerNode }

    /// Forward and backward seconds of a kernel: timed at this size, or scaled by elements
    /// from the nearest size timed, or its bytes at the device's bandwidth.
    func kernelSeconds(_ k: KernelUse, threads: Int) -> (Double, Double) {
        let t = device.threads[slot(threads)]
        let same = kernels.filter { $0.use.kind == k.kind && $0.threads == t }
        if let exact = same.first(where: { $0.use == k }) { return (exact.forward, exact.backward) }
        if let near = same.min(by: { abs(log(Double($0.use.elements) / Double(k.elements))) < abs(log(Double($1.use.elements) / Double(k.elements))) }) {
            let r = Double(k.elements) / Double(near.use.elements)
            return (near.forward * r, near.backward * r)
        }
        let f = Double(k.elements) * k.kind.bytesPerElement / device.memoryBandwidth[slot(threads)]
        return (f, 2 * f)
    }

    /// Forward and backward seconds of an attention op where it was timed (nil: not).
    func attentionSeconds(_ op: AttentionOp, threads: Int) -> (Double, Double)? {
        let t = device.threads[slot(threads)]
        return attentions.first { $0.op == op && $0.threads == t }.map { ($0.forward, $0.backward) }
    }

    /// Index into the per-thread lists for a rank with `threads` threads.
    func slot(_ threads: Int) -> Int {
        device.threads.enumerated().min { abs($0.element - threads) < abs($1.element - threads) }!.offset
    }

    /// Seconds for `shape` on a rank with `threads` threads: the measured figure when this
    /// shape was calibrated, else its FLOPs at the device's matrix throughput.
    func gemmSeconds(_ shape: GEMMShape, threads: Int, precision: Precision) -> Double {
        let t = device.threads[slot(threads)]
        if let s = gemmIndex[GEMMKey(shape: shape, threads: t)] { return precision == .bfloat16 ? s * bf16Ratio(t) : s }
        let rate = precision == .bfloat16 ? device.matmulBF16[slot(threads)] : device.matmulFloat32[slot(threads)]
        return shape.flops / rate
    }

    func bf16Ratio(_ threads: Int) -> Double { device.matmulFloat32[slot(threads)] / device.matmulBF16[slot(threads)] }

    struct GEMMKey: Hashable { var shape: GEMMShape; var threads: Int }
    static func index(_ gemms: [GEMMSample]) -> [GEMMKey: Double] {
        Dictionary(gemms.map { (GEMMKey(shape: $0.shape, threads: $0.threads), $0.seconds) }, uniquingKeysWith: min)
    }
}

// MARK: TOML

extension Cluster {
    /// Each key once: its table, name, meaning, and how it reads and writes.
    struct Key {
        let table: String, name: String, help: String
        let read: (inout Cluster, TOMLValueConvertible) -> Bool
        let write: (Cluster) -> String?
    }

    static func number(_ v: TOMLValueConvertible) -> Double? { v.double ?? v.int.map(Double.init) }
    /// A number or a list of numbers (per thread count).
    static func numbers(_ v: TOMLValueConvertible) -> [Double]? {
        if let x = number(v) { return [x] }
        guard let a = v.array else { return nil }
        let xs = a.compactMap { number($0) }
        return xs.count == a.count && !xs.isEmpty ? xs : nil
    }
    static func list(_ xs: [Double], _ scale: Double) -> String {
        xs.count == 1 ? format(xs[0] / scale) : "[" + xs.map { format($0 / scale) }.joined(separator: ", ") + "]"
    }
    static func format(_ x: Double) -> String { String(format: "%.6g", x) }

    static func scaled(_ t: String, _ n: String, _ help: String, _ scale: Double, _ kp: WritableKeyPath<Cluster, [Double]>) -> Key {
        Key(table: t, name: n, help: help, read: { c, v in
            guard let xs = numbers(v), xs.allSatisfy({ $0 > 0 }) else { return false }
            c[keyPath: kp] = xs.map { $0 * scale }; return true
        }, write: { list($0[keyPath: kp], scale) })
    }
    static func scalar(_ t: String, _ n: String, _ help: String, _ scale: Double, _ kp: WritableKeyPath<Cluster, Double>) -> Key {
        Key(table: t, name: n, help: help, read: { c, v in
            guard let x = number(v), x >= 0 else { return false }
            c[keyPath: kp] = x * scale; return true
        }, write: { format($0[keyPath: kp] / scale) })
    }
    static func integer(_ t: String, _ n: String, _ help: String, min: Int, _ kp: WritableKeyPath<Cluster, Int>) -> Key {
        Key(table: t, name: n, help: help, read: { c, v in
            guard let i = v.int, i >= min else { return false }
            c[keyPath: kp] = i; return true
        }, write: { "\($0[keyPath: kp])" })
    }
    static func text(_ t: String, _ n: String, _ help: String, _ kp: WritableKeyPath<Cluster, String>) -> Key {
        Key(table: t, name: n, help: help, read: { c, v in
            guard let s = v.string else { return false }
            c[keyPath: kp] = s; return true
        }, write: { "\"\($0[keyPath: kp].replacingOccurrences(of: "\"", with: "'"))\"" })
    }

    static let keys: [Key] = [
        text("cluster", "name", "a name for the report", \.name),
        integer("cluster", "nodes", "machines", min: 1, \.nodes),
        integer("cluster", "devices_per_node", "ranks each machine runs", min: 1, \.devicesPerNode),
        text("device", "name", "the device", \.device.name),
        scalar("device", "memory_gib", "memory per rank, GiB", 1073741824, \.device.memoryBytes),
        integer("device", "cores", "compute units a node's ranks share (a CPU's cores; 0: a device per rank)", min: 0, \.device.cores),
        Key(table: "device", name: "threads", help: "thread counts the throughputs are given for", read: { c, v in
            guard let xs = numbers(v), xs.allSatisfy({ $0 >= 1 && $0 == $0.rounded() }) else { return false }
            c.device.threads = xs.map { Int($0) }; return true
        }, write: { c in "[" + c.device.threads.map(String.init).joined(separator: ", ") + "]" }),
        scaled("device", "matmul_tflops_float32", "achieved float32 matrix-product TFLOP/s", 1e12, \.device.matmulFloat32),
        scaled("device", "matmul_tflops_bf16", "achieved bf16 matrix-product TFLOP/s (float32 accumulation)", 1e12, \.device.matmulBF16),
        Key(table: "device", name: "convolution_tflops", help: "achieved convolution TFLOP/s (default: the float32 matrix figure)", read: { c, v in
            guard let xs = numbers(v), xs.allSatisfy({ $0 > 0 }) else { return false }
            c.device.convolution = xs.map { $0 * 1e12 }; return true
        }, write: { c in c.device.convolution.map { list($0, 1e12) } }),
        scaled("device", "memory_gbps", "bytes/s elementwise kernels stream, GB/s", 1e9, \.device.memoryBandwidth),
        scalar("device", "op_overhead_us", "host time per op dispatched, microseconds", 1e-6, \.device.opOverhead),
        scaled("device", "step_scale", "a measured step's time over its kernels' sum (1: not measured)", 1, \.device.stepScale),
        scalar("intra_node", "bandwidth_gbps", "per-rank bandwidth within a node, GB/s", 1e9, \.intraNode.bandwidth),
        scalar("intra_node", "latency_us", "per-message latency within a node, microseconds", 1e-6, \.intraNode.latency),
        scalar("inter_node", "bandwidth_gbps", "per-rank bandwidth between nodes, GB/s", 1e9, \.interNode.bandwidth),
        scalar("inter_node", "latency_us", "per-message latency between nodes, microseconds", 1e-6, \.interNode.latency),
    ]
    static var tables: [String] { var seen: [String] = []; for k in keys where !seen.contains(k.table) { seen.append(k.table) }; return seen }

    /// Reads a cluster description; `path` names it in messages.
    public static func parse(_ text: String, path: String) throws -> Cluster {
        try ConfigFile.checkCharactersOutsideStrings(text, path: path)
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch let e as TOMLParseError {
            throw LoomError.config("\(path): not valid TOML at line \(e.source.begin.line), column \(e.source.begin.column)")
        }
        var c = Cluster()
        for name in table.keys {
            if name == "gemm" {
                guard let rows = table[name]?.array else { throw LoomError.config("\(path): [[gemm]] must be an array of tables") }
                for row in rows {
                    guard let t = row.table, let s = t["shape"]?.array?.compactMap({ $0.int }), s.count == 4,
                          let threads = t["threads"]?.int, let us = t["us"].flatMap(number), us > 0 else {
                        throw LoomError.config("\(path): each [[gemm]] needs shape = [m, n, k, batch], threads and us")
                    }
                    c.gemms.append(GEMMSample(shape: GEMMShape(m: s[0], n: s[1], k: s[2], batch: s[3]), threads: threads, seconds: us * 1e-6))
                }
                continue
            }
            if name == "attention" {
                guard let rows = table[name]?.array else { throw LoomError.config("\(path): [[attention]] must be an array of tables") }
                for row in rows {
                    guard let t = row.table, let s = t["shape"]?.array?.compactMap({ $0.int }), s.count == 4,
                          let threads = t["threads"]?.int, let f = t["forward_us"].flatMap(number), let b = t["backward_us"].flatMap(number) else {
                        throw LoomError.config("\(path): each [[attention]] needs shape = [batch, heads, length, head_size], threads, forward_us and backward_us")
                    }
                    c.attentions.append(AttentionSample(op: AttentionOp(batch: s[0], heads: s[1], length: s[2], headSize: s[3]), threads: threads,
                                                        forward: f * 1e-6, backward: b * 1e-6))
                }
                continue
            }
            if name == "kernel" {
                guard let rows = table[name]?.array else { throw LoomError.config("\(path): [[kernel]] must be an array of tables") }
                for row in rows {
                    guard let t = row.table, let kind = t["name"]?.string.flatMap(KernelKind.init(rawValue:)), let e = t["elements"]?.int,
                          let inner = t["inner"]?.int, let threads = t["threads"]?.int,
                          let f = t["forward_us"].flatMap(number), let b = t["backward_us"].flatMap(number) else {
                        throw LoomError.config("\(path): each [[kernel]] needs name (one of \(KernelKind.allCases.map(\.rawValue).joined(separator: ", "))), "
                            + "elements, inner, threads, forward_us and backward_us")
                    }
                    c.kernels.append(KernelSample(use: KernelUse(kind, elements: e, inner: inner), threads: threads, forward: f * 1e-6, backward: b * 1e-6))
                }
                continue
            }
            guard tables.contains(name), let sub = table[name]?.table else {
                throw LoomError.config("\(path): unknown table [\(name)]; valid tables: \((tables + ["[gemm]", "[attention]", "[kernel]"]).map { "[\($0)]" }.joined(separator: ", "))")
            }
            let valid = keys.filter { $0.table == name }
            for key in sub.keys {
                guard let k = valid.first(where: { $0.name == key }) else {
                    throw LoomError.config("\(path): unknown key '\(name).\(key)'; valid keys in [\(name)]: \(valid.map(\.name).joined(separator: ", "))")
                }
                guard k.read(&c, sub[key]!) else {
                    throw LoomError.config("\(path): \(name).\(key) (\(k.help)) cannot be \(sub[key]!.tomlValue.debugDescription)")
                }
            }
        }
        let n = c.device.threads.count
        for (what, xs) in [("matmul_tflops_float32", c.device.matmulFloat32), ("matmul_tflops_bf16", c.device.matmulBF16),
                           ("memory_gbps", c.device.memoryBandwidth), ("convolution_tflops", c.device.convolution ?? c.device.matmulFloat32)]
            + (c.device.stepScale == [1] ? [] : [("step_scale", c.device.stepScale)])
        where xs.count != n {
            throw LoomError.config("\(path): device.\(what) has \(xs.count) values but device.threads lists \(n) thread counts")
        }
        guard c.device.memoryBytes > 0 else { throw LoomError.config("\(path): device.memory_gib is missing (memory per rank, GiB)") }
        return c
    }

    public static func load(_ path: String) throws -> Cluster {
        guard let d = FileManager.default.contents(atPath: path), let text = String(data: d, encoding: .utf8) else {
            throw LoomError.io("cluster '\(path)': cannot read (missing or not UTF-8)")
        }
        return try parse(text, path: path)
    }

    /// The description as TOML (every key; measured products as [[gemm]] rows).
    public func render(comment: String = "") -> String {
        var out = comment.isEmpty ? "" : comment.split(separator: "\n", omittingEmptySubsequences: false).map { "# " + $0 }.joined(separator: "\n") + "\n\n"
        for t in Cluster.tables {
            out += "[\(t)]\n"
            for k in Cluster.keys where k.table == t { if let v = k.write(self) { out += "\(k.name) = \(v)\n" } }
            out += "\n"
        }
        for g in gemms.sorted(by: { ($0.threads, $0.shape.description) < ($1.threads, $1.shape.description) }) {
            out += "[[gemm]]\nshape = [\(g.shape.m), \(g.shape.n), \(g.shape.k), \(g.shape.batch)]\nthreads = \(g.threads)\nus = \(Cluster.format(g.seconds * 1e6))\n"
        }
        for k in kernels.sorted(by: { ($0.threads, $0.use.kind.rawValue, $0.use.elements) < ($1.threads, $1.use.kind.rawValue, $1.use.elements) }) {
            out += "[[kernel]]\nname = \"\(k.use.kind.rawValue)\"\nelements = \(k.use.elements)\ninner = \(k.use.inner)\nthreads = \(k.threads)\n"
                + "forward_us = \(Cluster.format(k.forward * 1e6))\nbackward_us = \(Cluster.format(k.backward * 1e6))\n"
        }
        for a in attentions.sorted(by: { ($0.threads, $0.op.batch, $0.op.heads) < ($1.threads, $1.op.batch, $1.op.heads) }) {
            out += "[[attention]]\nshape = [\(a.op.batch), \(a.op.heads), \(a.op.length), \(a.op.headSize)]\nthreads = \(a.threads)\n"
                + "forward_us = \(Cluster.format(a.forward * 1e6))\nbackward_us = \(Cluster.format(a.backward * 1e6))\n"
        }
        return out
    }
}
