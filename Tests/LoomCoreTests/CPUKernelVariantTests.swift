import XCTest
import Foundation
import CLoomKernels
import LoomCore

/// The C kernels are compiled three times (SSE2, AVX2 + FMA, AVX-512) and the processor
/// picks one; the rest of the suite runs only that one. Here every variant this processor
/// can run is checked against the same formulas in double precision, on rows whose
/// lengths are not multiples of any vector width, in place where the backend calls them
/// in place.
final class CPUKernelVariantTests: XCTestCase {
    var variants: [loom_isa] {
        [LOOM_ISA_BASELINE, LOOM_ISA_AVX2, LOOM_ISA_AVX512].filter { $0.rawValue <= loom_cpu_isa().rawValue }
    }

    override func tearDown() { loom_set_kernel_isa(loom_cpu_isa()) }

    func values(_ n: Int, seed: UInt64, scale: Float = 4) -> [Float] {
        var rng = Philox(seed: seed)
        return (0..<n).map { _ in scale * (2 * rng.nextFloat() - 1) }
    }

    func assertClose(_ got: [Float], _ want: [Double], tolerance: Double, _ what: String, _ isa: loom_isa,
                     file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, file: file, line: line)
        let err = zip(got, want).map { abs(Double($0) - $1) / max(1, abs($1)) }.max() ?? 0
        XCTAssertLessThanOrEqual(err, tolerance, "\(what) on \(String(cString: loom_isa_name(isa)))", file: file, line: line)
    }

    func testGELUAndExpMatchDoublePrecisionOnEveryVectorWidth() {
        let x = values(1003, seed: 1) + [-100, -90, -87, 0, 30, 100]
        let g = values(x.count, seed: 2)
        let c = (2 / Double.pi).squareRoot(), a = 0.044715
        let wantY = x.map { v -> Double in let v = Double(v); return 0.5 * v * (1 + Foundation.tanh(c * (v + a * v * v * v))) }
        let wantG = zip(x, g).map { v, g -> Double in
            let v = Double(v), t = Foundation.tanh(c * (v + a * v * v * v))
            return Double(g) * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * c * (1 + 3 * a * v * v))
        }
        let e = values(1003, seed: 3, scale: 80)
        for isa in variants {
            loom_set_kernel_isa(isa)
            var y = [Float](repeating: .nan, count: x.count), gx = y, ey = [Float](repeating: .nan, count: e.count)
            loom_gelu(x, &y, Int64(x.count))
            loom_gelu_backward(x, g, &gx, Int64(x.count))
            loom_exp(e, &ey, Int64(e.count))
            assertClose(y, wantY, tolerance: 1e-6, "gelu", isa)
            assertClose(gx, wantG, tolerance: 1e-5, "gelu backward", isa)  // 1 - t² cancels near |t| = 1
            // exp relative to its own magnitude: to a few ulps.
            let rel = zip(ey, e).map { abs(Double($0) - Foundation.exp(Double($1))) / Foundation.exp(Double($1)) }.max()!
            XCTAssertLessThan(rel, 1e-6, "exp on \(String(cString: loom_isa_name(isa)))")
        }
    }

    func testSoftmaxRowsInPlaceWithAndWithoutTheCausalLimitMatchDoublePrecision() {
        let rows = 2 * 37, cols = 37
        let x = values(rows * cols, seed: 4, scale: 8), g = values(rows * cols, seed: 5)
        for causal in [0, cols] {
            for log in [false, true] {
                var wantY = [Double](repeating: 0, count: x.count), wantG = wantY
                for r in 0..<rows {
                    let n = causal > 0 ? r % causal + 1 : cols
                    let row = (0..<n).map { Double(x[r * cols + $0]) }
                    let m = row.max()!, s = row.map { Foundation.exp($0 - m) }.reduce(0, +)
                    let p = row.map { Foundation.exp($0 - m) / s }
                    let gs = (0..<n).map { Double(g[r * cols + $0]) }
                    let dot = zip(gs, p).map(*).reduce(0, +), gsum = gs.reduce(0, +)
                    for j in 0..<cols {
                        if j < n {
                            wantY[r * cols + j] = log ? row[j] - m - Foundation.log(s) : p[j]
                            wantG[r * cols + j] = log ? gs[j] - p[j] * gsum : p[j] * (gs[j] - dot)
                        } else {
                            wantY[r * cols + j] = log ? -.infinity : 0
                        }
                    }
                }
                for isa in variants {
                    loom_set_kernel_isa(isa)
                    var y = x  // in place, as attention calls it
                    y.withUnsafeMutableBufferPointer { p in
                        loom_softmax_rows(p.baseAddress, p.baseAddress, Int64(rows), Int64(cols), log ? 1 : 0, Int64(causal))
                    }
                    let what = "softmax causal \(causal) log \(log)"
                    XCTAssertEqual(zip(y, wantY).filter { $1 == -.infinity }.allSatisfy { $0.0 == -.infinity }, true, what)
                    assertClose(zip(y, wantY).map { $1 == -.infinity ? 0 : $0 }, wantY.map { $0 == -.infinity ? 0 : $0 },
                                tolerance: 1e-6, what, isa)
                    var gx = g  // in place over the incoming gradient
                    gx.withUnsafeMutableBufferPointer { p in
                        loom_softmax_backward_rows(y, p.baseAddress, p.baseAddress, Int64(rows), Int64(cols), log ? 1 : 0,
                                                   Int64(causal))
                    }
                    assertClose(gx, wantG, tolerance: 1e-5, what + " backward", isa)
                }
            }
        }
    }

    func testLayerNormForwardAndBackwardMatchDoublePrecisionOnEveryVectorWidth() {
        let rows = 5, cols = 77
        let x = values(rows * cols, seed: 6).map { $0 + 3 }, g = values(rows * cols, seed: 7)
        let gamma = values(cols, seed: 8), beta = values(cols, seed: 9)
        let eps = 1e-5
        var wantY = [Double](), wantGX = [Double](), wantDG = [Double](repeating: 0, count: cols), wantDB = wantDG
        for r in 0..<rows {
            let row = (0..<cols).map { Double(x[r * cols + $0]) }
            let mu = row.reduce(0, +) / Double(cols)
            let rs = 1 / (row.map { ($0 - mu) * ($0 - mu) }.reduce(0, +) / Double(cols) + eps).squareRoot()
            let xhat = row.map { ($0 - mu) * rs }
            wantY += (0..<cols).map { xhat[$0] * Double(gamma[$0]) + Double(beta[$0]) }
            let dxh = (0..<cols).map { Double(g[r * cols + $0]) * Double(gamma[$0]) }
            let m1 = dxh.reduce(0, +) / Double(cols), m2 = zip(dxh, xhat).map(*).reduce(0, +) / Double(cols)
            wantGX += (0..<cols).map { rs * (dxh[$0] - m1 - xhat[$0] * m2) }
            for j in 0..<cols { wantDG[j] += Double(g[r * cols + j]) * xhat[j]; wantDB[j] += Double(g[r * cols + j]) }
        }
        for isa in variants {
            loom_set_kernel_isa(isa)
            var y = [Float](repeating: .nan, count: x.count), mean = [Float](repeating: 0, count: rows), rstd = mean
            loom_layernorm_rows(x, gamma, beta, Float(eps), Int64(rows), Int64(cols), &y, &mean, &rstd)
            assertClose(y, wantY, tolerance: 1e-5, "layer norm", isa)
            var gx = [Float](repeating: .nan, count: x.count), dg = [Float](repeating: 0, count: cols), db = dg, xhat = dg
            loom_layernorm_backward_rows(x, gamma, mean, rstd, g, Int64(rows), Int64(cols), &gx, &dg, &db, &xhat)
            assertClose(gx, wantGX, tolerance: 1e-5, "layer norm backward", isa)
            assertClose(dg, wantDG, tolerance: 1e-5, "layer norm dgamma", isa)
            assertClose(db, wantDB, tolerance: 1e-5, "layer norm dbeta", isa)
        }
    }

    func testAdamAndSGDStepsMatchPyTorchsFormulasOnEveryVectorWidth() {
        let n = 1001
        let p0 = values(n, seed: 10), g = values(n, seed: 11), m0 = values(n, seed: 12, scale: 0.1)
        let v0 = values(n, seed: 13, scale: 0.01).map(abs)
        let (lr, b1, b2, eps, wd, step) = (1e-3, 0.9, 0.999, 1e-8, 0.01, 3.0)
        let bc1 = 1 - Foundation.pow(b1, step), bc2 = 1 - Foundation.pow(b2, step)
        for isa in variants {
            loom_set_kernel_isa(isa)
            for decoupled in [true, false] {
                var p = p0, m = m0, v = v0
                loom_adam(&p, g, &m, &v, Int64(n), Float(b1), Float(b2), Float(eps), decoupled ? Float(1 - lr * wd) : 1,
                          decoupled ? 0 : Float(wd), Float(lr / bc1), Float(bc2.squareRoot()), nil)
                let want = (0..<n).map { i -> Double in
                    let gi = Double(g[i]) + (decoupled ? 0 : wd * Double(p0[i]))
                    let mi = b1 * Double(m0[i]) + (1 - b1) * gi, vi = b2 * Double(v0[i]) + (1 - b2) * gi * gi
                    return Double(p0[i]) * (decoupled ? 1 - lr * wd : 1) - lr / bc1 * mi / (vi.squareRoot() / bc2.squareRoot() + eps)
                }
                assertClose(p, want, tolerance: 1e-6, decoupled ? "adamw" : "adam", isa)
            }
            for nesterov in [false, true] {
                var p = p0, buf = m0
                loom_sgd(&p, g, &buf, Int64(n), 0.01, 0.9, 0.1, 1e-4, nesterov ? 1 : 0, nil)
                let want = (0..<n).map { i -> Double in
                    let gi = Double(g[i]) + 1e-4 * Double(p0[i]), b = 0.9 * Double(m0[i]) + 0.9 * gi
                    return Double(p0[i]) - 0.01 * (nesterov ? gi + 0.9 * b : b)
                }
                assertClose(p, want, tolerance: 1e-6, nesterov ? "sgd nesterov" : "sgd momentum", isa)
            }
            var p = p0
            loom_sgd(&p, g, nil, Int64(n), 0.01, 0, 0, 0, 0, nil)
            assertClose(p, (0..<n).map { Double(p0[$0]) - 0.01 * Double(g[$0]) }, tolerance: 1e-6, "plain sgd", isa)
        }
    }

    /// The bf16 copy an update writes (`rounded`) is the cast of the parameter it leaves, and
    /// writing it changes nothing else: over blocks of 4096 and a partial one, every update kind.
    func testOptimizerStepsRoundWhatTheyWriteAsTheCastDoes() {
        let n = 9001
        let p0 = values(n, seed: 20), g = values(n, seed: 21), m0 = values(n, seed: 22, scale: 0.1)
        let v0 = values(n, seed: 23, scale: 0.01).map(abs)
        typealias Update = (_ p: inout [Float], _ rounded: UnsafeMutablePointer<UInt16>?) -> Void
        let updates: [(String, Update)] = [
            ("adamw", { p, r in var m = m0, v = v0; loom_adam(&p, g, &m, &v, Int64(n), 0.9, 0.999, 1e-8, 0.99, 0, 1e-3, 0.5, r) }),
            ("adam", { p, r in var m = m0, v = v0; loom_adam(&p, g, &m, &v, Int64(n), 0.9, 0.999, 1e-8, 1, 0.01, 1e-3, 0.5, r) }),
            ("sgd momentum", { p, r in var b = m0; loom_sgd(&p, g, &b, Int64(n), 0.01, 0.9, 0.1, 1e-4, 0, r) }),
            ("sgd nesterov", { p, r in var b = m0; loom_sgd(&p, g, &b, Int64(n), 0.01, 0.9, 0, 1e-4, 1, r) }),
            ("plain sgd", { p, r in loom_sgd(&p, g, nil, Int64(n), 0.01, 0, 0, 0, 0, r) }),
        ]
        for isa in variants {
            loom_set_kernel_isa(isa)
            for (name, update) in updates {
                var plain = p0, p = p0
                var rounded = [UInt16](repeating: 0xFFFF, count: n), cast = [UInt16](repeating: 0, count: n)
                update(&plain, nil)
                rounded.withUnsafeMutableBufferPointer { update(&p, $0.baseAddress!) }
                loom_f32_to_bf16(p, &cast, Int64(n))
                XCTAssertEqual(p.map(\.bitPattern), plain.map(\.bitPattern), "\(name), \(isa): the parameter")
                XCTAssertEqual(rounded, cast, "\(name), \(isa): the rounded copy")
            }
        }
    }
}
