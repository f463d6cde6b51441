import Foundation
import LoomCore
import LoomData
import LoomNN

/// How the next token is drawn from the logits.
public struct Sampling: Sendable {
    /// Divides the logits (> 0; lower is more conservative).
    public var temperature: Float = 0.8
    /// Keep the k most likely tokens (0: all).
    public var topK = 40
    /// Then keep the smallest set of most likely tokens whose probability reaches p (1: all).
    public var topP: Float = 1
    /// Row r of a batch draws from Philox(seed + r): the same seed gives the same text.
    public var seed: UInt64 = 0

    public init(temperature: Float = 0.8, topK: Int = 40, topP: Float = 1, seed: UInt64 = 0) {
        self.temperature = temperature; self.topK = topK; self.topP = topP; self.seed = seed
    }

    func validate() throws {
        guard temperature > 0, temperature.isFinite else { throw LoomError.invalidArgument("temperature \(temperature) must be a finite number > 0") }
        guard topK >= 0 else { throw LoomError.invalidArgument("top-k \(topK) must be >= 0 (0: all)") }
        guard topP > 0, topP <= 1 else { throw LoomError.invalidArgument("top-p \(topP) must be in (0, 1]") }
    }

    /// One token drawn from `logits` [V].
    func pick(_ logits: ArraySlice<Float>, rng: inout Philox) -> Int32 {
        var scaled = logits.map { $0 / temperature }
        let v = scaled.count
        if topK > 0 && topK < v {
            let cutoff = scaled.sorted(by: >)[topK - 1]
            scaled = scaled.map { $0 < cutoff ? -.infinity : $0 }
        }
        let m = scaled.max()!
        var p = scaled.map { Foundation.exp($0 - m) }
        if topP < 1 {
            let total = p.reduce(0, +)
            var kept: Float = 0, cutoff: Float = 0
            for q in p.sorted(by: >) {  // the most likely first, until their share reaches p
                kept += q; cutoff = q
                if kept >= topP * total { break }
            }
            p = p.map { $0 < cutoff ? 0 : $0 }
        }
        let total = p.reduce(0, +)
        var u = rng.nextFloat() * total, pick = v - 1
        for (i, pi) in p.enumerated() { u -= pi; if u <= 0 { pick = i; break } }
        return Int32(pick)
    }
}

/// Text from a trained GPT.
public enum Generation {
    /// Continues each prompt by `tokens` tokens, or up to the first occurrence of `stop`
    /// (the text ends before it). With `cache` (the default) the prompts run as one
    /// left-padded batch over a KV cache: the prompt once, then one position per token;
    /// when the context fills, the cache is rebuilt from the last half of the window.
    /// Without it, each prompt recomputes its whole window (the last `context` tokens) for
    /// every token. The two give the same tokens while the text fits the context.
    public static func generate(model: GPT, tokenizer: Tokenizer, prompts: [String], tokens: Int, sampling: Sampling,
                                stop: String? = nil, cache: Bool = true) throws -> [String] {
        try sampling.validate()
        guard tokens >= 0 else { throw LoomError.invalidArgument("tokens \(tokens) must be >= 0") }
        let contexts = prompts.map { tokenizer.encodeLeniently($0.isEmpty ? "\n" : $0).tokens }
        var rngs = prompts.indices.map { Philox(seed: sampling.seed &+ UInt64($0)) }
        var outputs = [[Int32]](repeating: [], count: prompts.count)
        var stopped = [Bool](repeating: false, count: prompts.count)
        model.eval()
        defer { model.train() }
        try withoutGrad {
            var step = cache ? try CachedSteps(model: model, contexts: contexts) : nil
            for _ in 0..<tokens where stopped.contains(false) {
                let logits = try step?.logits() ?? contexts.indices.map { try uncachedLogits(model, contexts[$0] + outputs[$0]) }
                var next: [Int32] = []
                for row in prompts.indices {
                    let token = sampling.pick(logits[row], rng: &rngs[row])
                    next.append(token)
                    guard !stopped[row] else { continue }
                    outputs[row].append(token)
                    if let stop, !stop.isEmpty, tokenizer.decode(outputs[row]).contains(stop) { stopped[row] = true }
                }
                try step?.advance(next)
            }
        }
        return outputs.map { out in
            let text = tokenizer.decode(out)
            guard let stop, !stop.isEmpty, let r = text.range(of: stop) else { return text }
            return String(text[..<r.lowerBound])
        }
    }

    /// The last position's logits [V] for a window of the last `context` tokens.
    static func uncachedLogits(_ model: GPT, _ tokens: [Int32]) throws -> ArraySlice<Float> {
        let window = Array(tokens.suffix(model.config.contextLength))
        let logits = try model(Tensor(indices: window, shape: [1, window.count], on: model.backend))
        return ArraySlice(try logits.slice(axis: 1, (window.count - 1)..<window.count).floats)
    }

    /// Batched generation over a KV cache: `logits()` is each row's next-token
    /// distribution, `advance` feeds the tokens drawn from it.
    struct CachedSteps {
        let model: GPT
        var sequences: [[Int32]]
        var cache: KVCache
        var pending: Tensor?  // tokens [B, T] not yet run

        init(model: GPT, contexts: [[Int32]]) throws {
            self.model = model
            sequences = contexts
            (cache, pending) = try CachedSteps.prefill(model, contexts, keep: model.config.contextLength)
        }

        /// A cache for the last `keep` tokens of each row, left-padded to the longest.
        static func prefill(_ model: GPT, _ rows: [[Int32]], keep: Int) throws -> (KVCache, Tensor) {
            let kept = rows.map { Array($0.suffix(keep)) }
            let longest = kept.map(\.count).max() ?? 0
            let padding = kept.map { longest - $0.count }
            let tokens = zip(kept, padding).flatMap { row, pad in [Int32](repeating: 0, count: pad) + row }
            return (try KVCache(for: model, padding: padding), Tensor(indices: tokens, shape: [rows.count, longest], on: model.backend))
        }

        mutating func logits() throws -> [ArraySlice<Float>] {
            guard let tokens = pending else { throw LoomError.invalidArgument("generation: no tokens to run") }
            pending = nil
            let t = tokens.shape[1]
            let logits = try model(tokens, cache: cache)  // [B, T, V]
            let v = logits.shape[2]
            let last = try logits.slice(axis: 1, (t - 1)..<t).floats
            return sequences.indices.map { last[($0 * v)..<(($0 + 1) * v)] }
        }

        mutating func advance(_ next: [Int32]) throws {
            for row in sequences.indices { sequences[row].append(next[row]) }
            if cache.length == cache.capacity {  // full: start again from the last half of the window
                (cache, pending) = try CachedSteps.prefill(model, sequences, keep: max(1, cache.capacity / 2))
            } else {
                pending = Tensor(indices: next, shape: [next.count, 1], on: model.backend)
            }
        }
    }

    /// Continues `prompt` by `tokens` characters (one prompt, cached).
    public static func sample(model: GPT, tokenizer: Tokenizer, prompt: String, tokens: Int, temperature: Float,
                              topK: Int, seed: UInt64) throws -> String {
        try generate(model: model, tokenizer: tokenizer, prompts: [prompt], tokens: tokens,
                     sampling: Sampling(temperature: temperature, topK: topK, seed: seed))[0]
    }
}
