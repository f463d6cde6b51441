import CLoomKernels
import XCTest
import LoomCore

/// `ThreadSpeeds`: a product's rows (or attention's heads) dealt to the threads in proportion
/// to how fast each ran its share lately, and the same floats whatever the split.
final class ThreadSpeedsTests: XCTestCase {
    func randomTensor(_ shape: [Int], seed: UInt64) -> Tensor {
        var rng = Philox(seed: seed)
        return Tensor((0..<shape.reduce(1, *)).map { _ in 2 * rng.nextFloat() - 1 }, shape: shape)
    }

    func counts(_ r: [(start: Int, count: Int)]) -> [Int] { r.map(\.count) }

    /// `count` products of `shape` where thread 1 ran `slower` times longer than thread 0 per unit of work.
    func record(_ speeds: ThreadSpeeds, shape: ThreadSpeeds.Shape, slower: Double, count: Int = 40) {
        for _ in 0..<count { speeds.record(work: [1000, 1000], seconds: [1e-3, slower * 1e-3], shape: shape) }
    }

    func testASplitFollowsTheMeasuredSpeedsOfItsShapeOnly() {
        let speeds = ThreadSpeeds(threads: 2)
        let gemm = [0, 2048, 384, 128, 0, 1], other = [0, 2048, 128, 512, 0, 1]
        XCTAssertEqual(counts(speeds.ranges(2048, pieces: 2, multiple: 8, shape: gemm)), [1024, 1024], "even before any timing")
        record(speeds, shape: gemm, slower: 2)
        // Rates 1 and 0.5 over their mean 0.75: speeds 4/3 and 2/3, shares 2/3 and 1/3 of the rows.
        let s = speeds.current(gemm)
        XCTAssertEqual(s[0], 4.0 / 3, accuracy: 1e-3)
        XCTAssertEqual(s[1], 2.0 / 3, accuracy: 1e-3)
        let split = speeds.ranges(2048, pieces: 2, multiple: 8, shape: gemm)
        XCTAssertEqual(split.map(\.start), [0, 1368])
        XCTAssertEqual(split.map(\.count), [1368, 680])
        XCTAssertEqual(counts(speeds.ranges(2048, pieces: 2, multiple: 8, shape: other)), [1024, 1024], "another shape's split is its own")
        // Columns in panels of 32: every range but the last a multiple, all of them covered.
        let columns = speeds.ranges(500, pieces: 2, multiple: 32, shape: gemm)
        XCTAssertEqual(columns[0].count % 32, 0)
        XCTAssertEqual(columns.map(\.count).reduce(0, +), 500)
    }

    func testASpeedRecoversWhenTheSlowThreadDoesAndSmallDifferencesSplitEvenly() {
        let speeds = ThreadSpeeds(threads: 2)
        let shape = [0, 512, 512, 128, 0, 0]
        record(speeds, shape: shape, slower: 1.8)
        XCTAssertNotEqual(speeds.ranges(512, pieces: 2, multiple: 8, shape: shape)[0].count, 256)
        record(speeds, shape: shape, slower: 1.02)  // quiet again: within the dead band
        XCTAssertEqual(counts(speeds.ranges(512, pieces: 2, multiple: 8, shape: shape)), [256, 256])
    }

    /// A thread dealt its floor while slow runs a piece too short to time on its own; the
    /// product is still measured, so the split evens out when the thread is fast again.
    func testAThreadDealtLittleIsStillMeasuredAndRecovers() {
        let speeds = ThreadSpeeds(threads: 2)
        let shape = [0, 128, 512, 784, 0, 1]
        record(speeds, shape: shape, slower: 100)
        let split = speeds.ranges(512, pieces: 2, multiple: 32, shape: shape)
        XCTAssertLessThanOrEqual(split[1].count, 96)
        // Both threads at the same rate again: thread 1's piece takes 6 µs, thread 0's 45 µs.
        for _ in 0..<40 {
            let work = speeds.ranges(512, pieces: 2, multiple: 32, shape: shape).map { Double($0.count) }
            speeds.record(work: work, seconds: work.map { $0 * 1e-7 }, shape: shape)
        }
        XCTAssertEqual(counts(speeds.ranges(512, pieces: 2, multiple: 32, shape: shape)), [256, 256])
    }

    func testNoThreadIsStarvedAndShortOrMismatchedTimingsAreIgnored() {
        let speeds = ThreadSpeeds(threads: 2)
        let shape = [1, 16, 128, 4, 32, 0]
        record(speeds, shape: shape, slower: 100)
        let split = speeds.ranges(64, pieces: 2, multiple: 1, shape: shape)
        XCTAssertGreaterThanOrEqual(split[1].count, Int(ThreadSpeeds.floor / 2 * 64), "thread 1 keeps its floor")
        let fresh = ThreadSpeeds(threads: 2)
        fresh.record(work: [10, 10], seconds: [1e-6, 9e-6], shape: shape)  // under `shortest`: noise
        fresh.record(work: [10, 10, 10], seconds: [1, 1, 1], shape: shape)  // more pieces than threads
        XCTAssertEqual(fresh.current(shape), [1, 1])
    }

