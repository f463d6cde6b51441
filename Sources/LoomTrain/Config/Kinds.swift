import LoomParallel

// The configuration's choices, each an enum with one list of valid values that the TOML
// reader, the command-line parser (`ExpressibleByArgument` in the loom tool) and every
// message listing valid values share. Raw values are what users write.

/// The model a run trains.
public enum ModelKind: String, CaseIterable, Sendable {
    case cnn, mlp, gpt, resnet

    /// Next-token prediction on text (tokens/s, no accuracy), as opposed to image classification.
    public var isLanguageModel: Bool { self == .gpt }
    /// The built-in configuration a bare `--model` starts from.
    public var preset: String {
        switch self {
        case .cnn: return "mnist-cnn"
        case .mlp: return "mnist-mlp"
        case .gpt: return "shakespeare-gpt"
        case .resnet: return "cifar-resnet20"
        }
    }
}

/// The optimizer: PyTorch's SGD (momentum, Nesterov, L2 decay), Adam, AdamW.
public enum OptimizerKind: String, CaseIterable, Sendable {
    case sgd, adam, adamw
}

/// What a step whose gradient is not finite (inf or NaN) does: `stop` ends the run before
/// the update, naming the step and the first parameter affected, keeping the last good
/// checkpoint; `skip` leaves the parameters as they were and counts the step, as a
/// mixed-precision loss scaler does.
public enum NonFiniteAction: String, CaseIterable, Sendable {
    case stop, skip
}

/// How image data is stored (`data.format`); `auto` tells by the path.
public enum ImageFormat: String, CaseIterable, Sendable {
    /// .csv(.gz) → csv; with data.labels → idx (numpy for .npy); .npy/.npz → numpy; a
    /// directory of data_batch_*.bin or train.bin, or a .bin → cifar; another directory → png.
    case auto
    /// MNIST CSV: the label in the last column, 784 pixels.
    case csv
    /// IDX images and labels files (MNIST's own format).
    case idx
    /// CIFAR-10/100 binary batches.
    case cifar
    /// NumPy .npy (with data.labels) or .npz.
    case numpy
    /// A folder of class folders of PNG images.
    case png
}

/// The learning-rate schedule: constant, or linear warm-up then cosine decay.
public enum LRScheduleKind: String, CaseIterable, Sendable {
    case constant, cosine
}

extension CaseIterable where Self: RawRepresentable, RawValue == String {
    /// `"cnn", "mlp", "gpt"`: the valid values, as messages list them.
    public static var validValues: String { allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ") }
}
