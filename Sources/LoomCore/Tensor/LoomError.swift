/// Every error Loom raises. Messages are one line and name the shapes, keys or paths
/// involved, so that a user can act on them without a debugger.
public enum LoomError: Error, CustomStringConvertible, Equatable {
    /// An operation got operands whose shapes do not fit: `matmul: [32, 784] x [512, 10]: ...`.
    case shapeMismatch(String)
    /// An argument out of its valid range (axis, index, probability, ...).
    case invalidArgument(String)
    /// Tensors on different devices or of a dtype the operation does not take.
    case deviceMismatch(String)
    /// A file that is missing, unreadable or malformed.
    case io(String)
    /// A configuration key or value that is not valid.
    case config(String)
    /// Anything the autodiff engine cannot do (backward from a non-scalar without a seed, ...).
    case autodiff(String)
    /// A backend (CUDA, MPI) call that failed.
    case backend(String)
    /// An allocation over a rank's memory budget (`LOOM_MEMORY_LIMIT`) or its device's memory.
    case outOfMemory(String)

    public var description: String {
        switch self {
        case .shapeMismatch(let m): return "shape mismatch: \(m)"
        case .invalidArgument(let m): return "invalid argument: \(m)"
        case .deviceMismatch(let m): return "device mismatch: \(m)"
        case .io(let m): return m
        case .config(let m): return "config: \(m)"
        case .autodiff(let m): return "autodiff: \(m)"
        case .backend(let m): return "backend: \(m)"
        case .outOfMemory(let m): return "out of memory: \(m)"
        }
    }
}

/// `[32, 784]`, the way shapes are written in every message.
@inlinable
public func describe(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ", ") + "]" }
