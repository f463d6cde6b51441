import ArgumentParser
import Foundation
import LoomCore
import LoomData
import LoomNN
import LoomTrain

struct GPT2Command: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gpt2",
        abstract: "Import a GPT-2 checkpoint in Hugging Face's layout, or export a Loom GPT to it.",
        discussion: """
        A GPT-2 directory is what GPT2LMHeadModel.save_pretrained writes (model.safetensors and \
        config.json) with the tokenizer's vocab.json and merges.txt beside them. Loom downloads \
        nothing: give it the files.

        Examples:
          loom gpt2 import ~/models/gpt2 --out runs/gpt2
          loom generate --checkpoint runs/gpt2 --prompt "Hello, my name is" --tokens 40
          loom train --init runs/gpt2 --data my.txt --steps 200 --lr 1e-4 --name gpt2-tuned
          loom gpt2 export --checkpoint runs/gpt2-tuned --out ~/models/gpt2-tuned
        """,
        subcommands: [Import.self, Export.self]
    )

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "import", abstract: "A GPT-2 directory into a Loom checkpoint (model and tokenizer).")

        @Argument(help: "The directory with config.json, model.safetensors, vocab.json and merges.txt.")
        var directory: String
        @Option(help: "The run directory to write (its checkpoint.safetensors).")
        var out: String
        @Option(help: "The text the checkpoint's configuration names for later fine-tuning (data.path).")
        var data: String = "data/shakespeare.txt"

        func run() throws {
            try runReportingErrors {
                let (model, tokenizer) = try HuggingFaceGPT2.load(directory: directory)
                var c = try TrainConfig.preset("shakespeare-gpt")
                c.layers = model.config.layers; c.dModel = model.config.dModel; c.heads = model.config.heads
                c.context = model.config.contextLength; c.data = data; c.name = URL(fileURLWithPath: out).lastPathComponent
                if tokenizer == nil {
                    FileHandle.standardError.write("loom: note: no vocab.json in '\(directory)': the checkpoint has no tokenizer, so generate and train need one\n".data(using: .utf8)!)
                }
                try TrainingCheckpoint.saveModel(model, config: c, tokenizer: tokenizer, to: out)
                let parameters = model.namedParameters().reduce(0) { $0 + $1.tensor.count }
                print("imported GPT-2: \(model.config.layers) layers, d_model \(model.config.dModel), \(model.config.heads) heads, "
                      + "context \(model.config.contextLength), vocabulary \(model.config.vocabSize), \(parameters) parameters -> \(out)/")
            }
        }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "export", abstract: "A Loom GPT checkpoint as a GPT-2 directory for transformers.")

        @Option(help: "A run directory or checkpoint.safetensors of a gpt run.")
        var checkpoint: String
        @Option(help: "The directory to write.")
        var out: String

        func run() throws {
            try runReportingErrors {
                let (gpt, tokenizer, _) = try TrainingCheckpoint.loadGPT(checkpoint, for: "gpt2 export")
                try HuggingFaceGPT2.save(gpt, tokenizer: tokenizer, to: out)
                var files = "model.safetensors, config.json"
                if case .bytePairs = tokenizer {
                    files += ", vocab.json, merges.txt"
                } else {
                    FileHandle.standardError.write("loom: note: a character-level tokenizer has no GPT-2 form: wrote the model only\n".data(using: .utf8)!)
                }
                print("exported -> \(out)/ (\(files))")
            }
        }
    }
}
