import CLoomKernels
import XCTest
import LoomCore

/// The kernels' non-temporal-store variants (`Convert.c`, `GEMMBF16.c`) store exactly what the
/// plain ones store, at every alignment and edge (a store that is weakly ordered, or a line
/// left half written, would show here as a wrong value), and the CPU backend streams only the
/// results every thread reads.
final class StreamingStoreTests: XCTestCase {
    /// float32 values with every case the rounding has: ties (both parities), NaNs (quiet and
    /// signalling, both signs), infinities, zeros, denormals, the largest finite values.
    func awkwardFloats(_ count: Int) -> [Float] {
        let special: [UInt32] = [0x3F80_8000, 0x3F81_8000, 0x7FC0_0000, 0x7F80_0001, 0xFFA0_0000, 0x7F80_0000, 0xFF80_0000,
                                 0, 0x8000_0000, 0x0000_0001, 0x807F_FFFF, 0x7F7F_FFFF, 0xFF7F_FFFF, 0x3F80_7FFF]
        var rng = Philox(seed: 11)
        return (0..<count).map { i in
            i % 5 == 0 ? Float(bitPattern: special[(i / 5) % special.count]) : (2 * rng.nextFloat() - 1) * 100
        }
    }

    func testStreamedRoundingStoresTheBitsOfThePlainRoundingAtEveryOffsetAndLength() {
        let x = awkwardFloats(300)
        for offset in [0, 1, 7, 31, 32, 33] {
            for count in [0, 1, 31, 32, 33, 64, 95, 200, 300 - offset] where offset + count <= x.count {
                var plain = [UInt16](repeating: 0xAAAA, count: x.count), streamed = plain
                x.withUnsafeBufferPointer { xs in
                    plain.withUnsafeMutableBufferPointer { loom_f32_to_bf16(xs.baseAddress! + offset, $0.baseAddress! + offset, Int64(count)) }
                    streamed.withUnsafeMutableBufferPointer {
                        loom_f32_to_bf16_streaming(xs.baseAddress! + offset, $0.baseAddress! + offset, Int64(count))
                    }
                }
                XCTAssertEqual(streamed, plain, "offset \(offset), \(count) values")
            }
        }
    }

    func testStreamedRoundingWithColumnSumsStoresWhatThePlainOneStores() {
        for (rows, cols, accumulate) in [(5, 40, 0), (3, 512, 1), (4, 17, 0)] {
            let x = awkwardFloats(rows * cols).map { $0.isFinite ? $0 : 1 }  // sums of finite values
            var plain = [UInt16](repeating: 0, count: x.count), streamed = plain
            var plainSums = (0..<cols).map { Float($0) }, streamedSums = plainSums
            loom_f32_to_bf16_summing_rows(x, &plain, &plainSums, Int64(cols), 0, Int64(rows), Int32(accumulate))
            loom_f32_to_bf16_summing_rows_streaming(x, &streamed, &streamedSums, Int64(cols), 0, Int64(rows), Int32(accumulate))
            XCTAssertEqual(streamed, plain, "[\(rows), \(cols)]")
            XCTAssertEqual(streamedSums, plainSums, "[\(rows), \(cols)] sums")
        }
    }

