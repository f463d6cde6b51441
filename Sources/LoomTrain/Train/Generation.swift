import Foundation
import LoomCore
import LoomData
import LoomNN

/// Sampling text from a trained GPT, one character at a time.
public enum Generation {
    /// Continues `prompt` by `tokens` characters. Temperature scales the logits; top-k
    /// keeps the k most likely characters (0: all). The same seed gives the same text.
    public static func sample(model: GPT, tokenizer: CharTokenizer, prompt: String, tokens: Int, temperature: Float,
                              topK: Int, seed: UInt64) throws -> String {
        guard temperature > 0 else { throw LoomError.invalidArgument("--temperature must be > 0, got \(temperature)") }
        var context = tokenizer.encodeLeniently(prompt.isEmpty ? "\n" : prompt).tokens
        var rng = Philox(seed: seed)
        var out: [Int32] = []
        model.eval()
        for _ in 0..<tokens {
            let window = Array(context.suffix(model.config.contextLength))
            let logits = try withoutGrad { try model(Tensor(indices: window, shape: [1, window.count], on: model.wpe?.weight.backend ?? DefaultBackend.current)) }
            let v = model.config.vocabSize
            let last = Array(logits.floats[((window.count - 1) * v)..<(window.count * v)])
            var scaled = last.map { $0 / temperature }
            if topK > 0 && topK < v {
                let cutoff = scaled.sorted(by: >)[topK - 1]
                scaled = scaled.map { $0 < cutoff ? -.infinity : $0 }
            }
            let m = scaled.max()!
            let p = scaled.map { Foundation.exp($0 - m) }
            let total = p.reduce(0, +)
            var u = rng.nextFloat() * total, pick = v - 1
            for (i, pi) in p.enumerated() { u -= pi; if u <= 0 { pick = i; break } }
            context.append(Int32(pick)); out.append(Int32(pick))
        }
        return tokenizer.decode(out)
    }
}