    func testSpeedsOfEverNewShapesAreForgottenPastTheCapacity() {
        let speeds = ThreadSpeeds(threads: 2)
        record(speeds, shape: [0, 1, 1, 1, 0, 0], slower: 2)
        for i in 0..<ThreadSpeeds.capacity { speeds.record(work: [1, 1], seconds: [1e-3, 1e-3], shape: [0, 2, 2, 2 + i, 0, 0]) }
        XCTAssertEqual(speeds.current([0, 1, 1, 1, 0, 0]), [1, 1])
        XCTAssertEqual(speeds.current([0, 2, 2, 2 + ThreadSpeeds.capacity - 1, 0, 0]), [1, 1])
    }

    /// The bf16 kernel computes every row and column of C alike whatever its piece: a product
    /// split 2:1 (thread 1 measured slow) gives the even split's floats, by rows with op(B)
    /// shared and by columns with op(B) packed per thread, with a bias.
    func testABF16ProductSplitUnevenlyEqualsTheEvenSplitBitForBit() throws {
        try XCTSkipUnless(loom_cpu_has_avx512_bf16() != 0 && BF16GEMMPath.selected == .kernel,
                          "no AVX512-BF16: bf16 products are not Loom's kernel here (\(BF16GEMMPath.description))")
        for (m, n, k, transA, transB) in [(300, 96, 130, false, true), (40, 520, 200, false, false), (96, 700, 64, true, false)] {
            let a = try randomTensor([transA ? k : m, transA ? m : k], seed: 31).cast(to: .bfloat16)
            let b = try randomTensor([transB ? n : k, transB ? k : n], seed: 32).cast(to: .bfloat16)
            let bias = randomTensor([n], seed: 33)
            func product(_ backend: CPUBackend) throws -> [Float] {
                let c = try Tensor.zeros([m, n])
                try backend.gemm(GEMMOperand(a, ld: transA ? m : k, transposed: transA), GEMMOperand(b, ld: transB ? k : n, transposed: transB),
                                 GEMMOperand(c, ld: n), m: m, n: n, k: k, alpha: 0.5, addingToEachRow: bias)
                return c.floats
            }
            let even = CPUBackend(threads: 2), skewed = CPUBackend(threads: 2)
            let shape = CPUBackend.productShape(m: m, n: n, k: k, transA: transA, transB: transB)
            record(skewed.speeds, shape: shape, slower: 2)
            let byRows = m >= n || n < 32
            let split = skewed.speeds.ranges(byRows ? m : n, pieces: 2, multiple: byRows ? 8 : 32, shape: shape)
            XCTAssertGreaterThan(split[0].count, split[1].count + (byRows ? m : n) / 4, "m \(m) n \(n): the split is uneven")
            XCTAssertEqual(try product(skewed), try product(even), "m \(m) n \(n) k \(k)")
        }
    }

    /// Attention's heads dealt 2:1 give the even deal's output and input gradient bit for bit,
    /// float32 and bf16.
    func testAttentionWithItsHeadsDealtUnevenlyEqualsTheEvenDealBitForBit() throws {
        let shape = AttentionShape(batch: 3, length: 40, heads: 4, headSize: 16)
        let qkv = randomTensor([shape.batch, shape.length, 3 * shape.width], seed: 41).detach()
        let gy = randomTensor([shape.batch, shape.length, shape.width], seed: 42).detach()
        for dtype in [DType.float32, .bfloat16] where CPUBackend.shared.runsCausalAttention(operands: dtype) {
            func run(_ backend: CPUBackend) throws -> [Float] {
                let x = try qkv.cast(to: dtype), dy = try gy.cast(to: dtype)
                let probs = try Tensor.zeros([shape.batch, shape.heads, shape.length, shape.length])
                let y = try Tensor.zeros([shape.batch, shape.length, shape.width]), dx = try Tensor.zeros(qkv.shape)
                backend.causalAttention(qkv: x, shape: shape, scale: 0.25, probs: probs, into: y)
                backend.causalAttentionBackward(qkv: x, probs: probs, gradOutput: dy, shape: shape, scale: 0.25, into: dx)
                return y.floats + dx.floats
            }
            let even = CPUBackend(threads: 2), skewed = CPUBackend(threads: 2)
            for backward in [false, true] { record(skewed.speeds, shape: CPUBackend.attentionShape(shape, backward: backward), slower: 2) }
            XCTAssertEqual(counts(skewed.speeds.ranges(12, pieces: 2, multiple: 1, shape: CPUBackend.attentionShape(shape, backward: false))), [8, 4])
            XCTAssertEqual(try run(skewed), try run(even), "\(dtype)")
        }
    }
}
