import Foundation
import LoomCore
import LoomData
import LoomNN

/// GPT-2 as Hugging Face saves it (`GPT2LMHeadModel.save_pretrained`: model.safetensors
/// and config.json; the tokenizer's vocab.json and merges.txt), to and from Loom.
///
/// The architectures are the same: learned positions, pre-LayerNorm blocks (epsilon
/// 1e-5), tanh-GELU ("gelu_new"), attention scaled by 1/sqrt(head size), a final norm and
/// a head tied to the token table. Hugging Face keeps the block's matrices as Conv1D
/// weights, [in, out]; Loom's linear weights are [out, in], so each is transposed.
public enum HuggingFaceGPT2 {
    /// The fields of config.json that define the model.
    public struct Config: Codable, Equatable {
        public var vocab_size: Int
        public var n_positions: Int
        public var n_embd: Int
        public var n_layer: Int
        public var n_head: Int
        public var n_inner: Int?
        public var activation_function: String?
        public var layer_norm_epsilon: Double?
        public var scale_attn_weights: Bool?
        public var scale_attn_by_inverse_layer_idx: Bool?
        public var tie_word_embeddings: Bool?
        public var model_type: String?
        public var architectures: [String]?
        public var bos_token_id: Int?
        public var eos_token_id: Int?

        public var gpt: GPTConfig {
            GPTConfig(vocabSize: vocab_size, contextLength: n_positions, layers: n_layer, dModel: n_embd, heads: n_head)
        }

        /// Throws unless Loom's GPT computes this model exactly.
        func check(_ path: String) throws {
            func refuse(_ what: String) -> LoomError { LoomError.config("'\(path)': \(what); Loom's GPT is GPT-2's architecture as released") }
            if let a = activation_function, !["gelu_new", "gelu_pytorch_tanh"].contains(a) { throw refuse("activation_function \(a), not gelu_new (tanh GELU)") }
            if let e = layer_norm_epsilon, abs(e - 1e-5) > 1e-12 { throw refuse("layer_norm_epsilon \(e), not 1e-05") }
            if let n = n_inner, n != 4 * n_embd { throw refuse("n_inner \(n), not 4 x n_embd = \(4 * n_embd)") }
            if scale_attn_weights == false { throw refuse("scale_attn_weights false") }
            if scale_attn_by_inverse_layer_idx == true { throw refuse("scale_attn_by_inverse_layer_idx true") }
            if tie_word_embeddings == false { throw refuse("an untied output head (tie_word_embeddings false)") }
            guard n_embd % n_head == 0 else { throw refuse("n_embd \(n_embd) not divisible by n_head \(n_head)") }
        }

        /// `endOfText`: the id of GPT-2's `<|endoftext|>`, when the vocabulary has it.
        static func from(_ c: GPTConfig, endOfText: Int?) -> Config {
            Config(vocab_size: c.vocabSize, n_positions: c.contextLength, n_embd: c.dModel, n_layer: c.layers, n_head: c.heads,
                   n_inner: nil, activation_function: "gelu_new", layer_norm_epsilon: 1e-5, scale_attn_weights: true,
                   scale_attn_by_inverse_layer_idx: false, tie_word_embeddings: true, model_type: "gpt2", architectures: ["GPT2LMHeadModel"],
                   bos_token_id: endOfText, eos_token_id: endOfText)
        }
    }

    /// Each Loom parameter's Hugging Face name (without the optional `transformer.`
    /// prefix), and whether it is a Conv1D weight (stored transposed).
    static func names(layers: Int) -> [(loom: String, hf: String, conv1D: Bool)] {
        var out: [(String, String, Bool)] = [("wte.weight", "wte.weight", false), ("wpe.weight", "wpe.weight", false)]
        for i in 0..<layers {
            let b = "blocks.\(i).", h = "h.\(i)."
            out += [(b + "ln1.weight", h + "ln_1.weight", false), (b + "ln1.bias", h + "ln_1.bias", false),
                    (b + "attention.qkv.weight", h + "attn.c_attn.weight", true), (b + "attention.qkv.bias", h + "attn.c_attn.bias", false),
                    (b + "attention.proj.weight", h + "attn.c_proj.weight", true), (b + "attention.proj.bias", h + "attn.c_proj.bias", false),
                    (b + "ln2.weight", h + "ln_2.weight", false), (b + "ln2.bias", h + "ln_2.bias", false),
                    (b + "mlp.fc.weight", h + "mlp.c_fc.weight", true), (b + "mlp.fc.bias", h + "mlp.c_fc.bias", false),
                    (b + "mlp.proj.weight", h + "mlp.c_proj.weight", true), (b + "mlp.proj.bias", h + "mlp.c_proj.bias", false)]
        }
        out += [("lnf.weight", "ln_f.weight", false), ("lnf.bias", "ln_f.bias", false)]
        return out
    }

