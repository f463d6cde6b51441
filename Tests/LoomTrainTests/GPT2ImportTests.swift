import Foundation
import XCTest
import LoomCore
import LoomData
import LoomNN
import LoomTrain

/// GPT-2 in Hugging Face's layout: the fixture (scripts/gen_gpt2_fixture.py) is a tiny
/// GPT2LMHeadModel with its own byte-level tokenizer, and transformers' token ids, logits
/// and greedy generation for a text.
final class GPT2ImportTests: CLITestCase {
    var fixture: String { Bundle.module.url(forResource: "gpt2-tiny", withExtension: nil, subdirectory: "Fixtures")!.path }

    struct Reference: Decodable {
        var text: String
        var ids: [Int32]
        var logits: [[Float]]
        var greedy_prompt: [Int32]
        var greedy: [Int32]
    }

    func reference() throws -> Reference {
        try JSONDecoder().decode(Reference.self, from: Data(contentsOf: URL(fileURLWithPath: fixture + "/reference.json")))
    }

    func testImportedGPT2GivesTransformersTokensLogitsAndGreedyText() throws {
        let r = try reference()
        let (model, tokenizer) = try HuggingFaceGPT2.load(directory: fixture)
        let tok = try XCTUnwrap(tokenizer)
        XCTAssertEqual(tok.encodeLeniently(r.text).tokens, r.ids, "GPT-2's tokenizer files give transformers' ids")
        XCTAssertEqual(tok.decode(r.ids), r.text)
        let logits = try withoutGrad { try model(Tensor(indices: r.ids, shape: [1, r.ids.count])) }.floats
        let v = model.config.vocabSize
        var worst: Float = 0
        for (t, row) in r.logits.enumerated() {
            for (j, want) in row.enumerated() { worst = max(worst, abs(logits[t * v + j] - want)) }
        }
        XCTAssertLessThan(worst, 1e-4, "logits differ from transformers' by up to \(worst)")

        // Greedy generation over the KV cache: transformers' model.generate(do_sample=False).
        let cache = try KVCache(for: model, padding: [0])
        var next = try withoutGrad { try model(Tensor(indices: r.greedy_prompt, shape: [1, r.greedy_prompt.count]), cache: cache) }
        var tokens: [Int32] = []
        for _ in r.greedy {
            let last = try next.slice(axis: 1, (next.shape[1] - 1)..<next.shape[1]).floats
            let token = Int32(last.indices.max { last[$0] < last[$1] }!)
            tokens.append(token)
            next = try withoutGrad { try model(Tensor(indices: [token], shape: [1, 1]), cache: cache) }
        }
        XCTAssertEqual(tokens, r.greedy)
    }

    func testExportWritesWhatImportReadsBack() throws {
        let (model, tokenizer) = try HuggingFaceGPT2.load(directory: fixture)
        try HuggingFaceGPT2.save(model, tokenizer: tokenizer, to: work + "/out")
        let (again, tokenizerAgain) = try HuggingFaceGPT2.load(directory: work + "/out")
        XCTAssertEqual(tokenizerAgain, tokenizer)
        for ((name, a), (_, b)) in zip(model.namedParameters(), again.namedParameters()) { XCTAssertEqual(a.floats, b.floats, name) }
        XCTAssertEqual(try String(contentsOfFile: work + "/out/merges.txt", encoding: .utf8),
                       try String(contentsOfFile: fixture + "/merges.txt", encoding: .utf8))
        let vocab = { (p: String) in try JSONDecoder().decode([String: Int].self, from: Data(contentsOf: URL(fileURLWithPath: p))) }
        XCTAssertEqual(try vocab(work + "/out/vocab.json"), try vocab(fixture + "/vocab.json"))
    }

