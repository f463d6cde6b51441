import Foundation
import LoomCore

// StableHLO as MLIR text, one function built op by op. Every op is written in MLIR's
// generic form ("stablehlo.add"(%a, %b) : (types) -> type): the form every StableHLO
// version parses the same way, where the pretty forms have changed between releases.
// Only core ops (the spec's, no CHLO or custom calls). StableHLO promises compatibility
// for versioned bytecode, not for text, so CI pins the plugins it parses this with.
//
// Values are named by their position in the function (%v0, %v1, …), never by anything
// of the process (a storage's id, an address): the same sequence of ops gives the same
// text, which is the key of the compilation cache.

/// An element type of StableHLO.
enum HLOType: String {
    case f32, bf16, f16, i32 = "i32", ui32, i1, i64, ui64

    init(_ dtype: DType) {
        switch dtype {
        case .float32: self = .f32
        case .bfloat16: self = .bf16
        case .float16: self = .f16
        case .int32: self = .i32
        }
    }

    var isFloat: Bool { self == .f32 || self == .bf16 || self == .f16 }
}

/// A value of the function being built: its SSA name and type.
struct HLOValue {
    let name: String
    let shape: [Int]
    let type: HLOType
    /// "tensor<AxBxf32>", written once: a value is named in the text of every op that reads it.
    let tensorType: String
    /// The value this one reshapes (name and shape), when a reshape made it.
    fileprivate var reshapeOf: (name: String, shape: [Int])?

    init(name: String, shape: [Int], type: HLOType) {
        self.name = name; self.shape = shape; self.type = type
        tensorType = HLOBuilder.tensorType(shape, type)
    }

    var count: Int { shape.reduce(1, *) }
}

/// Builds one function: parameters, a body and results.
final class HLOBuilder {
    private(set) var body: [String] = []
    private(set) var parameters: [HLOValue] = []
    private var next = 0

    static func tensorType(_ shape: [Int], _ type: HLOType) -> String {
        "tensor<" + shape.map { "\($0)x" }.joined() + type.rawValue + ">"
    }

    private func fresh(_ shape: [Int], _ type: HLOType) -> HLOValue {
        defer { next += 1 }
        return HLOValue(name: "%v\(next)", shape: shape, type: type)
    }

    /// A new parameter of the function.
    func parameter(_ shape: [Int], _ type: HLOType) -> HLOValue {
        let p = HLOValue(name: "%p\(parameters.count)", shape: shape, type: type)
        parameters.append(p)
        return p
    }

    /// Values the program reads at run time instead of having them written in its text (a
    /// learning rate, a position, a seed), so the text stays the same from step to step:
    /// two vectors, float32 and uint32, the function's last parameters. Scalar i is named
    /// %s<i> (%u<i>) and sliced from its vector at the top of the body, when the vectors'
    /// lengths are known.
    private(set) var floatScalars: [Float] = []
    private(set) var wordScalars: [UInt32] = []

    func scalar(_ x: Float) -> HLOValue {
        floatScalars.append(x)
        return HLOValue(name: "%s\(floatScalars.count - 1)", shape: [], type: .f32)
    }

    func scalar(_ x: UInt32) -> HLOValue {
        wordScalars.append(x)
        return HLOValue(name: "%u\(wordScalars.count - 1)", shape: [], type: .ui32)
    }

