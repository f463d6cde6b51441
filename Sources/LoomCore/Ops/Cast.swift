// Casts between floating-point dtypes: float32 <-> bfloat16 <-> float16.

extension Tensor {
    /// The values converted to `dtype`: narrowing rounds to nearest even, NaN and
    /// infinities are kept. Differentiable: the gradient is cast back to this tensor's
    /// dtype (d cast(x) / dx = 1, up to the rounding of the gradient itself).
    public func cast(to target: DType) throws -> Tensor {
        guard dtype.isFloatingPoint, target.isFloatingPoint else {
            throw LoomError.deviceMismatch("cast: \(dtype) tensor \(describe(shape)) to \(target): only float32, bfloat16 and float16 convert")
        }
        if target == dtype { return self }
        let out = try empty(dtype: target)
        backend.cast(self, into: out)
        let source = dtype
        return Tensor.differentiable("cast", output: out, inputs: [self]) { g in
            let gx = try g.empty(dtype: source)
            g.backend.cast(g, into: gx)
            return [gx]
        }
    }
}