    // MARK: Import

    /// A GPT-2 directory (config.json, model.safetensors, and vocab.json + merges.txt when
    /// present) as a Loom GPT and, if its files are there, GPT-2's tokenizer.
    public static func load(directory: String) throws -> (GPT, Tokenizer?) {
        let configPath = directory + "/config.json"
        let config: Config
        do { config = try JSONDecoder().decode(Config.self, from: Data(readFileBytes(configPath))) } catch let e as LoomError { throw e } catch {
            throw LoomError.io("'\(configPath)': not a GPT-2 config.json (\(error))")
        }
        try config.check(configPath)
        let weightsPath = directory + "/model.safetensors"
        let file = try SafeTensors.read(weightsPath, foreign: true)
        let model = try GPT(config.gpt, seed: 0)
        let params = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.name, $0.tensor) })
        for (loom, hf, conv1D) in names(layers: config.n_layer) {
            guard let t = params[loom] else { throw LoomError.invalidArgument("gpt2 import: Loom's GPT has no \(loom)") }
            guard let e = file.entries["transformer." + hf] ?? file.entries[hf] else {
                throw LoomError.io("'\(weightsPath)': no tensor \(hf) (or transformer.\(hf)), which GPT-2's \(config.n_layer) layers need")
            }
            let want = conv1D ? [t.shape[1], t.shape[0]] : t.shape
            guard e.shape == want, e.dtype == .float32 || e.dtype == .bfloat16 || e.dtype == .float16 else {
                throw LoomError.shapeMismatch("'\(weightsPath)': \(hf) is \(describe(e.shape)) \(e.dtype), want \(describe(want)) float")
            }
            var stored = try Tensor(uninitialized: e.shape, dtype: e.dtype)
            withExtendedLifetime(file) { stored.backend.upload(file.bytes(e), to: stored) }
            stored = try withoutGrad { try stored.cast(to: .float32) }
            let value = conv1D ? try withoutGrad { try stored.transposed() } : stored
            t.backend.copy(value, into: t)
        }
        var tokenizer: Tokenizer?
        if FileManager.default.fileExists(atPath: directory + "/vocab.json") {
            tokenizer = .bytePairs(try gpt2Tokenizer(vocab: directory + "/vocab.json", merges: directory + "/merges.txt"))
            if tokenizer!.count != config.vocab_size {
                throw LoomError.config("'\(directory)': the tokenizer has \(tokenizer!.count) tokens, the model \(config.vocab_size) (vocab_size)")
            }
        }
        return (model, tokenizer)
    }

    /// GPT-2's byte-to-character table: printable bytes stand for themselves, the others
    /// for the characters from U+0100 up, so that every token is printable text.
    static let byteCharacters: [Character] = {
        var bytes = Array(33...126) + Array(161...172) + Array(174...255)
        var chars = bytes
        var n = 0
        for b in 0..<256 where !bytes.contains(b) { bytes.append(b); chars.append(256 + n); n += 1 }
        var table = [Character](repeating: " ", count: 256)
        for (b, c) in zip(bytes, chars) { table[b] = Character(Unicode.Scalar(UInt32(c))!) }
        return table
    }()

    /// vocab.json (token text -> id) and merges.txt ("left right" per line, by rank).
    public static func gpt2Tokenizer(vocab vocabPath: String, merges mergesPath: String) throws -> BPETokenizer {
        let vocab: [String: Int]
        do { vocab = try JSONDecoder().decode([String: Int].self, from: Data(readFileBytes(vocabPath))) } catch let e as LoomError { throw e } catch {
            throw LoomError.io("'\(vocabPath)': not a vocab.json of token -> id (\(error))")
        }
        var byteOf: [Character: UInt8] = [:]
        for (b, c) in byteCharacters.enumerated() { byteOf[c] = UInt8(b) }
        var tokenBytes = [[UInt8]?](repeating: nil, count: vocab.count)
        for (text, id) in vocab {
            guard id >= 0 && id < vocab.count, tokenBytes[id] == nil else {
                throw LoomError.io("'\(vocabPath)': token id \(id) of \(String(reflecting: text)) is repeated or outside 0..<\(vocab.count)")
            }
            // Byte-level tokens map back through the table; added tokens (<|endoftext|>) are their own text.
            let mapped = text.map { byteOf[$0] }
            tokenBytes[id] = mapped.contains(nil) ? Array(text.utf8) : mapped.map { $0! }
        }
        guard let mergesText = String(validating: try readFileBytes(mergesPath), as: UTF8.self) else {
            throw LoomError.io("'\(mergesPath)': not UTF-8 text")
        }
        var merges: [BPETokenizer.Merge] = []
        for (n, line) in mergesText.split(separator: "\n", omittingEmptySubsequences: true).enumerated() where !line.hasPrefix("#version") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let l = vocab[String(parts[0])], let r = vocab[String(parts[1])], let m = vocab[String(parts[0] + parts[1])] else {
                throw LoomError.io("'\(mergesPath)': line \(n + 1) (\(line.prefix(40))) is not two tokens of vocab.json whose join is one too")
            }
            merges.append(.init(left: Int32(l), right: Int32(r), result: Int32(m)))
        }
        return try BPETokenizer(tokenBytes: tokenBytes.map { $0! }, merges: merges)
    }

    // MARK: Export

    /// The files an export writes.
    static let exportFiles = ["model.safetensors", "config.json", "vocab.json", "merges.txt"]

    /// Writes `model` as GPT2LMHeadModel would save it (model.safetensors, config.json) and,
    /// for a BPE tokenizer, vocab.json and merges.txt in GPT-2's notation. The directory
    /// appears whole or not at all (`AtomicFile.writeDirectory`); an existing one is
    /// replaced only if it holds nothing but a previous export's files.
    public static func save(_ model: GPT, tokenizer: Tokenizer?, to directory: String) throws {
        let others = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { !exportFiles.contains($0) }
        guard others.isEmpty else {
            throw LoomError.io("'\(directory)' holds other files (\(others.sorted().prefix(5).joined(separator: ", "))): export into a new directory, or one holding only a previous export")
        }
        let params = Dictionary(uniqueKeysWithValues: model.namedParameters().map { ($0.name, $0.tensor) })
        let tensors = try names(layers: model.config.layers).map { loom, hf, conv1D -> (name: String, tensor: Tensor) in
            let t = try params[loom].map { try $0.to(.cpu) }.orThrow(LoomError.invalidArgument("gpt2 export: the model has no \(loom)"))
            return ("transformer." + hf, conv1D ? try withoutGrad { try t.transposed() } : t)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        var endOfText: Int?
        if case .bytePairs(let bpe) = tokenizer { endOfText = bpe.tokenBytes.firstIndex(of: Array("<|endoftext|>".utf8)) }
        let config = Array(try encoder.encode(Config.from(model.config, endOfText: endOfText)))
        try AtomicFile.writeDirectory(directory) { staging in
            try SafeTensors.write(tensors, metadata: ["format": "pt"], to: staging + "/model.safetensors")
            try AtomicFile.write(config, to: staging + "/config.json")
            guard case .bytePairs(let bpe) = tokenizer else { return }
            func text(_ id: Int32) -> String { String(bpe.tokenBytes[Int(id)].map { byteCharacters[Int($0)] }) }
            var vocab: [String: Int] = [:]
            for id in 0..<bpe.count { vocab[text(Int32(id))] = id }
            try AtomicFile.write(Array(try encoder.encode(vocab)), to: staging + "/vocab.json")
            try AtomicFile.write("#version: 0.2\n" + bpe.merges.map { text($0.left) + " " + text($0.right) + "\n" }.joined(), to: staging + "/merges.txt")
        }
    }
}

extension Optional {
    func orThrow(_ error: @autoclosure () -> Error) throws -> Wrapped {
        guard let self else { throw error() }
        return self
    }
}
