import Foundation
import LoomCore
import LoomData

/// What a model is fed: images of a shape with labels among some classes, or tokens of a
/// vocabulary. The data side tells it; the model side builds for it.
public enum ModelInput: Equatable, Sendable {
    /// One example is [C, H, W] (or [features] for flat rows).
    case images(shape: [Int], classes: Int)
    case tokens(vocabulary: Int)
}

/// The data side of a run, as a configuration describes it: the file read and split
/// into training and validation, normalised, augmented, or tokenized into windows.
public struct TrainingData {
    /// The seed of the train/validation split of image data (fixed: the split does not
    /// change with the training seed).
    public static let splitSeed: UInt64 = 0x5EED
    public let train: any Dataset
    public let validation: any Dataset
    public let input: ModelInput
    public let tokenizer: Tokenizer?
    /// Characters of the text that a saved tokenizer had never seen, read as its unknown
    /// token (resuming or evaluating on other text); said once by the commands.
    public let unseenCharacters: Int
    /// Language models: validation tokens per validation character over ln 2, so that
    /// bits per character = validation loss (nats per token) x this.
    public let bitsPerCharacterPerNat: Double?
    /// Images other than MNIST's: the per-channel normalisation applied (saved in checkpoints).
    public let normalization: ChannelNormalization?

    /// `tokenizer`, `normalization`: what a checkpoint's run used (so resumed and
    /// evaluated runs read the data as the original run did).
    public init(_ c: TrainConfig, tokenizer saved: Tokenizer? = nil, normalization savedNormalization: ChannelNormalization? = nil) throws {
        if c.isLanguageModel {
            let file = saved == nil && !c.tokenizerFile.isEmpty ? try Tokenizer.load(c.tokenizerFile) : nil
            let corpus = try TextCorpus(path: c.data, validationFraction: c.validationFraction, tokenizer: saved ?? file, fit: c.tokenizer,
                                        vocabularySize: c.vocabSize)
            tokenizer = corpus.tokenizer
            unseenCharacters = corpus.unseenCharacters
            bitsPerCharacterPerNat = Double(corpus.validation.count) / Double(max(corpus.validationCharacters, 1)) / 0.6931471805599453  // ln 2
            normalization = nil
            train = TokenWindows(tokens: corpus.train, context: c.context)
            validation = TokenWindows(tokens: corpus.validation, context: c.context)
            input = .tokens(vocabulary: corpus.tokenizer.count)
            // A window is context + 1 tokens (inputs and the targets one further).
            for (part, tokens, windows) in [("training", corpus.train.count, train.count), ("validation", corpus.validation.count, validation.count)]
            where windows == 0 {
                throw LoomError.config("'\(c.data)': the \(part) split has \(tokens) tokens, fewer than one window of model.context + 1 = "
                    + "\(c.context + 1); use a longer text, a smaller model.context or another data.validation_fraction (\(c.validationFraction))")
            }
            return
        }
        let format = try TrainingData.imageFormat(c)
        let loaded: ImageDataset
        switch format {
        case .csv: loaded = try MNIST.loadCSV(c.data)
        case .idx: loaded = try MNIST.loadIDX(images: c.data, labels: c.labels)
        case .cifar: loaded = try ImageFiles.loadCIFAR(c.data)
        case .numpy: loaded = try ImageFiles.loadNumPy(c.data, labels: c.labels)
        case .png, .auto: loaded = try ImageFiles.loadPNGFolder(c.data).0
        }
        // Rows are shuffled once, with a fixed seed, before the split: files are often
        // sorted by label (the bundled MNIST subset is), and a split of sorted rows
        // would validate on classes the model never trained on.
        var splitRNG = Philox(seed: TrainingData.splitSeed)
        let all = loaded.reordered(splitRNG.permutation(loaded.count))
        let cut = all.count - Int(Double(all.count) * c.validationFraction)
        guard cut > 0 && cut < all.count else {
            throw LoomError.config("data.validation_fraction \(c.validationFraction) leaves no training or no validation rows of \(all.count)")
        }
        tokenizer = nil
        unseenCharacters = 0
        bitsPerCharacterPerNat = nil
        input = .images(shape: all.shape, classes: all.classes)
        var train = all.subset(0..<cut), validation = all.subset(cut..<all.count)
        // MNIST's readers normalise with MNIST's statistics; other images with the
        // training split's per-channel statistics, kept in the checkpoint.
        if format == .csv || format == .idx {
            normalization = nil
        } else {
            let stats = savedNormalization ?? ChannelNormalization(of: train)
            train = stats.apply(train); validation = stats.apply(validation)
            normalization = stats
        }
        self.train = c.cropPadding > 0 || c.flip ? AugmentedImages(train, cropPadding: c.cropPadding, flip: c.flip, seed: UInt64(c.seed)) : train
        self.validation = validation
    }

    /// The image format `c` names or its path implies (`data.format = "auto"`).
    public static func imageFormat(_ c: TrainConfig) throws -> ImageFormat {
        guard c.format == .auto else { return c.format }
        let path = c.data
        if path.hasSuffix(".npz") || path.hasSuffix(".npy") { return .numpy }
        if !c.labels.isEmpty { return .idx }
        if path.hasSuffix(".bin") { return .cifar }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            return names.contains { $0.hasPrefix("data_batch_") || $0 == "train.bin" } ? .cifar : .png
        }
        return .csv
    }
}
