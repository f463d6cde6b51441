import XCTest
import LoomCore

/// Central finite differences against the autodiff gradient, in float32.
///
/// The scalar checked is L = Σ f(inputs) ⊙ R for a fixed random R (so every output
/// element matters), accumulated in Double on the host. With eps = 1e-3 the float32
/// rounding of L contributes about 1e-4 to a numeric derivative, so the tolerance is
/// |analytic - numeric| <= atol + rtol * |numeric| with atol 5e-3, rtol 2e-2. A wrong
/// backward (missing term, wrong transpose, wrong axis) is off by O(1) and fails.
func checkGradients(_ name: String, inputs: [Tensor], eps: Float = 1e-3, atol: Float = 5e-3, rtol: Float = 2e-2,
               maxPerInput: Int = 40, file: StaticString = #filePath, line: UInt = #line,
               _ f: ([Tensor]) throws -> Tensor) throws {
    for t in inputs where t.dtype == .float32 { t.requiresGrad = true; t.grad = nil }
    let out = try f(inputs)
    var rng = Philox(seed: 99)
    let r = Tensor.randn(out.shape, rng: &rng)
    try out.backward(seed: r)
    let rv = r.floats

    func objective() throws -> Double {
        let o = try withoutGrad { try f(inputs) }.floats
        var s = 0.0
        for i in o.indices { s += Double(o[i]) * Double(rv[i]) }
        return s
    }

    for (k, t) in inputs.enumerated() where t.dtype == .float32 {
        guard let analytic = t.grad?.floats else {
            XCTFail("\(name): input \(k) \(describe(t.shape)) got no gradient", file: file, line: line); continue
        }
        XCTAssertEqual(analytic.count, t.count, file: file, line: line)
        var pick = Philox(seed: UInt64(k + 7))
        let positions = t.count <= maxPerInput ? Array(0..<t.count) : (0..<maxPerInput).map { _ in pick.nextInt(below: t.count) }
        for i in positions {
            let saved = try t.withHostMemory { $0.load(fromByteOffset: 4 * i, as: Float.self) }
            let set = { (v: Float) in try t.withHostMemory { $0.storeBytes(of: v, toByteOffset: 4 * i, as: Float.self) } }
            try set(saved + eps)
            let up = try objective()
            try set(saved - eps)
            let down = try objective()
            try set(saved)
            let numeric = Float((up - down) / Double(2 * eps))
            let a = analytic[i]
            if abs(a - numeric) > atol + rtol * abs(numeric) {
                XCTFail("\(name): input \(k) \(describe(t.shape)) element \(i): analytic \(a), numeric \(numeric)", file: file, line: line)
                return
            }
        }
    }
}

func randn(_ shape: [Int], seed: UInt64, std: Float = 1) -> Tensor {
    var rng = Philox(seed: seed)
    return Tensor.randn(shape, std: std, rng: &rng)
}

/// Values bounded away from 0 (for kinks such as ReLU's).
func awayFromZero(_ shape: [Int], seed: UInt64) -> Tensor {
    let v = randn(shape, seed: seed).floats.map { $0 + ($0 < 0 ? -0.1 : 0.1) }
    return Tensor(v, shape: shape)
}
