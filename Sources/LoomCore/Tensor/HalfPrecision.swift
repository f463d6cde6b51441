/// bfloat16 conversions on bit patterns: the top 16 bits of a float32.
///
/// float32 -> bfloat16 rounds to nearest, ties to even: add 0x7FFF plus the lowest kept
/// bit, then truncate. A carry out of the mantissa correctly rounds up into the exponent
/// (to infinity past the largest finite value). NaN is kept a (quiet) NaN with its sign:
/// rounding its bits could otherwise carry it into an infinity.
public enum BFloat16Bits {
    @inline(__always)
    public static func from(_ f: Float) -> UInt16 {
        let bits = f.bitPattern
        if f.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
        let rounded = bits &+ 0x7FFF &+ ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: rounded >> 16)
    }

    @inline(__always)
    public static func float(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }
}