    /// The whole module: `main` returning `results`; `attributes[i]`: parameter i's
    /// attributes (a donated buffer's aliasing), if any.
    func module(returning results: [HLOValue], attributes: [Int: String] = [:]) -> String {
        var params = parameters.enumerated().map { i, p in
            "\(p.name): \(p.tensorType)" + (attributes[i].map { " {\($0)}" } ?? "")
        }
        var prologue: [String] = []
        for (vector, count, type, prefix) in [("%scalars", floatScalars.count, HLOType.f32, "%s"), ("%uscalars", wordScalars.count, .ui32, "%u")]
        where count > 0 {
            let vt = Self.tensorType([count], type), st = Self.tensorType([], type), one = Self.tensorType([1], type)
            params.append("\(vector): \(vt)")
            for i in 0..<count {
                prologue.append("\(prefix)\(i)x = \"stablehlo.slice\"(\(vector)) {start_indices = array<i64: \(i)>, limit_indices = array<i64: \(i + 1)>, strides = array<i64: 1>} : (\(vt)) -> \(one)")
                prologue.append("\(prefix)\(i) = \"stablehlo.reshape\"(\(prefix)\(i)x) : (\(one)) -> \(st)")
            }
        }
        let types = results.map(\.tensorType).joined(separator: ", ")
        var text = "module @loom {\n  func.func public @main(\(params.joined(separator: ", "))) -> (\(types)) {\n"
        text.reserveCapacity(text.utf8.count + (prologue + body).reduce(0) { $0 + $1.utf8.count + 5 } + 200 + types.utf8.count)
        for line in prologue + body {
            text += "    "
            text += line
            text += "\n"
        }
        text += "    \"func.return\"(" + results.map(\.name).joined(separator: ", ") + ") : (\(types)) -> ()\n  }\n}\n"
        return text
    }

    /// `"stablehlo.<op>"(operands) {attributes} : (operand types) -> result type`.
    private func op(_ name: String, _ operands: [HLOValue], _ attributes: String = "", region: String = "",
                    shape: [Int], type: HLOType) -> HLOValue {
        let r = fresh(shape, type)
        var line = r.name + " = \"stablehlo." + name + "\"("
        for (i, x) in operands.enumerated() { line += i == 0 ? x.name : ", " + x.name }
        line += ")" + region
        if !attributes.isEmpty { line += " {" + attributes + "}" }
        line += " : ("
        for (i, x) in operands.enumerated() { line += i == 0 ? x.tensorType : ", " + x.tensorType }
        line += ") -> " + r.tensorType
        body.append(line)
        return r
    }

    private static func array(_ v: [Int]) -> String { "array<i64" + (v.isEmpty ? "" : ": " + v.map(String.init).joined(separator: ", ")) + ">" }

    // MARK: Constants and shapes

    /// A splat constant of `shape`.
    func constant(_ value: Double, _ shape: [Int] = [], _ type: HLOType = .f32) -> HLOValue {
        let r = fresh(shape, type)
        let literal: String
        switch type {
        case .i1: literal = value != 0 ? "true" : "false"
        case .i32, .ui32, .i64, .ui64:  // ±∞: the type's extremes (a max reduction's start)
            literal = value.isInfinite ? (value > 0 ? String(Int32.max) : (type == .ui32 ? "0" : String(Int32.min))) : String(Int64(value))
        default:
            guard value.isInfinite else { literal = "\(value)"; break }
            // Infinities as their bit patterns (MLIR's hexadecimal float literals).
            let bits: [HLOType: (String, String)] = [.f32: ("0x7F800000", "0xFF800000"), .bf16: ("0x7F80", "0xFF80"), .f16: ("0x7C00", "0xFC00")]
            literal = value > 0 ? bits[type]!.0 : bits[type]!.1
        }
        body.append("\(r.name) = \"stablehlo.constant\"() {value = dense<\(literal)> : \(r.tensorType)} : () -> \(r.tensorType)")
        return r
    }

    func iota(_ shape: [Int], dimension: Int, _ type: HLOType = .i32) -> HLOValue {
        op("iota", [], "iota_dimension = \(dimension) : i64", shape: shape, type: type)
    }

    /// A reshape of a reshape reshapes the first one's operand: the chains that reading and
    /// writing views make ([n] → [r, c] → [1, r, c] → [r, c]) become one op, or none (a
    /// third of an mlp step's ops were reshapes, each costing the host its line of text), and
    /// the same reshape of the same value is written once.
    func reshape(_ x: HLOValue, _ shape: [Int]) -> HLOValue {
        if x.shape == shape { return x }
        precondition(x.count == shape.reduce(1, *), "reshape \(x.shape) to \(shape)")
        let source = x.reshapeOf.map { HLOValue(name: $0.name, shape: $0.shape, type: x.type) } ?? x
        if source.shape == shape { return source }
        let key = ReshapeKey(source: source.name, shape: shape)
        if let done = reshapes[key] { return done }
        var r = op("reshape", [source], shape: shape, type: x.type)
        r.reshapeOf = (source.name, source.shape)
        reshapes[key] = r
        return r
    }

