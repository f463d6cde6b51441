// Inverted dropout with a counter-based mask: the same (seed, counter) gives the same
// mask on every backend and every rank.

extension Tensor {
    /// Zeroes each element with probability `p` and scales the rest by 1/(1-p).
    /// Advances `rng` by the number of 32-bit values the mask used.
    public func dropout(p: Float, rng: inout Philox) throws -> Tensor {
        try requireFloat("dropout", self)
        guard p >= 0 && p < 1 else { throw LoomError.invalidArgument("dropout: p = \(p) must be in [0, 1)") }
        if p == 0 { return self }
        let mask = try empty()
        let blocks = UInt64((count + 3) / 4)
        let counter = (rng.position + 3) / 4
        backend.dropoutMask(mask, p: p, seed: rng.key, counter: counter)
        rng.position = (counter + blocks) * 4
        return try mul(mask)
    }
}