    func testAStreamedProductStoresThePlainProductsFloatsAndLeavesTheRestOfC() throws {
        try XCTSkipUnless(loom_cpu_has_avx512_bf16() != 0, "this processor has no AVX512-BF16: the kernel declines to run")
        var rng = Philox(seed: 12)
        func bf16(_ count: Int) -> [UInt16] { (0..<count).map { _ in BFloat16Bits.from(2 * rng.nextFloat() - 1) } }
        // A partial last panel of rows and of columns, k past a block of 384 (C read back), an
        // odd k, beta 1 and a bias, and C's rows off a line (ldc 37).
        for (m, n, k, ldc, beta) in [(128, 96, 40, 96, Float(0)), (30, 70, 800, 70, 0), (16, 64, 45, 37 + 64, 1), (3, 5, 1, 5, 0)] {
            let a = bf16(m * k), b = bf16(k * n), bias = (0..<n).map { _ in rng.nextFloat() }
            var plain = (0..<m * ldc).map { _ in rng.nextFloat() }, streamed = plain
            for transB in [0, 1] as [Int32] {
                let ldb = transB == 1 ? k : n
                XCTAssertEqual(loom_bf16_gemm(0, transB, Int64(m), Int64(n), Int64(k), 0.5, a, Int64(k), b, Int64(ldb), beta, &plain,
                                              Int64(ldc), bias), 1)
                XCTAssertEqual(loom_bf16_gemm_streaming(0, transB, Int64(m), Int64(n), Int64(k), 0.5, a, Int64(k), b, Int64(ldb), beta,
                                                        &streamed, Int64(ldc), bias), 1)
                XCTAssertEqual(streamed, plain, "m \(m) n \(n) k \(k) ldc \(ldc) transB \(transB)")
            }
        }
    }

    func testAStreamedPackingWritesThePlainPackingsPanels() throws {
        try XCTSkipUnless(loom_cpu_has_avx512_bf16() != 0, "this processor has no AVX512-BF16: the kernel declines to run")
        var rng = Philox(seed: 13)
        for (k, n) in [(45, 70), (128, 512), (1, 3)] {
            let b = (0..<k * n).map { _ in BFloat16Bits.from(2 * rng.nextFloat() - 1) }
            for transB in [0, 1] as [Int32] {
                let words = Int(loom_bf16_packed_b_words(Int64(k), Int64(n))), ldb = transB == 1 ? k : n
                let plain = UnsafeMutablePointer<UInt32>.allocate(capacity: words + 16), streamed = UnsafeMutablePointer<UInt32>.allocate(capacity: words + 16)
                defer { plain.deallocate(); streamed.deallocate() }
                // 64-byte aligned, as the backend's buffers are: the panels' whole lines are streamed.
                let (p, s) = (aligned(plain), aligned(streamed))
                p.update(repeating: 0xDEAD_BEEF, count: words)
                s.update(repeating: 0xDEAD_BEEF, count: words)
                loom_bf16_pack_b(transB, Int64(k), 0, Int64(n), 0, Int64((k + 1) / 2), b, Int64(ldb), p)
                loom_bf16_pack_b_streaming(transB, Int64(k), 0, Int64(n), 0, Int64((k + 1) / 2), b, Int64(ldb), s)
                XCTAssertEqual(Array(UnsafeBufferPointer(start: s, count: words)), Array(UnsafeBufferPointer(start: p, count: words)),
                               "k \(k) n \(n) transB \(transB)")
            }
        }
    }

    /// The first 64-byte boundary in a buffer allocated 16 words longer than needed.
    func aligned(_ p: UnsafeMutablePointer<UInt32>) -> UnsafeMutablePointer<UInt32> {
        let address = UInt(bitPattern: p), skip = Int((64 - address % 64) % 64) / 4
        return p + skip
    }

    func testOnlyAShortWideActivationIsStreamedAndOnlyWithMoreThanOneThread() {
        let two = CPUBackend(threads: 2, streaming: .always), one = CPUBackend(threads: 1, streaming: .always)
        XCTAssertTrue(two.streamsRounding(rows: 128, cols: 512))  // the mlp's activations: every thread reads all of them
        XCTAssertFalse(two.streamsRounding(rows: 2048, cols: 256))  // the gpt's: each thread reads the rows it wrote
        XCTAssertFalse(two.streamsRounding(rows: 512, cols: 512))
        XCTAssertFalse(one.streamsRounding(rows: 128, cols: 512))  // one core: its own cache is where the next op reads
        XCTAssertFalse(CPUBackend(threads: 2, streaming: .never).streamsRounding(rows: 128, cols: 512))
        XCTAssertEqual(two.handOvers.record.measurements, 0, "always and never measure nothing")
    }

