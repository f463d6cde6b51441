/// One recorded operation: the inputs it read, and how to turn the gradient of its
/// output into gradients of those inputs.
///
/// Invariant: `backward` returns one entry per input, in order; an entry is nil when
/// that input needs no gradient (the engine never asks for it then). Every gradient has
/// its input's shape.
public final class GradFn {
    public let name: String
    public let inputs: [Tensor]
    let backward: (Tensor) throws -> [Tensor?]

    init(name: String, inputs: [Tensor], backward: @escaping (Tensor) throws -> [Tensor?]) {
        self.name = name
        self.inputs = inputs
        self.backward = backward
    }
}

extension Tensor {
    /// Records `output = op(inputs)` in the graph when gradients are being tracked and
    /// any input needs one. The closure receives the output's gradient.
    ///
    /// This is also how users and the parallel layers define ops of their own: compute
    /// the forward with any tensors or backend calls, then describe its backward.
    /// ```swift
    /// // identity forward, all-reduce backward (Megatron's "copy to region")
    /// let y = Tensor.differentiable("copyToTP", output: x.detach(), inputs: [x]) { g in
    ///     [try comm.allReduce(g)]
    /// }
    /// ```
    @discardableResult
    public static func differentiable(_ name: String, output: Tensor, inputs: [Tensor],
                                      backward: @escaping (Tensor) throws -> [Tensor?]) -> Tensor {
        guard GradMode.isEnabled, inputs.contains(where: { $0.requiresGrad }) else { return output }
        output.requiresGrad = true
        output.gradFn = GradFn(name: name, inputs: inputs, backward: backward)
        return output
    }
}
