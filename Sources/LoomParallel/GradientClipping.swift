import LoomCore
import LoomDistributed

/// Clips gradients by the global norm of a model split across ranks: each rank sums the
/// squares of the gradients it `counts` (every element of the whole model exactly once:
/// a TP-replicated layer norm on one TP rank, a tied embedding on one stage), the sums
/// are added across `groups` (the tensor- and pipeline-parallel groups), and every rank
/// scales its gradients by the same factor. Returns the norm before clipping.
@discardableResult
public func clipGradNorm(_ parameters: [(name: String, tensor: Tensor)], maxNorm: Float, counting counts: (Tensor) -> Bool,
                         across groups: [Communicator]) throws -> Float {
    let counted = parameters.filter { counts($0.tensor) }.compactMap(\.tensor.grad)
    var total = counted.first.map { $0.backend.sumOfSquares(counted) } ?? 0
    for g in groups where g.size > 1 { total = try g.sum([total])[0] }
    let norm = Float(total.squareRoot())
    let scale = maxNorm / (norm + 1e-6)
    if scale < 1 { for (_, p) in parameters { if let g = p.grad { g.backend.scalar(.mul, g, scale, into: g) } } }
    return norm
}
