import Foundation
import LoomCore
import LoomNN

/// Generation speed, as `loom bench generate` prints it: a GPT (the gpt workload's shape
/// with a 1024-token context, random weights) continues a 16-token prompt greedily to the
/// end of its context over the KV cache, one token at a time, batch 1. Reported: tokens/s
/// over the whole output, the time per token over the first and the last 64 tokens (flat
/// when each token costs the same), and the time per token without the cache (the whole
/// window recomputed) at the same two lengths. `bench/generate_torch.py` is the PyTorch peer.
public enum GenerationBench {
    public struct Result: Encodable {
        public var perSecond: Double
        public var promptMilliseconds: Double
        public var firstTokensMilliseconds: Double
        public var lastTokensMilliseconds: Double
        public var uncachedFirstMilliseconds: Double
        public var uncachedLastMilliseconds: Double
        public var tokens: Int
        public var context: Int
        public var threads: Int
        public var device: String

        enum CodingKeys: String, CodingKey {
            case workload, perSecond = "tokens_per_s", promptMilliseconds = "prompt_ms", firstTokensMilliseconds = "ms_per_token_first64"
            case lastTokensMilliseconds = "ms_per_token_last64", uncachedFirstMilliseconds = "uncached_ms_per_token_first"
            case uncachedLastMilliseconds = "uncached_ms_per_token_last", tokens, context, threads, device
        }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode("generate", forKey: .workload)
            try c.encode(rounded(perSecond, 1), forKey: .perSecond)
            try c.encode(rounded(promptMilliseconds, 3), forKey: .promptMilliseconds)
            try c.encode(rounded(firstTokensMilliseconds, 3), forKey: .firstTokensMilliseconds)
            try c.encode(rounded(lastTokensMilliseconds, 3), forKey: .lastTokensMilliseconds)
            try c.encode(rounded(uncachedFirstMilliseconds, 3), forKey: .uncachedFirstMilliseconds)
            try c.encode(rounded(uncachedLastMilliseconds, 3), forKey: .uncachedLastMilliseconds)
            try c.encode(tokens, forKey: .tokens)
            try c.encode(context, forKey: .context)
            try c.encode(threads, forKey: .threads)
            try c.encode(device, forKey: .device)
        }

        public var json: String { JSONOutput.string(self) }
    }

    public static let config = GPTConfig(vocabSize: 256, contextLength: 1024, layers: 4, dModel: 128, heads: 4)
    public static let promptLength = 16

    public static func run(backend: any Backend) throws -> Result {
        let model = try withDefaultBackend(backend) { try GPT(config, seed: 0) }
        model.eval()
        var rng = Philox(seed: 1)
        let prompt = (0..<promptLength).map { _ in Int32(rng.nextInt(below: config.vocabSize)) }
        func greedy(_ logits: Tensor) throws -> Int32 {  // the last position's most likely token
            let t = logits.shape[1]
            let last = try logits.slice(axis: 1, (t - 1)..<t).floats
            return Int32(last.indices.max { last[$0] < last[$1] }!)
        }
        return try withoutGrad {
            _ = try model(Tensor(indices: prompt, shape: [1, promptLength], on: backend))  // warm-up
            let cache = try KVCache(for: model, padding: [0])
            var t0 = monotonicSeconds()
            var next = try greedy(model(Tensor(indices: prompt, shape: [1, promptLength], on: backend), cache: cache))
            let promptSeconds = monotonicSeconds() - t0
            var perToken: [Double] = []
            var sequence = prompt + [next]
            let start = monotonicSeconds()
            while cache.length < config.contextLength {
                t0 = monotonicSeconds()
                next = try greedy(model(Tensor(indices: [next], shape: [1, 1], on: backend), cache: cache))
                perToken.append(monotonicSeconds() - t0)
                sequence.append(next)
            }
            let total = monotonicSeconds() - start
            func uncached(_ length: Int) throws -> Double {  // median of 5 full-window forwards
                let window = Array(sequence.prefix(length))
                let times = try (0..<5).map { _ -> Double in
                    let t = monotonicSeconds()
                    _ = try greedy(model(Tensor(indices: window, shape: [1, length], on: backend)))
                    return monotonicSeconds() - t
                }
                return times.sorted()[2]
            }
            let mean = { (xs: ArraySlice<Double>) in xs.reduce(0, +) / Double(xs.count) }
            return Result(perSecond: Double(perToken.count) / total, promptMilliseconds: 1000 * promptSeconds,
                          firstTokensMilliseconds: 1000 * mean(perToken.prefix(64)), lastTokensMilliseconds: 1000 * mean(perToken.suffix(64)),
                          uncachedFirstMilliseconds: 1000 * (try uncached(promptLength + 32)),
                          uncachedLastMilliseconds: 1000 * (try uncached(config.contextLength - 32)),
                          tokens: perToken.count, context: config.contextLength, threads: (backend as? CPUBackend)?.threads ?? 0,
                          device: backend.name)
        }
    }
}
