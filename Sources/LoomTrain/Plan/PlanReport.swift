import Foundation
import LoomCore

/// What the planner needs of a config's data, and which products to calibrate.
public enum PlanInput {
    /// The model's input: read from the data when the file is there (a character
    /// vocabulary is the text's); else a BPE config's `data.vocab_size`, or CIFAR's shape
    /// for CIFAR data, so that a model can be planned without its data (GPT-3 on paper).
    public static func of(_ c: TrainConfig) throws -> ModelInput {
        if FileManager.default.fileExists(atPath: c.data) { return try TrainingData(c).input }
        if c.isLanguageModel && c.tokenizer == .bpe && c.tokenizerFile.isEmpty { return .tokens(vocabulary: c.vocabSize) }
        if !c.isLanguageModel, (try? TrainingData.imageFormat(c)) == .cifar { return .images(shape: [3, 32, 32], classes: 10) }
        throw LoomError.io("data '\(c.data)' is missing, and the planner needs it for the model's input "
            + (c.isLanguageModel ? "(its character vocabulary; a BPE config plans from data.vocab_size without the data)" : "(image shape and classes)"))
    }

    /// The products of every layout the search would try on up to `ranks` ranks, forward
    /// and backward (the shapes `loom plan --calibrate CONFIG` times).
    public static func shapes(_ model: ModelCosts, _ c: TrainConfig, ranks: Int) -> Calibration.Shapes {
        var out = Set<GEMMShape>(), ops = Set<AttentionOp>(), kernels = Set<KernelUse>()
        let tps = model.tensorParallel ? Planner.splits(ranks).filter { tp in model.gpt.map { $0.heads % tp == 0 && $0.vocabSize % tp == 0 } ?? true } : [1]
        var b = c.batchSize
        var sizes: [Int] = []
        while b >= 1 { if c.batchSize % b == 0 { sizes.append(b) }; if b == 1 { break }; b /= 2 }
        for tp in tps {
            for b in sizes {
                for p in model.pieces(tp: tp, microBatch: b) {
                    for g in p.gemms { out.insert(g); out.formUnion(g.backward) }
                    out.formUnion(p.attentionGEMMs)
                    if let a = p.attention { ops.insert(a) }
                    kernels.formUnion(p.kernels)
                }
            }
        }
        return Calibration.Shapes(gemms: out, attentions: ops, kernels: kernels)
    }

    /// A typical convolution of the model (its middle block's), for calibration: input and weight shapes.
    public static func convolution(_ model: ModelCosts) -> (x: [Int], w: [Int])? {
        switch model.spec {
        case .resnet, .cnn:
            let (_, h, w, _) = model.image
            let channels = 32
            return ([64, channels, max(h / 2, 4), max(w / 2, 4)], [channels, channels, 3, 3])
        default: return nil
        }
    }
}

/// The text report's rows.
public enum PlanTable {
    public static let header = "  #  layout                          step ms   throughput      peak/rank  (params grads optim activ comm, MiB)   time split"
    public static func row(_ i: Int, _ p: Prediction, unit: String) -> String {
        let m = p.memory, t = p.time
        let mib = { (x: Double) in String(format: "%.1f", x / 1048576) }
        var split = String(format: "fwd+bwd %.1f", t.compute * 1000)
        if t.collectives > 0 { split += String(format: " (collectives %.1f)", t.collectives * 1000) }
        if t.pipelineSends > 0 { split += String(format: " (sends %.1f, bubble %.0f%%)", t.pipelineSends * 1000, t.bubble * 100) }
        if t.dataParallel > 0 { split += String(format: ", dp %.1f", t.dataParallel * 1000) }
        split += String(format: ", update %.1f", t.update * 1000)
        if t.sharing > 0 { split += String(format: ", cores shared %.1f", t.sharing * 1000) }
        return String(format: "%3d  %@ %9.2f  %10.0f %@  %9@  (%@ %@ %@ %@ %@)   %@", i, p.layout.description.padding(toLength: 30, withPad: " ", startingAt: 0),
                      t.total * 1000, p.throughput, unit, MemoryMeter.format(Int(m.total)).components(separatedBy: " (").first!,
                      mib(m.parameters), mib(m.gradients), mib(m.optimizerState), mib(m.activations), mib(m.communication), split)
    }
}

/// One layout of `loom plan --json`.
public struct PlanJSON: Encodable {
    var layout: String, command: String, fits: Bool
    var stepMs: Double, throughput: Double, tflopsPerRank: Double
    var peakBytes: Int, memory: [String: Int], time: [String: Double]

    public init(_ p: Prediction, fits: Bool, config: String) {
        layout = p.layout.description
        command = "loom train \(config) \(p.layout.flags)"
        self.fits = fits
        stepMs = p.time.total * 1000
        throughput = p.throughput
        tflopsPerRank = p.modelFlopsPerRank / 1e12
        peakBytes = Int(p.memory.total)
        memory = Dictionary(uniqueKeysWithValues: p.memory.named.map { ($0.0, Int($0.1)) })
        time = ["compute_ms": p.time.compute * 1000, "collectives_ms": p.time.collectives * 1000,
                "pipeline_sends_ms": p.time.pipelineSends * 1000, "bubble": p.time.bubble, "data_parallel_ms": p.time.dataParallel * 1000,
                "update_ms": p.time.update * 1000, "cores_shared_ms": p.time.sharing * 1000]
    }
    enum CodingKeys: String, CodingKey {
        case layout, command, fits, stepMs = "step_ms", throughput, tflopsPerRank = "tflops_per_rank", peakBytes = "peak_bytes", memory, time
    }
    public var json: String { JSONOutput.string(self) }
}
