import Foundation
import LoomCore
import LoomNN
import LoomXLA
import XCTest

/// The programs Loom writes for a training step compile for TPUs: each model's step
/// programs, recorded on XLA:CPU, handed to libtpu's compiler for a TPU v5e and a v6e slice
/// (no TPU needed to compile; libtpu from PyPI, cached by scripts/test.sh). Any rejection
/// fails with the compiler's message. This proves the lowering is TPU-legal, not that it
/// runs or how fast (docs/xla.md).
final class TPUCompileTests: XCTestCase {
    static let topologies = ["v5e:2x2", "v6e:2x2"]

    func libtpu() throws -> PJRTCompiler {
        if let why = ProcessInfo.processInfo.environment["LOOM_LIBTPU_UNAVAILABLE"] { throw XCTSkip(why) }
        guard let path = PJRTPlugin.locate(.tpu) else {
            XCTFail("no libtpu: scripts/test.sh caches it (LOOM_LIBTPU names it)"); throw XCTSkip("no libtpu")
        }
        setenv("TPU_SKIP_MDS_QUERY", "1", 1)  // else libtpu waits for the cloud's metadata server
        return try PJRTCompiler(plugin: path)
    }

    /// Two steps of each model on XLA:CPU: the programs a training run compiles.
    func stepPrograms() throws -> [(model: String, text: String)] {
        var out: [(String, String)] = []
        var rng = Philox(seed: 3)
        func images(_ n: Int, _ b: any Backend) -> (Tensor, Tensor) {
            (Tensor((0..<n * 784).map { _ in rng.nextFloat() }, shape: [n, 1, 28, 28], on: b),
             Tensor(indices: (0..<n).map { _ in Int32(rng.nextInt(below: 10)) }, shape: [n], on: b))
        }
        let models: [(String, Precision, (XLABackend) throws -> (Module, () throws -> Tensor))] = [
            ("mlp", .float32, { b in
                let m = MLP(sizes: [784, 32, 10], seed: 1, on: b); let (x, y) = images(8, b)
                return (m, { try m(x.reshaped([8, 784])).crossEntropy(targets: y) })
            }),
            ("cnn", .float32, { b in
                let m = CNN(residual: true, seed: 1, on: b); let (x, y) = images(4, b)
                return (m, { try m(x).crossEntropy(targets: y) })
            }),
            ("resnet20", .float32, { b in
                let m = try ResNet(depth: 20, width: 4, channels: 1, classes: 10, seed: 1, on: b); let (x, y) = images(4, b)
                return (m, { try m(x).crossEntropy(targets: y) })
            }),
        ] + [Precision.float32, .bfloat16].map { p in
            ("gpt \(p.rawValue)", p, { b in
                let m = try GPT(GPTConfig(vocabSize: 40, contextLength: 8, layers: 2, dModel: 16, heads: 2), seed: 1, on: b)
                let t = Tensor(indices: (0..<32).map { _ in Int32(rng.nextInt(below: 40)) }, shape: [4, 8], on: b)
                return (m, { try m.loss(tokens: t, targets: t) })
            })
        }
        for (name, precision, make) in models {
            let xla = try XLABackend()
            let before = xla.programs.count
            let (model, loss) = try make(xla)
            let opt = Adam.adamW(model.namedParameters(), lr: 1e-3, weightDecay: 0.1)
            for _ in 0..<2 {
                try withPrecision(precision) {
                    opt.zeroGrad()
                    let l = try loss()
                    try l.backward()
                    try opt.step()
                    _ = l.item
                }
            }
            out += xla.programs.dropFirst(before).map { (name, $0) }
        }
        return out
    }

    func testEveryModelsStepProgramsCompileForTPUv5eAndv6e() throws {
        let compiler = try libtpu()
        let programs = try stepPrograms()
        XCTAssertGreaterThanOrEqual(programs.count, 5)
        // A rejection is an error with the compiler's words (this program's types disagree).
        let bad = "func.func public @main(%a: tensor<4xf32>) -> tensor<4xi32> {\n  \"func.return\"(%a) : (tensor<4xf32>) -> ()\n}\n"
        XCTAssertThrowsError(try compiler.compile(bad, topology: Self.topologies[0])) { error in
            XCTAssertTrue("\(error)".contains("compiling for v5e:2x2"), "\(error)")
        }
        let started = Date()
        for (model, text) in programs {
            for topology in Self.topologies {
                XCTAssertNoThrow(try {
                    let bytes = try compiler.compile(text, topology: topology)
                    XCTAssertGreaterThan(bytes, 0, "\(model) on \(topology)")
                }(), "\(model) on \(topology)")
            }
        }
        print("TPUCompileTests: \(programs.count) programs (\(Set(programs.map(\.model)).sorted().joined(separator: ", "))) compiled for \(Self.topologies.joined(separator: " and ")) in \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
    }
}
