import Foundation
import LoomCore

/// The kinds of tokenizer a run can fit to its text (`data.tokenizer`).
public enum TokenizerKind: String, CaseIterable, Sendable {
    /// One token per distinct character of the training text.
    case char
    /// Byte-level BPE trained on the training text to `data.vocab_size` tokens.
    case bpe
}

/// How a language model's text becomes tokens and back: by character, or byte-level BPE.
/// A run saves its tokenizer in the checkpoint, so resumed runs, `loom eval` and
/// `loom generate` tokenize as it did.
public enum Tokenizer: Equatable, Sendable {
    case character(CharTokenizer)
    case bytePairs(BPETokenizer)

    public var count: Int {
        switch self {
        case .character(let t): return t.count
        case .bytePairs(let t): return t.count
        }
    }

    /// Tokens of `text`, and how many characters were outside the vocabulary (read as the
    /// unknown token; always 0 for BPE, which encodes any bytes).
    public func encodeLeniently(_ text: String) -> (tokens: [Int32], unseen: Int) {
        switch self {
        case .character(let t): return t.encodeLeniently(text)
        case .bytePairs(let t): return (t.encode(text), 0)
        }
    }

    public func decode(_ tokens: [Int32]) -> String {
        switch self {
        case .character(let t): return t.decode(tokens)
        case .bytePairs(let t): return t.decode(tokens)
        }
    }

    /// What an unseen character is read as, for messages ("read as ' '").
    public var unknownDescription: String {
        switch self {
        case .character(let t): return String(reflecting: String(t.vocabulary[Int(t.unknownToken)]))
        case .bytePairs: return "its bytes"
        }
    }

    /// Fits a tokenizer of `kind` to `text`.
    public static func fit(_ kind: TokenizerKind, to text: String, vocabularySize: Int) throws -> Tokenizer {
        switch kind {
        case .char: return .character(CharTokenizer(fitting: text))
        case .bpe: return .bytePairs(try BPETokenizer.train(text, vocabularySize: vocabularySize))
        }
    }

    // MARK: Saving

    /// What a tokenizer file and a checkpoint's `loom.tokenizer` metadata hold: the kind,
    /// then a character vocabulary, or BPE tokens (bytes as hex) and merges.
    struct Saved: Codable {
        var kind: String
        var vocabulary: String?
        var tokens: [String]?
        var merges: [[Int32]]?
    }

    /// JSON with sorted keys (the checkpoint metadata and `loom tokenizer train`'s file).
    public var serialized: String {
        let saved: Saved
        switch self {
        case .character(let t): saved = Saved(kind: "char", vocabulary: t.serialized)
        case .bytePairs(let t):
            saved = Saved(kind: "bpe", tokens: t.tokenBytes.map { $0.map { String(format: "%02x", $0) }.joined() },
                          merges: t.merges.map { [$0.left, $0.right, $0.result] })
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try! encoder.encode(saved), as: UTF8.self)
    }

    /// A tokenizer from `serialized`, or from a checkpoint of before tokenizer kinds
    /// existed (its metadata was the character vocabulary itself). `source` names where
    /// the text came from, for errors.
    public init(serialized text: String, source: String) throws {
        // A vocabulary of old is sorted characters, so it never starts with `{"`: such a
        // text is a tokenizer in JSON, and one that does not decode is an error, not a
        // vocabulary of its own characters.
        guard text.hasPrefix("{\"") else {
            self = .character(CharTokenizer(vocabulary: Array(text)))
            return
        }
        let saved: Saved
        do { saved = try JSONDecoder().decode(Saved.self, from: Data(text.utf8)) } catch {
            throw LoomError.io("\(source): not a tokenizer's JSON (\(Tokenizer.describe(error)))")
        }
        switch saved.kind {
        case "char":
            guard let v = saved.vocabulary else { throw LoomError.io("\(source): a char tokenizer without its vocabulary") }
            self = .character(CharTokenizer(vocabulary: Array(v)))
        case "bpe":
            guard let tokens = saved.tokens, let merges = saved.merges else { throw LoomError.io("\(source): a bpe tokenizer without tokens or merges") }
            let bytes = try tokens.enumerated().map { i, hex -> [UInt8] in
                guard let b = Tokenizer.hexBytes(hex) else { throw LoomError.io("\(source): bpe token \(i) is not hex bytes: \(hex.prefix(20))") }
                return b
            }
            guard merges.allSatisfy({ $0.count == 3 }) else { throw LoomError.io("\(source): a bpe merge is not [left, right, result]") }
            do {
                self = .bytePairs(try BPETokenizer(tokenBytes: bytes, merges: merges.map { .init(left: $0[0], right: $0[1], result: $0[2]) }))
            } catch { throw LoomError.io("\(source): \(error)") }
        default:
            throw LoomError.io("\(source): unknown tokenizer kind '\(saved.kind)'; valid: \(TokenizerKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    /// A decoding error in one line: what was wrong and where.
    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let c), DecodingError.keyNotFound(_, let c), DecodingError.typeMismatch(_, let c),
             DecodingError.valueNotFound(_, let c):
            let at = c.codingPath.map(\.stringValue).joined(separator: ".")
            return (at.isEmpty ? "" : "at \(at): ") + c.debugDescription.split(separator: "\n").joined(separator: " ")
        default: return "\(error)".split(separator: "\n").joined(separator: " ")
        }
    }

    static func hexBytes(_ hex: String) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        for k in stride(from: 0, to: digits.count, by: 2) {
            guard let b = UInt8(String(decoding: digits[k..<(k + 2)], as: UTF8.self), radix: 16) else { return nil }
            out.append(b)
        }
        return out
    }

    /// A tokenizer file written by `loom tokenizer train`.
    public static func load(_ path: String) throws -> Tokenizer {
        let bytes = try readFileBytes(path)
        guard let text = String(validating: bytes, as: UTF8.self), text.hasPrefix("{") else {
            throw LoomError.io("'\(path)': not a tokenizer file (JSON written by loom tokenizer train)")
        }
        return try Tokenizer(serialized: text, source: "'\(path)'")
    }
}