    /// Reshapes already written, by operand and shape: a weight read five times in a step is
    /// reshaped once.
    private struct ReshapeKey: Hashable { let source: String, shape: [Int] }
    private var reshapes: [ReshapeKey: HLOValue] = [:]

    /// x broadcast to `shape`; `dims[i]` is the result axis of x's axis i.
    func broadcast(_ x: HLOValue, _ shape: [Int], dims: [Int]) -> HLOValue {
        if x.shape == shape && dims == Array(0..<shape.count) { return x }
        return op("broadcast_in_dim", [x], "broadcast_dimensions = \(Self.array(dims))", shape: shape, type: x.type)
    }

    /// A scalar (or any shape with trailing size-1 axes dropped) spread over `shape`.
    func splat(_ x: HLOValue, _ shape: [Int]) -> HLOValue {
        broadcast(reshape(x, []), shape, dims: [])
    }

    func slice(_ x: HLOValue, start: [Int], limit: [Int]) -> HLOValue {
        if start.allSatisfy({ $0 == 0 }) && limit == x.shape { return x }
        let shape = zip(start, limit).map { $1 - $0 }
        return op("slice", [x], "start_indices = \(Self.array(start)), limit_indices = \(Self.array(limit)), strides = \(Self.array(start.map { _ in 1 }))",
                  shape: shape, type: x.type)
    }

    /// x padded with `value` (a scalar of x's type) after the end of each axis.
    func padEnd(_ x: HLOValue, to shape: [Int]) -> HLOValue {
        if shape == x.shape { return x }
        let zero = constant(0, [], x.type)
        let high = zip(shape, x.shape).map { $0 - $1 }
        let zeros = Self.array(shape.map { _ in 0 })
        return op("pad", [x, zero], "edge_padding_low = \(zeros), edge_padding_high = \(Self.array(high)), interior_padding = \(zeros)",
                  shape: shape, type: x.type)
    }

    /// x with `update` written at `start` (constant offsets).
    func updateSlice(_ x: HLOValue, _ update: HLOValue, at start: [Int]) -> HLOValue {
        if update.shape == x.shape { return update }
        return updateSlice(x, update, atValues: start.map { constant(Double($0), [], .i32) })
    }

    /// x with `update` written at `start`, the offsets values of the program (i32 scalars).
    func updateSlice(_ x: HLOValue, _ update: HLOValue, atValues start: [HLOValue]) -> HLOValue {
        op("dynamic_update_slice", [x, update] + start, shape: x.shape, type: x.type)
    }

    func transpose(_ x: HLOValue, _ permutation: [Int]) -> HLOValue {
        if permutation == Array(0..<x.shape.count) { return x }
        return op("transpose", [x], "permutation = \(Self.array(permutation))", shape: permutation.map { x.shape[$0] }, type: x.type)
    }

    func concatenate(_ xs: [HLOValue], dimension: Int) -> HLOValue {
        if xs.count == 1 { return xs[0] }
        var shape = xs[0].shape
        shape[dimension] = xs.map { $0.shape[dimension] }.reduce(0, +)
        return op("concatenate", xs, "dimension = \(dimension) : i64", shape: shape, type: xs[0].type)
    }

    func convert(_ x: HLOValue, _ type: HLOType) -> HLOValue {
        x.type == type ? x : op("convert", [x], shape: x.shape, type: type)
    }

    // MARK: Arithmetic

    func binary(_ name: String, _ a: HLOValue, _ b: HLOValue) -> HLOValue {
        precondition(a.shape == b.shape, "\(name): \(a.shape) and \(b.shape)")
        return op(name, [a, b], shape: a.shape, type: a.type)
    }

