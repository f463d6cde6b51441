#if canImport(Glibc)
import Glibc
#endif

// Vectorised transcendental functions and loops for the Swift elementwise kernels. libm's
// expf/tanhf are scalar calls (~10-20 ns each). The hottest kernels (GELU, softmax, layer
// norm, optimizer steps) are C in CLoomKernels, compiled for each x86 vector width: the
// package builds for baseline x86-64, so these SIMD8 loops run as SSE pairs without FMA.

public typealias F8 = SIMD8<Float>

// Lane-wise max/min as compare-and-select: the standard library's generic
// pointwiseMax/pointwiseMin were not specialised here and cost a call per vector.
@inline(__always)
public func vmax(_ a: F8, _ b: F8) -> F8 { a.replacing(with: b, where: a .< b) }

@inline(__always)
public func vmin(_ a: F8, _ b: F8) -> F8 { a.replacing(with: b, where: a .> b) }

/// exp(x) to about 1 ulp (Cephes expf: range reduction by ln 2, degree-6 polynomial).
@inline(__always)
public func exp8(_ x: F8) -> F8 {
    let x = vmin(vmax(x, F8(repeating: -87.3)), F8(repeating: 88.3))
    // Round x·log2(e) to an integer n with the 1.5·2^23 trick: adding it leaves n in the
    // low mantissa bits, so n comes out as both a float and an integer without the
    // (slow, per-lane) generic float->int SIMD conversion.
    let magic = F8(repeating: 12_582_912)
    let shifted = x * 1.44269504088896341 + magic
    let n = shifted - magic
    var r = x - n * 0.693359375
    r = r - n * -2.12194440e-4
    var p = F8(repeating: 1.9875691500e-4)
    p = p * r + 1.3981999507e-3
    p = p * r + 8.3334519073e-3
    p = p * r + 4.1665795894e-2
    p = p * r + 1.6666665459e-1
    p = p * r + 5.0000001201e-1
    let y = p * r * r + r + 1
    let ni = unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- 0x4B40_0000
    let bits = (ni &+ 127) &<< 23
    return y * unsafeBitCast(bits, to: F8.self)
}

/// tanh(x) = 1 - 2 / (exp(2x) + 1); absolute error ~1e-7.
@inline(__always)
public func tanh8(_ x: F8) -> F8 {
    1 - 2 / (exp8(2 * x) + 1)
}

@inline(__always)
public func sigmoid8(_ x: F8) -> F8 { 1 / (1 + exp8(-x)) }

@inline(__always)
func load8(_ p: UnsafePointer<Float>) -> F8 {
    UnsafeRawPointer(p).loadUnaligned(as: F8.self)
}

@inline(__always)
func store8(_ v: F8, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: F8.self)
}

/// Loads up to 8 elements, padding with `fill` (a copy through a vector-sized buffer:
/// inserting lanes one by one was a third of a CNN step on short rows).
@inline(__always)
func loadPartial(_ p: UnsafePointer<Float>, _ n: Int, fill: Float = 0) -> F8 {
    var v = F8(repeating: fill)
    withUnsafeMutableBytes(of: &v) { $0.baseAddress!.copyMemory(from: p, byteCount: n &* 4) }
    return v
}

@inline(__always)
func storePartial(_ v: F8, _ p: UnsafeMutablePointer<Float>, _ n: Int) {
    withUnsafeBytes(of: v) { UnsafeMutableRawPointer(p).copyMemory(from: $0.baseAddress!, byteCount: n &* 4) }
}

/// y[i] = f(x[i]) over n elements, 8 at a time.
@inline(__always)
func map8(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int, _ f: (F8) -> F8) {
    var i = 0
    while i &+ 8 <= n { store8(f(load8(x + i)), y + i); i &+= 8 }
    if i < n { storePartial(f(loadPartial(x + i, n &- i)), y + i, n &- i) }
}

/// z[i] = f(x[i], y[i]) over n elements.
@inline(__always)
func zip8(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ z: UnsafeMutablePointer<Float>, _ n: Int,
          _ f: (F8, F8) -> F8) {
    var i = 0
    while i &+ 8 <= n { store8(f(load8(x + i), load8(y + i)), z + i); i &+= 8 }
    if i < n { storePartial(f(loadPartial(x + i, n &- i, fill: 1), loadPartial(y + i, n &- i, fill: 1)), z + i, n &- i) }
}

/// Sum of n floats with 4 vector accumulators (float reductions do not auto-vectorise).
@inline(__always)
func sum8(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var a0 = F8(), a1 = F8(), a2 = F8(), a3 = F8()
    var i = 0
    while i &+ 32 <= n {
        a0 += load8(x + i); a1 += load8(x + (i &+ 8)); a2 += load8(x + (i &+ 16)); a3 += load8(x + (i &+ 24))
        i &+= 32
    }
    while i &+ 8 <= n { a0 += load8(x + i); i &+= 8 }
    var s = ((a0 + a1) + (a2 + a3)).sum()
    while i < n { s += x[i]; i &+= 1 }
    return s
}

/// Dot product of n floats.
@inline(__always)
func dot8(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) -> Float {
    var a0 = F8(), a1 = F8()
    var i = 0
    while i &+ 16 <= n {
        a0 += load8(x + i) * load8(y + i); a1 += load8(x + (i &+ 8)) * load8(y + (i &+ 8))
        i &+= 16
    }
    while i &+ 8 <= n { a0 += load8(x + i) * load8(y + i); i &+= 8 }
    var s = (a0 + a1).sum()
    while i < n { s += x[i] * y[i]; i &+= 1 }
    return s
}

@inline(__always)
func max8(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var m = F8(repeating: -.infinity)
    var i = 0
    while i &+ 8 <= n { m = vmax(m, load8(x + i)); i &+= 8 }
    var s = m.max()
    while i < n { s = Swift.max(s, x[i]); i &+= 1 }
    return s
}
