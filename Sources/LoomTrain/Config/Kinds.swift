import LoomParallel

// The configuration's choices, each an enum with one list of valid values that the TOML
// reader, the command-line parser (`ExpressibleByArgument` in the loom tool) and every
// message listing valid values share. Raw values are what users write.

/// The model a run trains.
public enum ModelKind: String, CaseIterable, Sendable {
    case cnn, mlp, gpt

    /// Next-token prediction on text (tokens/s, no accuracy), as opposed to image classification.
    public var isLanguageModel: Bool { self == .gpt }
    /// The built-in configuration a bare `--model` starts from.
    public var preset: String {
        switch self {
        case .cnn: return "mnist-cnn"
        case .mlp: return "mnist-mlp"
        case .gpt: return "shakespeare-gpt"
        }
    }
}

/// The optimizer: PyTorch's SGD (momentum, Nesterov, L2 decay), Adam, AdamW.
public enum OptimizerKind: String, CaseIterable, Sendable {
    case sgd, adam, adamw
}

/// The learning-rate schedule: constant, or linear warm-up then cosine decay.
public enum LRScheduleKind: String, CaseIterable, Sendable {
    case constant, cosine
}

extension CaseIterable where Self: RawRepresentable, RawValue == String {
    /// `"cnn", "mlp", "gpt"`: the valid values, as messages list them.
    public static var validValues: String { allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ") }
}
