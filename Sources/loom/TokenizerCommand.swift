import ArgumentParser
import Foundation
import LoomCore
import LoomData
import LoomTrain

struct TokenizerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenizer",
        abstract: "Train a byte-level BPE tokenizer on a text file.",
        subcommands: [Train.self]
    )

    struct Train: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "train",
            abstract: "Learn BPE merges from a text (GPT-2's byte-level scheme) and write them as a tokenizer file.",
            discussion: """
            A run uses the file with data.tokenizer_file = "tokenizer.json" (or fits its own with \
            data.tokenizer = "bpe" and data.vocab_size); the tokenizer is saved in the checkpoint.

            Example:
              loom tokenizer train --vocab 4096 data/shakespeare.txt --out shakespeare-4096.json
            """
        )

        @Argument(help: "A UTF-8 text file.")
        var file: String
        @Option(help: "Tokens in the vocabulary, the 256 bytes included.")
        var vocab: Int = 4096
        @Option(help: "Where to write the tokenizer (JSON).")
        var out: String = "tokenizer.json"

        func validate() throws {
            guard vocab >= 256 else { throw ValidationError("--vocab \(vocab) must be at least 256 (the byte tokens)") }
        }

        func run() throws {
            try runReportingErrors {
                let bytes = try readFileBytes(resolveDataPath(file))
                guard let text = String(validating: bytes, as: UTF8.self) else { throw LoomError.io("'\(file)': not UTF-8 text") }
                let start = monotonicSeconds()
                let bpe = try BPETokenizer.train(text, vocabularySize: vocab)
                let tokenizer = Tokenizer.bytePairs(bpe)
                let seconds = monotonicSeconds() - start
                let tokens = tokenizer.encodeLeniently(text).tokens.count
                try AtomicFile.write(tokenizer.serialized, to: out)
                print(String(format: "%d tokens (%d merges) learned from %d characters in %.2f s; the text is %d tokens, %.2f characters per token -> %@",
                             tokenizer.count, bpe.merges.count, text.count, seconds, tokens, Double(text.count) / Double(max(tokens, 1)), out))
            }
        }
    }
}
