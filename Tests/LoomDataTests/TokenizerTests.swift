import Foundation
import XCTest
import LoomCore
import LoomData

/// Byte-level BPE: GPT-2's pre-tokenizer cuts, round trips of any text and any bytes,
/// training, and saving.
final class TokenizerTests: XCTestCase {
    /// The texts of scripts/gen_gpt2_chunks.py, cut by GPT-2's regular expression in Python.
    func testChunksAreTheCutsOfGPT2sRegularExpression() throws {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "gpt2_chunks", withExtension: "json", subdirectory: "Fixtures"))
        let cases = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [[String: Any]])
        XCTAssertGreaterThan(cases.count, 10)
        for c in cases {
            let text = try XCTUnwrap(c["text"] as? String), want = try XCTUnwrap(c["chunks"] as? [String])
            let got = ByteLevelChunks.split(Array(text.utf8)).map { String(decoding: $0, as: UTF8.self) }
            XCTAssertEqual(got, want, String(reflecting: text))
        }
    }

    func shakespeare() throws -> String {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return try String(contentsOf: repo.appendingPathComponent("data/shakespeare.txt"), encoding: .utf8)
    }

    func testTrainedOnShakespeareItRoundTripsAnyTextAndAnyBytes() throws {
        let text = try shakespeare()
        let bpe = try BPETokenizer.train(String(text.prefix(200_000)), vocabularySize: 1000)
        XCTAssertEqual(bpe.count, 1000)
        XCTAssertGreaterThanOrEqual(bpe.merges.count, 744)
        XCTAssertEqual(Set(bpe.tokenBytes).count, 1000, "every token spells different bytes")
        let sample = String(text.suffix(5000))  // text it was not trained on
        let tokens = bpe.encode(sample)
        XCTAssertEqual(bpe.decode(tokens), sample)
        XCTAssertLessThan(Double(tokens.count), 0.5 * Double(sample.utf8.count), "merges compress the text")
        var rng = Philox(seed: 5)
        let alphabet: [String] = ["a", "Z", " ", "  ", "\n", "'s", "é", "e\u{301}", "日本", "👩‍👩‍👧", "🇫🇷", "\u{0}", "\t", "٣", "\u{FFFD}", "\u{10FFFF}"]
        for _ in 0..<200 {
            let s = (0..<rng.nextInt(below: 30)).map { _ in alphabet[rng.nextInt(below: alphabet.count)] }.joined()
            XCTAssertEqual(bpe.decode(bpe.encode(s)), s)
        }
        for _ in 0..<200 {  // bytes that are mostly not UTF-8
            let bytes = (0..<rng.nextInt(below: 40)).map { _ in UInt8(rng.nextInt(below: 256)) }
            XCTAssertEqual(bpe.decodeBytes(bpe.encode(bytes: bytes)), bytes)
        }
    }

    func testTrainingIsDeterministicAndMergesTheMostFrequentPairFirst() throws {
        let text = "aaab aaab aaab abab"
        let a = try BPETokenizer.train(text, vocabularySize: 260), b = try BPETokenizer.train(text, vocabularySize: 260)
        XCTAssertEqual(a, b)
        // Chunks: "aaab" x1, " aaab" x2, " abab" x1. The pair (a, a) occurs 6 times, (a, b) 6 times: the lower ids win.
        XCTAssertEqual(a.merges[0], .init(left: 97, right: 97, result: 256))
        XCTAssertEqual(a.tokenBytes[256], Array("aa".utf8))
    }

    func testATokenizerSurvivesSavingAndAnOldCharacterVocabularyStillLoads() throws {
        let bpe = Tokenizer.bytePairs(try BPETokenizer.train(try shakespeare().prefix(50_000).description, vocabularySize: 400))
        XCTAssertEqual(try Tokenizer(serialized: bpe.serialized, source: "test"), bpe)
        let chars = Tokenizer.character(CharTokenizer(fitting: "hello world"))
        XCTAssertEqual(try Tokenizer(serialized: chars.serialized, source: "test"), chars)
        XCTAssertEqual(try Tokenizer(serialized: " dehlorw", source: "a checkpoint of before"), chars)
        XCTAssertThrowsError(try Tokenizer(serialized: #"{"kind":"bpe","tokens":["zz"],"merges":[]}"#, source: "tok.json")) {
            XCTAssertTrue("\($0)".contains("tok.json: bpe token 0 is not hex bytes"), "\($0)")
        }
        XCTAssertThrowsError(try Tokenizer(serialized: #"{"kind":"wordpiece"}"#, source: "tok.json")) {
            XCTAssertTrue("\($0)".contains("unknown tokenizer kind 'wordpiece'; valid: char, bpe"), "\($0)")
        }
    }
}
