import ArgumentParser
import Foundation
import LoomCore
import LoomNN
import LoomTrain

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate text from a trained GPT checkpoint.",
        discussion: """
        Examples:
          loom generate --checkpoint runs/shakespeare-gpt --prompt "ROMEO:" --tokens 300 --temperature 0.8 --top-k 40
        """
    )

    @Option(help: "A run directory or a checkpoint.safetensors file of a gpt run.")
    var checkpoint: String
    @Option(help: "Text to continue.")
    var prompt: String = "\n"
    @Option(help: "Characters to generate.")
    var tokens: Int = 300
    @Option(help: "Sampling temperature (> 0; lower is more conservative).")
    var temperature: Float = 0.8
    @Option(name: .customLong("top-k"), help: "Sample among the k most likely characters (0: all).")
    var topK: Int = 40
    @Option(help: "Sampling seed.")
    var seed: UInt64 = 0

    @OptionGroup var deviceOptions: DeviceOptions

    func validate() throws {
        guard tokens >= 0 else { throw ValidationError("--tokens \(tokens): the number of characters to generate must be >= 0") }
        guard temperature > 0, temperature.isFinite else { throw ValidationError("--temperature \(temperature) must be a finite number > 0") }
        guard topK >= 0 else { throw ValidationError("--top-k \(topK) must be >= 0 (0: all)") }
    }

    func run() throws {
        try runReportingErrors {
            let backend = try deviceOptions.backend()
            let (file, c, tokenizer) = try TrainingCheckpoint.peek(checkpoint)
            guard c.isLanguageModel, let tokenizer else {
                throw LoomError.config("checkpoint '\(checkpoint)' is a \(c.model) model; generate needs a gpt checkpoint")
            }
            let gpt = try GPT(GPTConfig(vocabSize: tokenizer.count, contextLength: c.context, layers: c.layers, dModel: c.dModel,
                                        heads: c.heads, dropout: Float(c.dropout)), seed: 0)
            try TrainingCheckpoint.restoreModel(file, path: checkpoint, into: gpt)
            try gpt.to(backend)
            let unseen = tokenizer.encodeLeniently(prompt).unseen
            if unseen > 0 {
                FileHandle.standardError.write("loom: note: \(unseen) characters of the prompt are not in the model's vocabulary; read as \(String(reflecting: String(tokenizer.vocabulary[Int(tokenizer.unknownToken)])))\n".data(using: .utf8)!)
            }
            let text = try Generation.sample(model: gpt, tokenizer: tokenizer, prompt: prompt, tokens: tokens,
                                             temperature: temperature, topK: topK, seed: seed)
            print(prompt + text)
        }
    }
}
