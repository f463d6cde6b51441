import LoomCore

/// A byte-level BPE tokenizer (GPT-2's scheme): text is cut into chunks by GPT-2's
/// pre-tokenizer (`ByteLevelChunks`), each chunk's UTF-8 bytes start as one token per byte,
/// and merges of adjacent tokens apply in rank order. Any byte sequence encodes (there is
/// no unknown token) and decodes back to the same bytes.
///
/// Tokens are numbered as the vocabulary they come from numbers them: a tokenizer trained
/// here has the 256 bytes as tokens 0–255 and merge r as token 256 + r; GPT-2's files
/// (`vocab.json`, `merges.txt`) keep GPT-2's numbering.
public struct BPETokenizer: Equatable, Sendable {
    /// One merge: tokens `left` and `right`, adjacent, become `result`.
    public struct Merge: Equatable, Sendable, Codable {
        public var left: Int32, right: Int32, result: Int32
        public init(left: Int32, right: Int32, result: Int32) { self.left = left; self.right = right; self.result = result }
    }

    /// The bytes each token stands for.
    public let tokenBytes: [[UInt8]]
    /// In rank order: the first applies first.
    public let merges: [Merge]
    /// The token of each single byte.
    let byteTokens: [Int32]
    /// Rank and result of each mergeable pair, keyed by `pairKey`.
    let ranks: [UInt64: (rank: Int32, result: Int32)]

    public static func == (a: BPETokenizer, b: BPETokenizer) -> Bool { a.tokenBytes == b.tokenBytes && a.merges == b.merges }

    /// A tokenizer from its tokens' bytes and its merges. Every single byte must be a token,
    /// and each merge's result must be the concatenation of its parts.
    public init(tokenBytes: [[UInt8]], merges: [Merge]) throws {
        var byteTokens = [Int32](repeating: -1, count: 256)
        for (id, bytes) in tokenBytes.enumerated() where bytes.count == 1 && byteTokens[Int(bytes[0])] < 0 { byteTokens[Int(bytes[0])] = Int32(id) }
        if let missing = byteTokens.firstIndex(of: -1) {
            throw LoomError.config("bpe: no token for the byte 0x\(String(missing, radix: 16)): a byte-level vocabulary holds all 256")
        }
        var ranks: [UInt64: (rank: Int32, result: Int32)] = [:]
        for (r, m) in merges.enumerated() {
            let ids = [m.left, m.right, m.result]
            guard ids.allSatisfy({ $0 >= 0 && Int($0) < tokenBytes.count }),
                  tokenBytes[Int(m.result)] == tokenBytes[Int(m.left)] + tokenBytes[Int(m.right)] else {
                throw LoomError.config("bpe: merge \(r) (\(m.left) + \(m.right) -> \(m.result)) does not join its tokens' bytes "
                    + "(vocabulary of \(tokenBytes.count) tokens)")
            }
            if ranks[BPETokenizer.pairKey(m.left, m.right)] == nil { ranks[BPETokenizer.pairKey(m.left, m.right)] = (Int32(r), m.result) }
        }
        self.tokenBytes = tokenBytes
        self.merges = merges
        self.byteTokens = byteTokens
        self.ranks = ranks
    }

    public var count: Int { tokenBytes.count }

