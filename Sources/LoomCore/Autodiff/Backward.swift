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
        // How many recorded uses of each node backward has still to pass through: a node
        // runs (a leaf takes its gradient) as soon as the last of its consumers has, so a
        // parameter's gradient is final, and its hook fires, right after the last op that
        // read it, not wherever a static order happens to place it. (Data parallelism
        // starts a bucket's reduction from that hook; ZeRO-3 releases a unit.)
        var uses: [ObjectIdentifier: Int] = [:]
        for t in topologicalOrder() {
            for input in t.gradFn?.inputs ?? [] where input.requiresGrad { uses[ObjectIdentifier(input), default: 0] += 1 }
        }
        var pending: [ObjectIdentifier: Tensor] = [ObjectIdentifier(self): seed]
        // Storages already owned by a leaf's grad (or the caller's seed): a gradient that
        // aliases one is copied before a leaf adopts it, because gradients are later
        // modified in place (clipping, all-reduce).
        var owned: Set<ObjectIdentifier> = [ObjectIdentifier(seed.storage)]
        var ready: [Tensor] = [self]  // every consumer done; the most recent first (depth first)
        try withoutGrad {
            while let t = ready.popLast() {
                let g = pending.removeValue(forKey: ObjectIdentifier(t))
                guard let fn = t.gradFn else {
                    if let g {
                        let adopt = owned.insert(ObjectIdentifier(g.storage)).inserted ? g : try g.copied()
                        try t.accumulateGrad(adopt)
                        if let grad = t.grad { owned.insert(ObjectIdentifier(grad.storage)) }
                    }
                    continue
                }
                let grads = try g.map { try fn.backward($0) } ?? []  // no gradient reached it: its inputs get none from it
                for (k, input) in fn.inputs.enumerated() where input.requiresGrad {
                    if k < grads.count, let gi = grads[k] {
                        guard gi.shape == input.shape else {
                            throw LoomError.autodiff("\(fn.name) backward produced \(describe(gi.shape)) for input \(describe(input.shape))")
                        }
                        let id = ObjectIdentifier(input)
                        pending[id] = try pending[id].map { try $0.adding(gi) } ?? gi
                    }
                    let id = ObjectIdentifier(input)
                    uses[id]! -= 1
                    if uses[id] == 0 { ready.append(input) }
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
