import XCTest
import LoomCore
import LoomData
import LoomNN
import LoomTrain

/// Sampling text: the KV cache gives the tokens the full recomputation gives; batches,
/// stop strings and top-p behave as documented.
final class GenerationTests: XCTestCase {
    let tokenizer = Tokenizer.character(CharTokenizer(fitting: "abcdefghijklmnopqrstuvwxyz ,.\nABCDEFGHIJKLMNOPQRSTUVWXYZ:;!?'"))

    func model(context: Int = 48) throws -> GPT {
        try GPT(GPTConfig(vocabSize: tokenizer.count, contextLength: context, layers: 2, dModel: 32, heads: 4, initStd: 0.3), seed: 9)
    }

    func testCachedGenerationGivesTheTokensOfFullRecomputationWhileTheTextFitsTheContext() throws {
        let gpt = try model()
        let prompts = ["ROMEO:", "a much longer prompt, to pad", "Q"]
        let sampling = Sampling(temperature: 1, topK: 0, topP: 0.95, seed: 3)
        let cached = try Generation.generate(model: gpt, tokenizer: tokenizer, prompts: prompts, tokens: 18, sampling: sampling)
        let full = try Generation.generate(model: gpt, tokenizer: tokenizer, prompts: prompts, tokens: 18, sampling: sampling, cache: false)
        XCTAssertEqual(cached, full)
        XCTAssertEqual(cached.map(\.count), [18, 18, 18])
        XCTAssertEqual(Set(cached).count, 3, "rows draw from their own generators: \(cached)")
        // A row alone draws what it drew in the batch (row r uses seed + r).
        let alone = try Generation.generate(model: gpt, tokenizer: tokenizer, prompts: [prompts[1]], tokens: 18,
                                            sampling: Sampling(temperature: 1, topK: 0, topP: 0.95, seed: 4))
        XCTAssertEqual(alone, [cached[1]])
    }

    func testGenerationPastTheContextRebuildsTheCacheAndKeepsGoing() throws {
        let gpt = try model(context: 12)
        let text = try Generation.generate(model: gpt, tokenizer: tokenizer, prompts: ["ab", "abcdefghij"], tokens: 40,
                                           sampling: Sampling(seed: 1))
        XCTAssertEqual(text.map(\.count), [40, 40])
        let again = try Generation.generate(model: gpt, tokenizer: tokenizer, prompts: ["ab", "abcdefghij"], tokens: 40,
                                            sampling: Sampling(seed: 1))
        XCTAssertEqual(text, again, "the same seed gives the same text")
    }

    func testAStopStringEndsARowsTextBeforeIt() throws {
        let gpt = try model()
        let free = try Generation.generate(model: gpt, tokenizer: tokenizer, prompts: ["x", "y"], tokens: 30, sampling: Sampling(seed: 2))
        let stop = String(free[0].dropFirst(10).prefix(2))  // occurs in row 0's free text
        let stopped = try Generation.generate(model: gpt, tokenizer: tokenizer, prompts: ["x", "y"], tokens: 30, sampling: Sampling(seed: 2),
                                              stop: stop)
        let cut = free[0].range(of: stop)!.lowerBound
        XCTAssertEqual(stopped[0], String(free[0][..<cut]))
        XCTAssertFalse(stopped[0].contains(stop))
        XCTAssertEqual(stopped[1], free[1].range(of: stop).map { String(free[1][..<$0.lowerBound]) } ?? free[1])
    }

    func testTopPAndTopKOfOneAreGreedy() throws {
        let gpt = try model()
        let greedyK = try Generation.generate(model: gpt, tokenizer: tokenizer, prompts: ["hello"], tokens: 12, sampling: Sampling(topK: 1, seed: 1))
        let greedyP = try Generation.generate(model: gpt, tokenizer: tokenizer, prompts: ["hello"], tokens: 12,
                                              sampling: Sampling(topK: 0, topP: 1e-6, seed: 99))
        XCTAssertEqual(greedyK, greedyP)
        XCTAssertThrowsError(try Generation.generate(model: gpt, tokenizer: tokenizer, prompts: ["a"], tokens: 1, sampling: Sampling(topP: 0)))
    }
}
