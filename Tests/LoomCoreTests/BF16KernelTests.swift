import CLoomKernels
import XCTest
import LoomCore

/// Loom's AVX512-BF16 matrix product (`GEMMBF16.c`) against a double-precision loop over the
/// same bf16 values, at the shapes where its blocking has edges: rows around its panels of 14
/// and 8, split between the two (20, 29, 37, 45 and 200 rows take both) and past a block of 168, columns around its panels of 32, k odd, 1, and past a
/// block of 384; every transpose, leading dimensions wider than the matrices, alpha and beta.
final class BF16KernelTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipUnless(loom_cpu_has_avx512_bf16() != 0, "this processor has no AVX512-BF16: the kernel declines to run")
    }

    /// bf16 bit patterns of values in [-1, 1), and their float values.
    func bf16Values(_ count: Int, seed: UInt64) -> (bits: [UInt16], values: [Double]) {
        var rng = Philox(seed: seed)
        let bits = (0..<count).map { _ in BFloat16Bits.from(2 * rng.nextFloat() - 1) }
        return (bits, bits.map { Double(BFloat16Bits.float($0)) })
    }

    /// op(A) m x k and op(B) k x n stored with padded leading dimensions; C with a padded one,
    /// holding NaN where beta is 0 (it must be overwritten, not read) and outside the product
    /// (it must stay).
    func check(m: Int, n: Int, k: Int, transA: Bool, transB: Bool, alpha: Float, beta: Float, file: StaticString = #filePath,
               line: UInt = #line) {
        let lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 5, ldc = n + 2
        let a = bf16Values((transA ? k : m) * lda, seed: 1), b = bf16Values((transB ? n : k) * ldb, seed: 2)
        var rng = Philox(seed: 3)
        var c = (0..<m * ldc).map { _ in beta == 0 ? Float.nan : rng.nextFloat() }
        for i in 0..<m { for j in n..<ldc { c[i * ldc + j] = 7 } }
        let c0 = c
        let done = loom_bf16_gemm(transA ? 1 : 0, transB ? 1 : 0, Int64(m), Int64(n), Int64(k), alpha, a.bits, Int64(lda),
                                  b.bits, Int64(ldb), beta, &c, Int64(ldc), nil)
        XCTAssertEqual(done, 1, file: file, line: line)
        // Float32 sums of k terms err by about sqrt(k) roundings of their magnitudes' sum;
        // a term dropped or paired with the wrong one errs by the size of a term (~0.25).
        var worst = 0.0
        for i in 0..<m {
            for j in 0..<n {
                var sum = 0.0, magnitude = 0.0
                for l in 0..<k {
                    let term = a.values[transA ? l * lda + i : i * lda + l] * b.values[transB ? j * ldb + l : l * ldb + j]
                    sum += term
                    magnitude += abs(term)
                }
                let want = Double(alpha) * sum + (beta == 0 ? 0 : Double(beta) * Double(c0[i * ldc + j]))
                worst = max(worst, abs(Double(c[i * ldc + j]) - want) / (1e-6 * (abs(Double(alpha)) * magnitude + 1)))
            }
            XCTAssertEqual(Array(c[(i * ldc + n)..<((i + 1) * ldc)]), [7, 7], "row \(i): written past column \(n)", file: file, line: line)
        }
        XCTAssertLessThanOrEqual(worst, 1, "m \(m) n \(n) k \(k) transA \(transA) transB \(transB): error in millionths of the terms' magnitude", file: file, line: line)
    }

    func testEveryTransposeAtEdgeShapesEqualsTheProductOfTheBF16Values() {
        for (m, n, k) in [(1, 1, 1), (14, 32, 2), (15, 33, 3), (8, 16, 31), (32, 70, 33), (29, 47, 17), (200, 40, 64), (45, 70, 513),
                          (13, 31, 800)] {
            for transA in [false, true] {
                for transB in [false, true] {
                    check(m: m, n: n, k: k, transA: transA, transB: transB, alpha: 1, beta: 0)
                }
            }
        }
        check(m: 37, n: 50, k: 45, transA: false, transB: true, alpha: 0.5, beta: 1)
        check(m: 20, n: 9, k: 390, transA: true, transB: false, alpha: -2, beta: 0.25)
    }

    /// B packed once and read in parts, as the attention kernel reads one head's keys: a prefix
    /// of its columns, a prefix of its rows, and its rows from an even r0 on.
    func testAPackedOperandReadInPartsEqualsTheProductsOfThoseParts() {
        let (k, n, m) = (70, 96, 24)
        let a = bf16Values(m * k, seed: 4), b = bf16Values(k * n, seed: 5)
        let words = Int(loom_bf16_packed_b_words(Int64(k), Int64(n)))
        let packed = UnsafeMutableRawPointer.allocate(byteCount: 4 * words, alignment: 64).bindMemory(to: UInt32.self, capacity: words)
        defer { packed.deallocate() }
        // Packed in two ranges of panels, and of the rest's pairs, as threads pack a shared operand.
        loom_bf16_pack_b(0, Int64(k), 0, 64, 0, Int64((k + 1) / 2), b.bits, Int64(n), packed)
        loom_bf16_pack_b(0, Int64(k), 64, Int64(n), 0, 16, b.bits, Int64(n), packed)
        loom_bf16_pack_b(0, Int64(k), 64, Int64(n), 16, Int64((k + 1) / 2), b.bits, Int64(n), packed)
        let panelWords = Int64((k + 1) / 2 * 32)
        for (rows, cols, r0) in [(k, n, 0), (k, 40, 0), (33, n, 0), (k - 32, n, 32), (k - 6, 17, 6)] {
            var c = [Float](repeating: .nan, count: m * cols)
            let done = loom_bf16_gemm_packed_b(0, Int64(m), Int64(cols), Int64(rows), 1, a.bits, Int64(k), packed + r0 / 2 * 32,
                                               panelWords, 0, &c, Int64(cols), nil)
            XCTAssertEqual(done, 1)
            var worst = 0.0
            for i in 0..<m {
                for j in 0..<cols {
                    var sum = 0.0
                    for l in 0..<rows { sum += a.values[i * k + l] * b.values[(r0 + l) * n + j] }
                    worst = max(worst, abs(Double(c[i * cols + j]) - sum))
                }
            }
            XCTAssertLessThanOrEqual(worst, 2e-5, "rows \(r0)..<\(r0 + rows), columns 0..<\(cols)")
        }
    }

    /// A bias added as C is stored gives exactly what the bias written into C first and a
    /// product onto it (beta 1) gives: alpha · acc + bias rounds once either way, past a block
    /// of k too (the later blocks add onto the first's).
    func testABiasAddedAsCIsStoredEqualsTheBiasWrittenFirst() {
        for (m, n, k, transB) in [(30, 70, 45, true), (16, 33, 800, false), (3, 5, 1, true)] {
            let a = bf16Values(m * k, seed: 6), b = bf16Values(k * n, seed: 7)
            var rng = Philox(seed: 8)
            let bias = (0..<n).map { _ in 2 * rng.nextFloat() - 1 }
            var fused = [Float](repeating: .nan, count: m * n)
            var written = (0..<m * n).map { bias[$0 % n] }
            let ldb = transB ? k : n
            XCTAssertEqual(loom_bf16_gemm(0, transB ? 1 : 0, Int64(m), Int64(n), Int64(k), 0.5, a.bits, Int64(k), b.bits, Int64(ldb),
                                          0, &fused, Int64(n), bias), 1)
            XCTAssertEqual(loom_bf16_gemm(0, transB ? 1 : 0, Int64(m), Int64(n), Int64(k), 0.5, a.bits, Int64(k), b.bits, Int64(ldb),
                                          1, &written, Int64(n), nil), 1)
            XCTAssertEqual(fused, written, "m \(m) n \(n) k \(k)")
        }
    }
}
