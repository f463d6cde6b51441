import CLoomKernels
#if canImport(Glibc)
import Glibc
#endif

// Optimizer updates, fused into one pass over each parameter (PyTorch's formulas). A
// parameter whose bf16 copy products read (`OperandCopy`) gets its next copy in that pass.

extension CPUBackend {
    public func sgdStep(_ parameters: [SGDTensors], lr: Float, momentumFactor: Float, dampening: Float, weightDecay: Float,
                        nesterov: Bool) {
        let started = monotonicSeconds(); defer { count(.optimizer, since: started) }
        let copies = parameters.map { $0.param.operandCopyToRewrite() }
        for (t, copy) in zip(parameters, copies) {
            sgdStep(param: t.param, grad: t.grad, momentum: t.momentum, rounded: copy, lr: lr, momentumFactor: momentumFactor,
                    dampening: dampening, weightDecay: weightDecay, nesterov: nesterov)
        }
        Tensor.keepOperandCopies(parameters.map(\.param), copies)
    }

    public func adamStep(_ parameters: [AdamTensors], lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float,
                         decoupled: Bool, step: Int) {
        let started = monotonicSeconds(); defer { count(.optimizer, since: started) }
        let copies = parameters.map { $0.param.operandCopyToRewrite() }
        for (t, copy) in zip(parameters, copies) {
            adamStep(param: t.param, grad: t.grad, m: t.m, v: t.v, rounded: copy, lr: lr, beta1: beta1, beta2: beta2,
                     eps: eps, weightDecay: weightDecay, decoupled: decoupled, step: step)
        }
        Tensor.keepOperandCopies(parameters.map(\.param), copies)
    }

    private func sgdStep(param: Tensor, grad: Tensor, momentum: Tensor?, rounded: Tensor?, lr: Float, momentumFactor mu: Float,
                         dampening: Float, weightDecay wd: Float, nesterov: Bool) {
        let pp = param.ptr, pg = grad.ptr, pb = momentum?.ptr, pr = rounded?.halfPtr
        parallelFor(param.count, grain: 1 << 15, threads: threads) { r in
            let o = r.lowerBound
            loom_sgd(pp + o, pg + o, pb.map { $0 + o }, Int64(r.count), lr, mu, dampening, wd, nesterov ? 1 : 0, pr.map { $0 + o })
        }
    }

    private func adamStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, rounded: Tensor?, lr: Float, beta1: Float,
                          beta2: Float, eps: Float, weightDecay wd: Float, decoupled: Bool, step: Int) {
        let pp = param.ptr, pg = grad.ptr, pm = m.ptr, pv = v.ptr, pr = rounded?.halfPtr
        let bc1 = 1 - powf(beta1, Float(step)), bc2 = 1 - powf(beta2, Float(step))
        let stepSize = lr / bc1, bc2Sqrt = bc2.squareRoot()
        let decay: Float = decoupled ? 1 - lr * wd : 1, l2: Float = decoupled ? 0 : wd
        parallelFor(param.count, grain: 1 << 15, threads: threads) { r in
            let o = r.lowerBound
            loom_adam(pp + o, pg + o, pm + o, pv + o, Int64(r.count), beta1, beta2, eps, decay, l2, stepSize, bc2Sqrt,
                      pr.map { $0 + o })
        }
    }
}