    func testAnImportedGPT2GeneratesAndFineTunesWithInitButDoesNotResume() throws {
        let imported = try loom(["gpt2", "import", fixture, "--out", work + "/gpt2"])
        XCTAssertEqual(imported.status, 0, imported.err)
        XCTAssertTrue(imported.out.contains("2 layers, d_model 32, 4 heads, context 64, vocabulary 400"), imported.out)
        let g = try loom(["generate", "--checkpoint", work + "/gpt2", "--prompt", "ROMEO:", "--tokens", "5", "--top-k", "1"])
        XCTAssertEqual(g.status, 0, g.err)
        XCTAssertTrue(g.out.hasPrefix("ROMEO:"), g.out)
        try """
        [model]
        kind = "gpt"
        [data]
        path = "data/shakespeare.txt"
        [train]
        steps = 2
        batch_size = 4
        lr = 0.0
        eval_batches = 2
        """.write(toFile: work + "/tune.toml", atomically: true, encoding: .utf8)
        let tuned = try loom(["train", work + "/tune.toml", "--init", work + "/gpt2", "--out", work, "--name", "tuned"])
        XCTAssertEqual(tuned.status, 0, tuned.err)
        // At lr 0 the run's weights are where it started: the imported GPT-2's, exactly.
        let (file, c, tokenizer) = try TrainingCheckpoint.peek(work + "/tuned")
        XCTAssertEqual(tokenizer?.count, 400)
        let saved = try GPT(GPTConfig(vocabSize: 400, contextLength: c.context, layers: c.layers, dModel: c.dModel, heads: c.heads), seed: 1)
        try TrainingCheckpoint.restoreModel(file, path: work + "/tuned", into: saved)
        let (original, _) = try HuggingFaceGPT2.load(directory: fixture)
        for ((name, a), (_, b)) in zip(saved.namedParameters(), original.namedParameters()) { XCTAssertEqual(a.floats, b.floats, name) }
        let resumed = try loom(["train", "--resume", work + "/gpt2"])
        XCTAssertNotEqual(resumed.status, 0)
        XCTAssertTrue(resumed.err.contains("loom train --init"), resumed.err)
        let exported = try loom(["gpt2", "export", "--checkpoint", work + "/tuned", "--out", work + "/tuned-hf"])
        XCTAssertEqual(exported.status, 0, exported.err)
        XCTAssertTrue(FileManager.default.fileExists(atPath: work + "/tuned-hf/vocab.json"))
        // An export killed in any of its files leaves no directory that looks whole: the
        // previous export stays as it was, and a new one appears only when complete.
        let before = try FileManager.default.contentsOfDirectory(atPath: work + "/tuned-hf").sorted().map {
            try Data(contentsOf: URL(fileURLWithPath: work + "/tuned-hf/" + $0))
        }
        for kill in ["model.safetensors:1:1000", "vocab.json:1:10", "merges.txt:1:renamed"] {
            for target in ["tuned-hf", "fresh-hf"] {
                let k = try loom(["gpt2", "export", "--checkpoint", work + "/gpt2", "--out", work + "/" + target], env: ["LOOM_TEST_KILL_WRITE": kill])
                XCTAssertEqual(k.status, SIGKILL, "\(kill): \(k.err)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: work + "/fresh-hf"), "\(kill): a partial export under the final name")
            let after = try FileManager.default.contentsOfDirectory(atPath: work + "/tuned-hf").sorted().map {
                try Data(contentsOf: URL(fileURLWithPath: work + "/tuned-hf/" + $0))
            }
            XCTAssertEqual(after, before, "\(kill): the previous export changed")
        }
        try "mine".write(toFile: work + "/tuned-hf/notes.txt", atomically: true, encoding: .utf8)
        let other = try loom(["gpt2", "export", "--checkpoint", work + "/gpt2", "--out", work + "/tuned-hf"])
        XCTAssertNotEqual(other.status, 0)
        XCTAssertTrue(other.err.contains("holds other files (notes.txt)"), other.err)
        let missing = try loom(["gpt2", "import", work + "/nowhere", "--out", work + "/x"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.err.contains("nowhere/config.json"), missing.err)
    }
}
