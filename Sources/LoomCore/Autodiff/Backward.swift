/// Reverse-mode differentiation over the recorded graph.
extension Tensor {
    /// Backpropagates from a scalar loss (seed 1), accumulating into the `grad` of every
    /// leaf that requires one.
    public func backward(retainGraph: Bool = false) throws {
        guard count == 1 else {
            throw LoomError.autodiff("backward() needs a scalar, got \(describe(shape)); pass backward(seed:) with the output gradient")
        }
        try backward(seed: Tensor.full(shape, 1, on: backend), retainGraph: retainGraph)
    }

    /// Backpropagates a gradient handed in from outside (a pipeline stage receives the
    /// gradient of its output from the next stage). `seed` has this tensor's shape.
    public func backward(seed: Tensor, retainGraph: Bool = false) throws {
        guard seed.shape == shape else {
            throw LoomError.shapeMismatch("backward(seed:): seed \(describe(seed.shape)) for output \(describe(shape))")
        }
        guard requiresGrad else {
            throw LoomError.autodiff("backward(): tensor \(describe(shape)) does not require grad (no parameter reached it, or it was computed under withoutGrad)")
        }
        let order = topologicalOrder()
        var pending: [ObjectIdentifier: Tensor] = [ObjectIdentifier(self): seed]
        // Storages already owned by a leaf's grad (or the caller's seed): a gradient that
        // aliases one is copied before a leaf adopts it, because gradients are later
        // modified in place (clipping, all-reduce).
        var owned: Set<ObjectIdentifier> = [ObjectIdentifier(seed.storage)]
        try withoutGrad {
            for t in order.reversed() {
                guard let g = pending.removeValue(forKey: ObjectIdentifier(t)) else { continue }
                guard let fn = t.gradFn else {
                    let adopt = owned.insert(ObjectIdentifier(g.storage)).inserted ? g : try g.copied()
                    try t.accumulateGrad(adopt)
                    if let grad = t.grad { owned.insert(ObjectIdentifier(grad.storage)) }
                    continue
                }
                let grads = try fn.backward(g)
                for (input, gi) in zip(fn.inputs, grads) where input.requiresGrad {
                    guard let gi else { continue }
                    guard gi.shape == input.shape else {
                        throw LoomError.autodiff("\(fn.name) backward produced \(describe(gi.shape)) for input \(describe(input.shape))")
                    }
                    let id = ObjectIdentifier(input)
                    pending[id] = try pending[id].map { try $0.adding(gi) } ?? gi
                }
                if !retainGraph { t.gradFn = nil }
            }
        }
    }

    /// Leaves keep their gradient; a later backward adds to it (gradient accumulation).
    /// Out of place: a gradient tensor may be shared by several inputs of one op.
    func accumulateGrad(_ g: Tensor) throws {
        if let existing = grad {
            grad = try existing.adding(g)
        } else {
            grad = g
        }
        onGradAccumulated?(self)
    }

    /// Nodes reachable from `self`, each after all of its inputs (iterative DFS: graphs
    /// of deep models would overflow a recursive one).
    func topologicalOrder() -> [Tensor] {
        var order: [Tensor] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(Tensor, Bool)] = [(self, false)]
        while let (t, expanded) = stack.popLast() {
            if expanded { order.append(t); continue }
            guard visited.insert(ObjectIdentifier(t)).inserted else { continue }
            stack.append((t, true))
            for input in t.gradFn?.inputs ?? [] where input.requiresGrad && !visited.contains(ObjectIdentifier(input)) {
                stack.append((input, false))
            }
        }
        return order
    }

    /// Out-of-place sum used by the engine (no graph: it runs under withoutGrad).
    func adding(_ other: Tensor) throws -> Tensor {
        let out = try empty()
        backend.binary(.add, self, other, into: out)
        return out
    }
}
