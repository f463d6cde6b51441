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
        Generation runs over a KV cache: the prompt once, then one position per new token. Several \
        --prompt options run as one batch (left-padded). --no-cache recomputes the whole window for \
        every token instead (the same tokens while the text fits the context).

        Examples:
          loom generate --checkpoint runs/shakespeare-gpt --prompt "ROMEO:" --tokens 300 --temperature 0.8 --top-k 40
          loom generate --checkpoint runs/shakespeare-gpt --prompt "ROMEO:" --prompt "JULIET:" --top-p 0.9 --stop "\\n\\n"
        """
    )

    @Option(help: "A run directory or a checkpoint.safetensors file of a gpt run.")
    var checkpoint: String
    @Option(help: "Text to continue; repeat it for a batch of prompts.")
    var prompt: [String] = []
    @Option(help: "Tokens (characters) to generate per prompt.")
    var tokens: Int = 300
    @Option(help: "Sampling temperature (> 0; lower is more conservative).")
    var temperature: Float = 0.8
    @Option(name: .customLong("top-k"), help: "Sample among the k most likely tokens (0: all).")
    var topK: Int = 40
    @Option(name: .customLong("top-p"), help: "Then among the smallest set of most likely tokens whose probability reaches p (1: all).")
    var topP: Float = 1
    @Option(help: "Stop a prompt's text at the first occurrence of this string (not printed). \\n is a newline.")
    var stop: String?
    @Flag(name: .customLong("no-cache"), help: "Recompute the whole window for every token instead of using the KV cache.")
    var noCache = false
    @Option(help: "Sampling seed (prompt r of a batch uses seed + r).")
    var seed: UInt64 = 0

    @OptionGroup var deviceOptions: DeviceOptions

    func validate() throws {
        guard tokens >= 0 else { throw ValidationError("--tokens \(tokens): the number of tokens to generate must be >= 0") }
        guard temperature > 0, temperature.isFinite else { throw ValidationError("--temperature \(temperature) must be a finite number > 0") }
        guard topK >= 0 else { throw ValidationError("--top-k \(topK) must be >= 0 (0: all)") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p \(topP) must be in (0, 1]") }
    }

    func run() throws {
        try runReportingErrors {
            let backend = try deviceOptions.backend()
            let (gpt, tokenizer, _) = try TrainingCheckpoint.loadGPT(checkpoint, for: "generate")
            try gpt.to(backend)
            let prompts = prompt.isEmpty ? ["\n"] : prompt
            let unseen = prompts.map { tokenizer.encodeLeniently($0).unseen }.reduce(0, +)
            if unseen > 0 {
                FileHandle.standardError.write("loom: note: \(unseen) characters of the prompt are not in the model's vocabulary; read as \(tokenizer.unknownDescription)\n".data(using: .utf8)!)
            }
            let texts = try Generation.generate(model: gpt, tokenizer: tokenizer, prompts: prompts, tokens: tokens,
                                                sampling: Sampling(temperature: temperature, topK: topK, topP: topP, seed: seed),
                                                stop: stop.map { $0.replacingOccurrences(of: "\\n", with: "\n") }, cache: !noCache)
            for (i, (p, text)) in zip(prompts, texts).enumerated() {
                if i > 0 { print("----") }
                print(p + text)
            }
        }
    }
}
