#if canImport(Glibc)
import Glibc
#endif

// Optimizer updates, fused into one pass over each parameter (PyTorch's formulas).

extension CPUBackend {
    public func sgdStep(param: Tensor, grad: Tensor, momentum: Tensor?, lr: Float, momentumFactor mu: Float,
                        dampening: Float, weightDecay wd: Float, nesterov: Bool) {
        let pp = param.ptr, pg = grad.ptr, pb = momentum?.ptr
        parallelFor(param.count, grain: 1 << 15, threads: threads) { r in
            for i in r {
                var g = pg[i] + wd * pp[i]
                if let pb {
                    let b = mu * pb[i] + (1 - dampening) * g
                    pb[i] = b
                    g = nesterov ? g + mu * b : b
                }
                pp[i] -= lr * g
            }
        }
    }

    public func adamStep(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, lr: Float, beta1: Float, beta2: Float,
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