    func add(_ a: HLOValue, _ b: HLOValue) -> HLOValue { binary("add", a, b) }
    func sub(_ a: HLOValue, _ b: HLOValue) -> HLOValue { binary("subtract", a, b) }
    func mul(_ a: HLOValue, _ b: HLOValue) -> HLOValue { binary("multiply", a, b) }
    func div(_ a: HLOValue, _ b: HLOValue) -> HLOValue { binary("divide", a, b) }
    func max(_ a: HLOValue, _ b: HLOValue) -> HLOValue { binary("maximum", a, b) }
    func pow(_ a: HLOValue, _ b: HLOValue) -> HLOValue { binary("power", a, b) }

    func unary(_ name: String, _ x: HLOValue) -> HLOValue { op(name, [x], shape: x.shape, type: x.type) }

    /// a (op) b where b is a scalar value spread over a's shape.
    func withScalar(_ name: String, _ a: HLOValue, _ s: HLOValue) -> HLOValue { binary(name, a, splat(s, a.shape)) }

    /// a (op) c for a constant c.
    func withConstant(_ name: String, _ a: HLOValue, _ c: Double) -> HLOValue { binary(name, a, constant(c, a.shape, a.type)) }

    func compare(_ a: HLOValue, _ b: HLOValue, _ direction: String) -> HLOValue {
        let kind = a.type.isFloat ? "FLOAT" : (a.type == .ui32 || a.type == .ui64 ? "UNSIGNED" : "SIGNED")
        return op("compare", [a, b], "comparison_direction = #stablehlo<comparison_direction \(direction)>, compare_type = #stablehlo<comparison_type \(kind)>",
                  shape: a.shape, type: .i1)
    }

    func select(_ predicate: HLOValue, _ onTrue: HLOValue, _ onFalse: HLOValue) -> HLOValue {
        op("select", [predicate, onTrue, onFalse], shape: onTrue.shape, type: onTrue.type)
    }

    // MARK: Reductions and products

    /// Sum (or max) over `dimensions`.
    func reduce(_ x: HLOValue, _ kind: ReduceOp, dimensions: [Int]) -> HLOValue {
        let initial = constant(kind == .sum ? 0 : -Double.infinity, [], x.type)
        let s = HLOBuilder.tensorType([], x.type)
        let combiner = kind == .sum ? "add" : "maximum"
        let region = "({\n      ^bb0(%a: \(s), %b: \(s)):\n        %c = \"stablehlo.\(combiner)\"(%a, %b) : (\(s), \(s)) -> \(s)\n        \"stablehlo.return\"(%c) : (\(s)) -> ()\n    })"
        let shape = x.shape.enumerated().filter { !dimensions.contains($0.offset) }.map(\.element)
        return op("reduce", [x, initial], "dimensions = \(Self.array(dimensions))", region: region, shape: shape, type: x.type)
    }

    /// Batched product over the given batch and contracting axes; the result is
    /// [batch..., lhs free..., rhs free...] in `resultType` (float32 for bf16 operands).
    func dot(_ a: HLOValue, _ b: HLOValue, batch: [Int], contractA: Int, contractB: Int, resultType: HLOType = .f32) -> HLOValue {
        let freeA = (0..<a.shape.count).filter { !batch.contains($0) && $0 != contractA }
        let freeB = (0..<b.shape.count).filter { !batch.contains($0) && $0 != contractB }
        let shape = batch.map { a.shape[$0] } + freeA.map { a.shape[$0] } + freeB.map { b.shape[$0] }
        let b0 = batch.map(String.init).joined(separator: ", ")
        return op("dot_general", [a, b],
                  "dot_dimension_numbers = #stablehlo.dot<lhs_batching_dimensions = [\(b0)], rhs_batching_dimensions = [\(b0)], lhs_contracting_dimensions = [\(contractA)], rhs_contracting_dimensions = [\(contractB)]>",
                  shape: shape, type: resultType)
    }

