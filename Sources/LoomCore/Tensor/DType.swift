/// Element types Loom stores. Float32 for values; Int32 for labels, tokens and indices.
public enum DType: String, Sendable, Codable {
    case float32 = "F32"
    case int32 = "I32"

    public var byteSize: Int { 4 }
}

/// Where a tensor's storage lives.
public enum Device: Equatable, Hashable, Sendable, CustomStringConvertible {
    case cpu
    case cuda(Int)

    public var description: String {
        switch self {
        case .cpu: return "cpu"
        case .cuda(let i): return "cuda:\(i)"
        }
    }
}
