import LoomCore

/// A character-level tokenizer: one token per distinct character of the training text,
/// in sorted order. The vocabulary is saved with the model so generation decodes the
/// same way.
public struct CharTokenizer: Equatable, Sendable {
    public let vocabulary: [Character]
    private let index: [Character: Int32]

    public init(vocabulary: [Character]) {
        self.vocabulary = vocabulary
        var idx: [Character: Int32] = [:]
        for (i, c) in vocabulary.enumerated() { idx[c] = Int32(i) }
        index = idx
    }

    /// The vocabulary of `text`.
    public init(fitting text: String) {
        self.init(vocabulary: Array(Set(text)).sorted())
    }

    public var count: Int { vocabulary.count }

    /// Tokens of `text`; a character outside the vocabulary is an error naming it.
    public func encode(_ text: String) throws -> [Int32] {
        try text.map { c in
            guard let t = index[c] else {
                throw LoomError.invalidArgument("tokenizer: character \(String(reflecting: String(c))) is not in the vocabulary of \(count) characters")
            }
            return t
        }
    }

    /// The token unseen characters are read as: a space when the vocabulary has one (the
    /// least surprising stand-in in running text), else the first token.
    public var unknownToken: Int32 { index[" "] ?? 0 }

    /// Tokens of `text`, reading a character outside the vocabulary as `unknownToken`;
    /// returns how many were (text a model is evaluated on or prompted with may hold
    /// characters its training text did not).
    public func encodeLeniently(_ text: String) -> (tokens: [Int32], unseen: Int) {
        var unseen = 0
        let tokens = text.map { c -> Int32 in
            if let t = index[c] { return t }
            unseen += 1
            return unknownToken
        }
        return (tokens, unseen)
    }

    public func decode(_ tokens: [Int32]) -> String {
        String(tokens.map { vocabulary[Int($0)] })
    }

    /// The vocabulary as one string (how checkpoints store it).
    public var serialized: String { String(vocabulary) }
}

/// A text file split into training and validation token streams.
public struct TextCorpus {
    public let tokenizer: Tokenizer
    public let train: [Int32]
    public let validation: [Int32]
    /// Characters of the validation text (bits per character = nats per token x
    /// validation tokens / this / ln 2).
    public let validationCharacters: Int
    /// Characters of the text outside a given tokenizer's vocabulary, read as its unknown
    /// token (0 when the tokenizer was fitted to this text).
    public let unseenCharacters: Int

    /// The first `1 - validationFraction` of the text's characters train, the rest
    /// validates. Without a `tokenizer`, one of `kind` is fitted: a character vocabulary
    /// to the whole text (so validation has no unknown characters), BPE to the training
    /// part only.
    public init(path: String, validationFraction: Double, tokenizer: Tokenizer? = nil, fit kind: TokenizerKind = .char,
                vocabularySize: Int = 4096) throws {
        let bytes = try readFileBytes(path)
        guard let text = String(validating: bytes, as: UTF8.self), !text.isEmpty else {
            throw LoomError.io("'\(path)': not UTF-8 text, or empty")
        }
        let characters = Array(text)
        let cut = Int(Double(characters.count) * (1 - validationFraction))
        let trainText = String(characters[..<cut]), validationText = String(characters[cut...])
        let tok = try tokenizer ?? Tokenizer.fit(kind, to: kind == .char ? text : trainText, vocabularySize: vocabularySize)
        let (train, unseenTrain) = tok.encodeLeniently(trainText)
        let (validation, unseenValidation) = tok.encodeLeniently(validationText)
        self.tokenizer = tok
        self.train = train
        self.validation = validation
        validationCharacters = characters.count - cut
        unseenCharacters = unseenTrain + unseenValidation
    }
}
