#if canImport(Glibc)
import Glibc
#endif

/// Philox4x32-10, a counter-based generator (Salmon et al., SC'11; the generator behind
/// cuRAND and JAX). Output block `i` is a pure function of (key, i), so any rank or
/// device can draw any part of a stream without drawing what comes before it, and the
/// whole state is two integers — it goes into checkpoints as is.
public struct Philox: Equatable, Sendable, Codable {
    public var key: UInt64
    /// Index of the next 32-bit value in the stream.
    public var position: UInt64

    public init(seed: UInt64, position: UInt64 = 0) {
        self.key = seed
        self.position = position
    }

    /// A generator for an independent stream derived from this one's key (per layer,
    /// per rank, per purpose).
    public func derived(_ stream: UInt64) -> Philox {
        let u = Philox.block(key: key ^ 0x9E37_79B9_7F4A_7C15, counter: stream)
        return Philox(seed: UInt64(u.0) | UInt64(u.1) << 32)
    }

    /// The four 32-bit outputs of block `counter`.
    @inline(__always)
    public static func block(key: UInt64, counter: UInt64) -> (UInt32, UInt32, UInt32, UInt32) {
        var c0 = UInt32(truncatingIfNeeded: counter), c1 = UInt32(truncatingIfNeeded: counter >> 32)
        var c2: UInt32 = 0, c3: UInt32 = 0
        var k0 = UInt32(truncatingIfNeeded: key), k1 = UInt32(truncatingIfNeeded: key >> 32)
        for _ in 0..<10 {
            let p0 = UInt64(0xD251_1F53) &* UInt64(c0)
            let p1 = UInt64(0xCD9E_8D57) &* UInt64(c2)
            let hi0 = UInt32(truncatingIfNeeded: p0 >> 32), lo0 = UInt32(truncatingIfNeeded: p0)
            let hi1 = UInt32(truncatingIfNeeded: p1 >> 32), lo1 = UInt32(truncatingIfNeeded: p1)
            (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
            k0 &+= 0x9E37_79B9
            k1 &+= 0xBB67_AE85
        }
        return (c0, c1, c2, c3)
    }

    @inline(__always)
    public static func unitFloat(_ u: UInt32) -> Float { Float(u >> 8) * (1.0 / 16_777_216.0) }

    public mutating func nextUInt32() -> UInt32 {
        let b = Philox.block(key: key, counter: position >> 2)
        let lane = Int(position & 3)
        position &+= 1
        switch lane {
        case 0: return b.0
        case 1: return b.1
        case 2: return b.2
        default: return b.3
        }
    }

    /// Uniform in [0, 1).
    public mutating func nextFloat() -> Float { Philox.unitFloat(nextUInt32()) }

    /// Uniform integer in 0..<n.
    public mutating func nextInt(below n: Int) -> Int {
        precondition(n > 0)
        let wide = UInt64(nextUInt32()) << 32 | UInt64(nextUInt32())
        return Int(wide % UInt64(n))
    }

    /// Standard normal (Box-Muller on two uniforms; one value per pair, so the stream
    /// position after drawing k normals is always 2k).
    public mutating func nextNormal() -> Float {
        let u1 = 1 - nextFloat()  // (0, 1]
        let u2 = nextFloat()
        return (-2 * logf(u1)).squareRoot() * cosf(2 * .pi * u2)
    }

    public mutating func fillNormal(_ v: inout [Float], mean: Float = 0, std: Float = 1) {
        for i in v.indices { v[i] = mean + std * nextNormal() }
    }

    public mutating func fillUniform(_ v: inout [Float], low: Float, high: Float) {
        for i in v.indices { v[i] = low + (high - low) * nextFloat() }
    }

    /// A permutation of 0..<n (Fisher-Yates).
    public mutating func permutation(_ n: Int) -> [Int] {
        var p = Array(0..<n)
        for i in stride(from: n - 1, to: 0, by: -1) { p.swapAt(i, nextInt(below: i + 1)) }
        return p
    }
}