    func testMeasuredStreamingMeasuresOnTwoThreadsAtOnceAndDecidesByTheThreshold() throws {
        try XCTSkipUnless(loom_kernel_isa() == LOOM_ISA_AVX512, "streaming stores need AVX-512 here: the probe declines")
        let backend = CPUBackend(threads: 2, streaming: .measured)
        let streams = backend.streamsRounding(rows: 128, cols: 512)
        let record = backend.handOvers.record
        XCTAssertEqual(record.measurements, 1)
        let ratio = try XCTUnwrap(record.lastRatio, "the probe's two threads ran at once")
        XCTAssertGreaterThan(ratio, 0.05)  // plain over streamed stores of 128 KiB: a time ratio, not a failure's -1
        XCTAssertLessThan(ratio, 100)
        XCTAssertEqual(streams, ratio > StreamedHandOvers.threshold)
        XCTAssertEqual(record.streamed, streams ? 1 : 0)
        _ = backend.streamsRounding(rows: 64, cols: 512)
        XCTAssertEqual(backend.handOvers.record.measurements, 1, "a measurement stands for \(StreamedHandOvers.interval) s")
        XCTAssertEqual(CPUBackend(threads: 1, streaming: .measured).streamsRounding(rows: 128, cols: 512), false)
    }

    func testStreamingAShortWideBF16LayerChangesNoFloatAndTwoThreadsChangeOnlyTheOrderOfDXsSums() throws {
        // Streamed at two threads (the input's and dY's bf16 copies, the products' C split by
        // columns, the weight gradient's packed operand, dx's partial products), not at one:
        // the same floats streamed or not, backward included. Against one thread, the same
        // floats but dx's: at two its product (dY W, short and wide) is split along k, its two
        // partial sums added.
        func run(threads: Int, streaming: StreamedHandOvers.Mode) throws -> [[Float]] {
            let backend = CPUBackend(threads: threads, streaming: streaming)
            var rng = Philox(seed: 14)
            func parameter(_ shape: [Int], scale: Float) -> Tensor {
                let t = Tensor((0..<shape.reduce(1, *)).map { _ in scale * (2 * rng.nextFloat() - 1) }, shape: shape, on: backend)
                t.requiresGrad = true
                return t
            }
            let x = parameter([64, 400], scale: 1), w = parameter([600, 400], scale: 0.1), b = parameter([600], scale: 0.1)
            let y = try withPrecision(.bfloat16) { try x.linear(weight: w, bias: b, after: .relu) }
            try (y * y).sum().backward()
            return [y.floats, try XCTUnwrap(x.grad).floats, try XCTUnwrap(w.grad).floats, try XCTUnwrap(b.grad).floats]
        }
        let one = try run(threads: 1, streaming: .always), two = try run(threads: 2, streaming: .always)
        let plain = try run(threads: 2, streaming: .never)
        XCTAssertTrue(CPUBackend(threads: 2, streaming: .always).streamsRounding(rows: 64, cols: 400), "the case streams")
        for (name, (streamed, unstreamed)) in zip(["y", "dx", "dW", "db"], zip(two, plain)) { XCTAssertEqual(streamed, unstreamed, name) }
        for (name, (two, one)) in zip(["y", "dW", "db"], zip([two[0], two[2], two[3]], [one[0], one[2], one[3]])) {
            XCTAssertEqual(two, one, name)
        }
        let scale = one[1].map(abs).max() ?? 0, worst = zip(two[1], one[1]).map { abs($0 - $1) }.max() ?? .infinity
        XCTAssertGreaterThan(scale, 1)
        XCTAssertLessThanOrEqual(worst, 1e-5 * scale, "dx at two threads and one: float32 sums in another order")
    }
}
