#if canImport(Glibc)
import Glibc
#endif

// Optimizer updates, fused into one pass over each parameter (PyTorch's formulas).

extension CPUBackend {
    public func sgdStep(_ parameters: [SGDTensors], lr: Float, momentumFactor: Float, dampening: Float, weightDecay: Float,
                        nesterov: Bool) {
        for t in parameters {
            sgdStep(param: t.param, grad: t.grad, momentum: t.momentum, lr: lr, momentumFactor: momentumFactor,
                    dampening: dampening, weightDecay: weightDecay, nesterov: nesterov)
        }
    }

    public func adamStep(_ parameters: [AdamTensors], lr: Float, beta1: Float, beta2: Float, eps: Float, weightDecay: Float,
                         decoupled: Bool, step: Int) {
        for t in parameters {
            adamStep(param: t.param, grad: t.grad, m: t.m, v: t.v, lr: lr, beta1: beta1, beta2: beta2, eps: eps,
                     weightDecay: weightDecay, decoupled: decoupled, step: step)
        }
    }

    private func sgdStep(param: Tensor, grad: Tensor, momentum: Tensor?, lr: Float, momentumFactor mu: Float,
                         dampening: Float, weightDecay wd: Float, nesterov: Bool) {
        let pp = param.ptr, pg = grad.ptr
        // One branch-free vector loop per case: a per-element branch on momentum or
        // Nesterov kept the loop scalar (12% of an MLP step).
        let lrv = F8(repeating: lr), wdv = F8(repeating: wd), muv = F8(repeating: mu), damp = F8(repeating: 1 - dampening)
        parallelFor(param.count, grain: 1 << 15, threads: threads) { r in
            let n = r.count, p = pp + r.lowerBound, g = pg + r.lowerBound
            guard let buffer = momentum?.ptr else {
                zip8(p, g, p, n) { p, g in p - lrv * (g + wdv * p) }
                return
            }
            let b = buffer + r.lowerBound
            var i = 0
            while i < n {
                let w = Swift.min(8, n - i)
                let pv = w == 8 ? load8(p + i) : loadPartial(p + i, w)
                let gv = (w == 8 ? load8(g + i) : loadPartial(g + i, w)) + wdv * pv
                let bv = muv * (w == 8 ? load8(b + i) : loadPartial(b + i, w)) + damp * gv
                let step = nesterov ? gv + muv * bv : bv
                if w == 8 { store8(bv, b + i); store8(pv - lrv * step, p + i) } else {
                    storePartial(bv, b + i, w); storePartial(pv - lrv * step, p + i, w)
                }
                i += 8
            }
        }
    }

    private func adamStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, lr: Float, beta1: Float, beta2: Float,
                          eps: Float, weightDecay wd: Float, decoupled: Bool, step: Int) {
        let pp = param.ptr, pg = grad.ptr, pm = m.ptr, pv = v.ptr
        let bc1 = 1 - powf(beta1, Float(step)), bc2 = 1 - powf(beta2, Float(step))
        let stepSize = lr / bc1, bc2Sqrt = bc2.squareRoot()
        let decay: Float = decoupled ? 1 - lr * wd : 1
        parallelFor(param.count, grain: 1 << 15, threads: threads) { r in
            for i in r {
                var g = pg[i]
                if !decoupled { g += wd * pp[i] }
                let p = pp[i] * decay
                let mi = beta1 * pm[i] + (1 - beta1) * g
                let vi = beta2 * pv[i] + (1 - beta2) * g * g
                pm[i] = mi; pv[i] = vi
                pp[i] = p - stepSize * mi / (vi.squareRoot() / bc2Sqrt + eps)
            }
        }
    }
}