    static func pairKey(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b)) }

    // MARK: Encoding

    public func encode(_ text: String) -> [Int32] {
        var out: [Int32] = []
        var memo: [ArraySlice<UInt8>: [Int32]] = [:]
        let bytes = Array(text.utf8)
        for chunk in ByteLevelChunks.split(bytes) {
            if let known = memo[chunk] { out += known; continue }
            let tokens = encodeChunk(chunk)
            if memo.count < 1 << 16 { memo[chunk] = tokens }
            out += tokens
        }
        return out
    }

    /// Bytes that need not be UTF-8: cut like text where they are, byte by byte elsewhere.
    public func encode(bytes: [UInt8]) -> [Int32] {
        ByteLevelChunks.split(bytes).flatMap { encodeChunk($0) }
    }

    /// One chunk: its bytes as tokens, then the lowest-ranked adjacent pair merged until
    /// none is mergeable.
    func encodeChunk(_ chunk: ArraySlice<UInt8>) -> [Int32] {
        var tokens = chunk.map { byteTokens[Int($0)] }
        while tokens.count > 1 {
            var best: (rank: Int32, at: Int, result: Int32)?
            for i in 0..<(tokens.count - 1) {
                if let m = ranks[BPETokenizer.pairKey(tokens[i], tokens[i + 1])], m.rank < (best?.rank ?? .max) { best = (m.rank, i, m.result) }
            }
            guard let best else { break }
            // Every occurrence of that pair, left to right.
            let (l, r) = (tokens[best.at], tokens[best.at + 1])
            var merged: [Int32] = [], i = 0
            merged.reserveCapacity(tokens.count)
            while i < tokens.count {
                if i + 1 < tokens.count && tokens[i] == l && tokens[i + 1] == r { merged.append(best.result); i += 2 } else { merged.append(tokens[i]); i += 1 }
            }
            tokens = merged
        }
        return tokens
    }

    // MARK: Decoding

    public func decodeBytes(_ tokens: [Int32]) -> [UInt8] { tokens.flatMap { tokenBytes[Int($0)] } }

    /// The text of `tokens`; bytes that are not UTF-8 (a cut inside a character) read as U+FFFD.
    public func decode(_ tokens: [Int32]) -> String { String(decoding: decodeBytes(tokens), as: UTF8.self) }

    // MARK: Training

    /// Learns merges from `text` until the vocabulary has `vocabularySize` tokens (or no
    /// pair is left): the 256 bytes, then repeatedly the most frequent adjacent pair inside
    /// the chunks (ties: the pair of lowest token ids) becomes a new token. Pair counts are kept up to date per merge, touching only the
    /// chunks that hold the pair, so the Shakespeare corpus to 4096 tokens takes seconds.
    public static func train(_ text: String, vocabularySize: Int) throws -> BPETokenizer {
        guard vocabularySize >= 256 else {
            throw LoomError.config("bpe: vocabulary size \(vocabularySize) is under the 256 byte tokens")
        }
        var frequency: [ArraySlice<UInt8>: Int] = [:]
        for chunk in ByteLevelChunks.split(Array(text.utf8)) { frequency[chunk, default: 0] += 1 }
        // Unique chunks as token sequences, in a fixed order (the result does not depend on hashing).
        let unique = frequency.sorted { $0.key.lexicographicallyPrecedes($1.key) }
        var words = unique.map { $0.key.map { Int32($0) } }
        let counts = unique.map(\.value)
        var tokenBytes = (0..<256).map { [UInt8($0)] }
        var tokenOf = Dictionary(uniqueKeysWithValues: tokenBytes.enumerated().map { ($1, Int32($0)) })
        var merges: [Merge] = []

        var pairCount: [UInt64: Int] = [:]
        var pairWords: [UInt64: Set<Int>] = [:]
        for (w, word) in words.enumerated() where word.count > 1 {
            for i in 0..<(word.count - 1) {
                let k = pairKey(word[i], word[i + 1])
                pairCount[k, default: 0] += counts[w]
                pairWords[k, default: []].insert(w)
            }
        }
        var heap = PairHeap()
        for (k, c) in pairCount { heap.push(count: c, key: k) }

        while tokenBytes.count < vocabularySize {
            // The most frequent pair; stale heap entries (counts since changed) are skipped.
            guard let top = heap.popValid(pairCount) else { break }
            let left = Int32(truncatingIfNeeded: top.key >> 32), right = Int32(truncatingIfNeeded: top.key)
            // A join that spells an existing token (made from other parts) merges into it:
            // every token's bytes stay distinct, as a vocab.json needs.
            let joined = tokenBytes[Int(left)] + tokenBytes[Int(right)]
            let result = tokenOf[joined] ?? Int32(tokenBytes.count)
            if result == Int32(tokenBytes.count) { tokenBytes.append(joined); tokenOf[joined] = result }
            merges.append(Merge(left: left, right: right, result: result))
            var changed: Set<UInt64> = []
            for w in pairWords[top.key] ?? [] {
                let word = words[w], c = counts[w]
                guard word.count > 1 else { continue }
                for i in 0..<(word.count - 1) {  // this word's old pairs out
                    let k = pairKey(word[i], word[i + 1])
                    pairCount[k, default: 0] -= c
                    changed.insert(k)
                }
                var merged: [Int32] = [], i = 0
                while i < word.count {
                    if i + 1 < word.count && word[i] == left && word[i + 1] == right { merged.append(result); i += 2 } else { merged.append(word[i]); i += 1 }
                }
                words[w] = merged
                if merged.count > 1 {
                    for i in 0..<(merged.count - 1) {  // and its new pairs in
                        let k = pairKey(merged[i], merged[i + 1])
                        pairCount[k, default: 0] += c
                        pairWords[k, default: []].insert(w)
                        changed.insert(k)
                    }
                }
            }
            pairCount[top.key] = nil
            pairWords[top.key] = nil
            for k in changed {
                if let c = pairCount[k], c > 0 { heap.push(count: c, key: k) } else { pairCount[k] = nil }
            }
        }
        return try BPETokenizer(tokenBytes: tokenBytes, merges: merges)
    }
}

/// A max-heap of (count, pair), highest count first, then the lowest pair key; entries
/// whose count no longer matches are dropped when they reach the top.
struct PairHeap {
    private var items: [(count: Int, key: UInt64)] = []

    private static func above(_ a: (count: Int, key: UInt64), _ b: (count: Int, key: UInt64)) -> Bool {
        a.count > b.count || (a.count == b.count && a.key < b.key)
    }

    mutating func push(count: Int, key: UInt64) {
        items.append((count, key))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard PairHeap.above(items[i], items[parent]) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> (count: Int, key: UInt64)? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var best = i
                if l < items.count && PairHeap.above(items[l], items[best]) { best = l }
                if r < items.count && PairHeap.above(items[r], items[best]) { best = r }
                if best == i { break }
                items.swapAt(i, best)
                i = best
            }
        }
        return top
    }

    /// The top entry whose count is current.
    mutating func popValid(_ counts: [UInt64: Int]) -> (count: Int, key: UInt64)? {
        while let top = pop() {
            if let c = counts[top.key], c == top.count, c > 0 { return top }
        }
        return nil
    }
}
