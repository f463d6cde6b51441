/// Element types Loom stores. Float32 for values (the default, and what every kernel
/// computes in); bfloat16 and float16 as storage types (casts to and from float32);
/// int32 for labels, tokens and indices. Raw values are the safetensors dtype names.
public enum DType: String, Sendable, Codable, CaseIterable {
    case float32 = "F32"
    case bfloat16 = "BF16"
    case float16 = "F16"
    case int32 = "I32"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .float32, .int32: return 4
        case .bfloat16, .float16: return 2
        }
    }

    /// Whether values are floating point (what `cast` converts between).
    public var isFloatingPoint: Bool { self != .int32 }

    /// The name users write (`--precision bf16`, error messages).
    public var name: String {
        switch self {
        case .float32: return "float32"
        case .bfloat16: return "bfloat16"
        case .float16: return "float16"
        case .int32: return "int32"
        }
    }
}

extension DType: CustomStringConvertible {
    public var description: String { name }
}

/// Where a tensor's storage lives.
///
/// `isolated` is memory the host cannot read except through a backend's upload and
/// download (`IsolatedBackend`): the stand-in for an accelerator that proves, without
/// one, that nothing above the backend seam dereferences tensor memory.
public enum Device: Equatable, Hashable, Sendable, CustomStringConvertible {
    case cpu
    case cuda(Int)
    case isolated(Int)
    /// A device of a PJRT plugin (XLA:CPU, or any other plugin): LoomXLA's lazy backend.
    case xla(Int)
    /// A TPU chip, through libtpu's PJRT plugin: LoomXLA's lazy backend.
    case tpu(Int)

    /// Whether the host can address this device's memory directly.
    public var isHost: Bool { self == .cpu }

    public var description: String {
        switch self {
        case .cpu: return "cpu"
        case .cuda(let i): return "cuda:\(i)"
        case .isolated(let i): return "isolated:\(i)"
        case .xla(let i): return "xla:\(i)"
        case .tpu(let i): return "tpu:\(i)"
        }
    }
}