    /// A 2-D convolution; `layout` is StableHLO's dimension numbers, e.g.
    /// "[b, f, 0, 1]x[o, i, 0, 1]->[b, f, 0, 1]"; `padding` is (low, high) per spatial axis.
    func convolution(_ lhs: HLOValue, _ rhs: HLOValue, layout: String, strides: [Int], padding: [(Int, Int)],
                     lhsDilation: [Int] = [1, 1], rhsDilation: [Int] = [1, 1], shape: [Int]) -> HLOValue {
        let pads = padding.map { "[\($0.0), \($0.1)]" }.joined(separator: ", ")
        return op("convolution", [lhs, rhs],
                  "batch_group_count = 1 : i64, dimension_numbers = #stablehlo.conv<\(layout)>, feature_group_count = 1 : i64, lhs_dilation = \(Self.array(lhsDilation)), padding = dense<[\(pads)]> : tensor<\(padding.count)x2xi64>, rhs_dilation = \(Self.array(rhsDilation)), window_strides = \(Self.array(strides))",
                  shape: shape, type: lhs.type)
    }

    func reverse(_ x: HLOValue, dimensions: [Int]) -> HLOValue {
        op("reverse", [x], "dimensions = \(Self.array(dimensions))", shape: x.shape, type: x.type)
    }

    /// x padded with `value` (a scalar value): `low`/`high` per axis (negative crops) and
    /// `interior` zeros between elements.
    func pad(_ x: HLOValue, _ value: HLOValue, low: [Int], high: [Int], interior: [Int]) -> HLOValue {
        let shape = x.shape.indices.map { i in low[i] + high[i] + x.shape[i] + Swift.max(0, x.shape[i] - 1) * interior[i] }
        return op("pad", [x, value], "edge_padding_low = \(Self.array(low)), edge_padding_high = \(Self.array(high)), interior_padding = \(Self.array(interior))",
                  shape: shape, type: x.type)
    }

    /// A strided slice.
    func slice(_ x: HLOValue, start: [Int], limit: [Int], strides: [Int]) -> HLOValue {
        let shape = x.shape.indices.map { i in (limit[i] - start[i] + strides[i] - 1) / strides[i] }
        return op("slice", [x], "start_indices = \(Self.array(start)), limit_indices = \(Self.array(limit)), strides = \(Self.array(strides))",
                  shape: shape, type: x.type)
    }

    /// Rows of `table` [V, C] at int32 `indices` [N] → [N, C].
    func gatherRows(_ table: HLOValue, _ indices: HLOValue) -> HLOValue {
        let n = indices.count, c = table.shape[1]
        let idx = reshape(indices, [n, 1])
        return op("gather", [table, idx],
                  "dimension_numbers = #stablehlo.gather<offset_dims = [1], collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = 1>, slice_sizes = array<i64: 1, \(c)>, indices_are_sorted = false",
                  shape: [n, c], type: table.type)
    }

    /// table [V, C] with `updates` [N, C] added at rows `indices` [N] (repeats add up;
    /// indices outside 0..<V are skipped).
    func scatterAddRows(_ table: HLOValue, _ indices: HLOValue, _ updates: HLOValue) -> HLOValue {
        let n = indices.count
        let idx = reshape(indices, [n, 1])
        let s = HLOBuilder.tensorType([], table.type)
        let region = "({\n      ^bb0(%a: \(s), %b: \(s)):\n        %c = \"stablehlo.add\"(%a, %b) : (\(s), \(s)) -> \(s)\n        \"stablehlo.return\"(%c) : (\(s)) -> ()\n    })"
        return op("scatter", [table, idx, updates],
                  "scatter_dimension_numbers = #stablehlo.scatter<update_window_dims = [1], inserted_window_dims = [0], scatter_dims_to_operand_dims = [0], index_vector_dim = 1>, indices_are_sorted = false, unique_indices = false",
                  region: region, shape: table.shape, type: table.type)
    }
}
