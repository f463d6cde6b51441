import XCTest
import LoomCore

final class DTypeTests: XCTestCase {
    func testBFloat16RoundsToNearestEvenAndKeepsSpecialValues() {
        // 1 + 2^-8 lies exactly between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        XCTAssertEqual(BFloat16Bits.from(1 + 0x1p-8), 0x3F80)
        // 1 + 3·2^-8 lies between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up to even.
        XCTAssertEqual(BFloat16Bits.from(1 + 3 * 0x1p-8), 0x3F82)
        // Just above the tie rounds up.
        XCTAssertEqual(BFloat16Bits.from(Float(bitPattern: 0x3F80_8001)), 0x3F81)
        XCTAssertEqual(BFloat16Bits.from(.infinity), 0x7F80)
        XCTAssertEqual(BFloat16Bits.from(-.infinity), 0xFF80)
        XCTAssertEqual(BFloat16Bits.from(-0.0), 0x8000)
        // Past the largest finite bfloat16, rounding carries into infinity.
        XCTAssertEqual(BFloat16Bits.from(.greatestFiniteMagnitude), 0x7F80)
        // A NaN whose payload sits only in the dropped bits stays a NaN, sign kept.
        let nan = Float(bitPattern: 0x7F80_0001), negNaN = Float(bitPattern: 0xFF80_0001)
        XCTAssertTrue(BFloat16Bits.float(BFloat16Bits.from(nan)).isNaN)
        XCTAssertTrue(BFloat16Bits.float(BFloat16Bits.from(negNaN)).isNaN)
        XCTAssertEqual(BFloat16Bits.from(negNaN) & 0x8000, 0x8000)
    }

    func testBFloat16StorageRoundTripsEveryRepresentableValue() throws {
        // Every bfloat16 bit pattern that is not a NaN survives bf16 -> f32 -> bf16 exactly.
        let all = (0...UInt16.max).filter { !BFloat16Bits.float($0).isNaN }
        let t = try Tensor(uninitialized: [all.count], dtype: .bfloat16)
        all.withUnsafeBytes { t.backend.upload($0, to: t) }
        let wide = try t.cast(to: .float32)
        XCTAssertEqual(wide.floats, all.map(BFloat16Bits.float))
        XCTAssertEqual(try wide.cast(to: .bfloat16).halfBits, all)
    }

    func testCastsAgreeWithHostConversionsAndKeepNaNAndInfinity() throws {
        var rng = Philox(seed: 3)
        var v = [Float](repeating: 0, count: 1000)
        rng.fillNormal(&v, mean: 0, std: 100)
        v += [.infinity, -.infinity, .nan, 0, -0.0, 65504, 65520, 1e-8]
        let x = Tensor(v, shape: [v.count])
        let b = try x.cast(to: .bfloat16), h = try x.cast(to: .float16)
        XCTAssertEqual(b.dtype, .bfloat16)
        XCTAssertEqual(b.byteCount, 2 * v.count)
        XCTAssertEqual(b.halfBits, v.map(BFloat16Bits.from))
        XCTAssertEqual(h.halfBits, v.map { Float16($0).bitPattern })
        let back = try h.cast(to: .bfloat16).floats  // f16 -> bf16 goes through f32
        for (i, f) in v.enumerated() {
            let expected = BFloat16Bits.float(BFloat16Bits.from(Float(Float16(f))))
            XCTAssertTrue(back[i] == expected || (back[i].isNaN && expected.isNaN), "element \(i): \(back[i]) vs \(expected)")
        }
        XCTAssertTrue(b.floats[v.count - 6].isNaN && h.floats[v.count - 6].isNaN)
        XCTAssertEqual(b.floats[v.count - 8], .infinity)
        XCTAssertEqual(h.floats[v.count - 1], Float(Float16(1e-8)))  // float16 subnormal range
        XCTAssertEqual(h.floats[v.count - 2], .infinity)  // 65520 rounds past float16's largest, 65504
    }

    func testCastIsDifferentiableAndGradientComesBackInTheInputDType() throws {
        let x = Tensor([1.5, -2.25, 3.015625], shape: [3])
        x.requiresGrad = true
        let y = try x.cast(to: .bfloat16)
        try y.cast(to: .float32).mul(Tensor([1, 2, 3], shape: [3])).sum().backward()
        XCTAssertEqual(x.grad?.dtype, .float32)
        XCTAssertEqual(x.grad?.floats, [1, 2, 3])
        XCTAssertEqual(y.floats, [1.5, -2.25, 3.015625])  // exactly representable: 8 significant bits
    }

    func testOpsRefuseHalfTensorsWithAMessageNamingTheDType() throws {
        let h = try Tensor.zeros([2, 3], dtype: .bfloat16)
        XCTAssertThrowsError(try h.matmul(h, transposeB: true)) { e in
            XCTAssertTrue("\(e)".contains("bfloat16"), "\(e)")
        }
        XCTAssertThrowsError(try Tensor(indices: [1], shape: [1]).cast(to: .bfloat16)) { e in
            XCTAssertTrue("\(e)".contains("int32"), "\(e)")
        }
    }
}
