/// GPT-2's pre-tokenizer: the cuts its regular expression makes,
///
///     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
///
/// written out as a scanner over UTF-8 bytes (BPE merges never cross a cut). A space
/// travels with the word after it; a run of whitespace before a word leaves its last
/// space to the word. Bytes that are not UTF-8 are single "other" characters, so any
/// byte sequence splits and the chunks concatenate back to it.
public enum ByteLevelChunks {
    enum Kind { case letter, number, space, other }

    /// One character: where its bytes start and end, and its class.
    struct Unit {
        var start: Int, end: Int, kind: Kind
        var isASCIISpace: Bool
    }

    public static func split(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        let units = decode(bytes)
        var chunks: [ArraySlice<UInt8>] = []
        var i = 0
        func take(_ from: Int, _ to: Int) { chunks.append(bytes[units[from].start..<units[to - 1].end]); i = to }
        func run(_ from: Int, _ kind: Kind) -> Int {
            var j = from
            while j < units.count && units[j].kind == kind { j += 1 }
            return j
        }
        while i < units.count {
            let u = units[i]
            if let n = contraction(bytes, at: u) { chunks.append(bytes[u.start..<(u.start + n)]); i = unitIndex(after: u.start + n, units, from: i); continue }
            // ` ?X+` for letters, numbers and the rest: a space joins the run after it.
            let lead = u.isASCIISpace && i + 1 < units.count && units[i + 1].kind != .space ? i + 1 : i
            if units[lead].kind != .space {
                take(i, run(lead, units[lead].kind))
                continue
            }
            // Whitespace: the run, less its last character when a non-space follows (that
            // one goes with the next word), unless the run is a single character.
            let end = run(i, .space)
            take(i, end < units.count && end - i > 1 ? end - 1 : end)
        }
        return chunks
    }

    /// The length of `'s`, `'t`, `'re`, `'ve`, `'m`, `'ll` or `'d` at this unit, if one starts there.
    static func contraction(_ bytes: [UInt8], at u: Unit) -> Int? {
        guard bytes[u.start] == UInt8(ascii: "'") else { return nil }
        let rest = bytes[(u.start + 1)...]
        for suffix in ["s", "t", "re", "ve", "m", "ll", "d"] where rest.starts(with: suffix.utf8) { return 1 + suffix.utf8.count }
        return nil
    }

    static func unitIndex(after byte: Int, _ units: [Unit], from i: Int) -> Int {
        var j = i
        while j < units.count && units[j].start < byte { j += 1 }
        return j
    }

    /// The characters of `bytes`: each valid UTF-8 sequence one unit, each other byte one.
    static func decode(_ bytes: [UInt8]) -> [Unit] {
        var units: [Unit] = []
        units.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            let (scalar, length) = scalarAt(bytes, i)
            let kind: Kind
            if let s = scalar {
                let p = s.properties
                switch p.generalCategory {
                case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: kind = .letter
                case .decimalNumber, .letterNumber, .otherNumber: kind = .number
                default: kind = p.isWhitespace ? .space : .other
                }
            } else {
                kind = .other
            }
            units.append(Unit(start: i, end: i + length, kind: kind, isASCIISpace: bytes[i] == 0x20))
            i += length
        }
        return units
    }

    /// The scalar whose UTF-8 starts at `i` and its length, or nil and 1 for a byte that
    /// does not start a valid (shortest-form, non-surrogate) sequence.
    static func scalarAt(_ b: [UInt8], _ i: Int) -> (Unicode.Scalar?, Int) {
        let lead = b[i]
        if lead < 0x80 { return (Unicode.Scalar(lead), 1) }
        let length: Int, minimum: UInt32
        var value: UInt32
        switch lead {
        case 0xC2...0xDF: length = 2; minimum = 0x80; value = UInt32(lead & 0x1F)
        case 0xE0...0xEF: length = 3; minimum = 0x800; value = UInt32(lead & 0x0F)
        case 0xF0...0xF4: length = 4; minimum = 0x10000; value = UInt32(lead & 0x07)
        default: return (nil, 1)
        }
        guard i + length <= b.count else { return (nil, 1) }
        for k in 1..<length {
            let c = b[i + k]
            guard c & 0xC0 == 0x80 else { return (nil, 1) }
            value = value << 6 | UInt32(c & 0x3F)
        }
        guard value >= minimum, let s = Unicode.Scalar(value) else { return (nil, 1) }
        return (s, length)
    }
}
