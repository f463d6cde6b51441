import LoomCore

/// Learning rate as a function of the step (0-based).
public enum LRSchedule: Equatable, Sendable {
    case constant(Float)
    /// Linear warm-up from 0 to `peak` over `warmup` steps, then cosine decay to `minimum`
    /// at `total` steps (held there after).
    case warmupCosine(peak: Float, warmup: Int, total: Int, minimum: Float)

    public func learningRate(at step: Int) -> Float {
        switch self {
        case .constant(let lr):
            return lr
        case let .warmupCosine(peak, warmup, total, minimum):
            if step < warmup { return peak * Float(step + 1) / Float(warmup) }
            if step >= total { return minimum }
            let progress = Float(step - warmup) / Float(Swift.max(total - warmup, 1))
            return minimum + 0.5 * (peak - minimum) * (1 + cosf(.pi * progress))
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// Scales all gradients so that their global L2 norm is at most `maxNorm`; returns the
/// norm before clipping (PyTorch's `clip_grad_norm_`).
@discardableResult
public func clipGradNorm(_ parameters: [Tensor], maxNorm: Float) -> Float {
    let grads = parameters.compactMap(\.grad)
    guard let backend = grads.first?.backend else { return 0 }
    let norm = Float(backend.sumOfSquares(grads).squareRoot())
    let scale = maxNorm / (norm + 1e-6)
    if scale < 1 {
        for g in grads { g.backend.scalar(.mul, g, scale, into: g) }
    }
    return norm
}
