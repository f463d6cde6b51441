// Elementwise ops: broadcasting binary arithmetic, scalar arithmetic and activations.
// Each op is its forward and its backward, side by side.

extension Tensor {
    // MARK: Binary, broadcasting

    public func add(_ other: Tensor) throws -> Tensor { try binaryOp(.add, other) }
    public func sub(_ other: Tensor) throws -> Tensor { try binaryOp(.sub, other) }
    public func mul(_ other: Tensor) throws -> Tensor { try binaryOp(.mul, other) }
    public func div(_ other: Tensor) throws -> Tensor { try binaryOp(.div, other) }

    public static func + (a: Tensor, b: Tensor) throws -> Tensor { try a.add(b) }
    public static func - (a: Tensor, b: Tensor) throws -> Tensor { try a.sub(b) }
    public static func * (a: Tensor, b: Tensor) throws -> Tensor { try a.mul(b) }
    public static func / (a: Tensor, b: Tensor) throws -> Tensor { try a.div(b) }

    private func binaryOp(_ op: BinaryOp, _ b: Tensor) throws -> Tensor {
        let a = self
        try requireSameDevice(op.rawValue, a, b)
        try requireFloat(op.rawValue, a); try requireFloat(op.rawValue, b)
        let shape = try broadcastShape(a.shape, b.shape, op: op.rawValue)
        let out = try empty(shape)
        backend.binary(op, a, b, into: out)
        return Tensor.differentiable(op.rawValue, output: out, inputs: [a, b]) { g in
            // d(a op b): reduce each gradient back over the axes it was broadcast along.
            switch op {
            case .add:
                return [a.requiresGrad ? try g.sumToShape(a.shape) : nil,
                        b.requiresGrad ? try g.sumToShape(b.shape) : nil]
            case .sub:
                return [a.requiresGrad ? try g.sumToShape(a.shape) : nil,
                        b.requiresGrad ? try g.scaled(-1).sumToShape(b.shape) : nil]
            case .mul:
                return [a.requiresGrad ? try g.mul(b).sumToShape(a.shape) : nil,
                        b.requiresGrad ? try g.mul(a).sumToShape(b.shape) : nil]
            case .div:
                // d/da = g / b; d/db = -g * a / b^2 = -(g * out) / b
                return [a.requiresGrad ? try g.div(b).sumToShape(a.shape) : nil,
                        b.requiresGrad ? try g.mul(out).div(b).scaled(-1).sumToShape(b.shape) : nil]
            }
        }
    }

    // MARK: Scalars

    /// self * s
    public func scaled(_ s: Float) throws -> Tensor {
        try requireFloat("scaled", self)
        let out = try empty()
        backend.scalar(.mul, self, s, into: out)
        return Tensor.differentiable("scale", output: out, inputs: [self]) { g in [try g.scaled(s)] }
    }

    /// self + s
    public func shifted(_ s: Float) throws -> Tensor {
        try requireFloat("shifted", self)
        let out = try empty()
        backend.scalar(.add, self, s, into: out)
        return Tensor.differentiable("shift", output: out, inputs: [self]) { g in [g] }
    }

    /// self ^ p, elementwise.
    public func pow(_ p: Float) throws -> Tensor {
        try requireFloat("pow", self)
        let out = try empty()
        backend.scalar(.pow, self, p, into: out)
        let x = self
        return Tensor.differentiable("pow", output: out, inputs: [self]) { g in
            let d = try x.empty()
            x.backend.scalar(.pow, x, p - 1, into: d)
            return [try g.mul(d.scaled(p))]
        }
    }

    public static func * (a: Tensor, s: Float) throws -> Tensor { try a.scaled(s) }
    public static func + (a: Tensor, s: Float) throws -> Tensor { try a.shifted(s) }
    public static prefix func - (a: Tensor) throws -> Tensor { try a.unaryOp(.neg) }

    // MARK: Activations and other unary functions

    public func relu() throws -> Tensor { try unaryOp(.relu) }
    /// GELU, tanh approximation.
    public func gelu() throws -> Tensor { try unaryOp(.gelu) }
    public func tanh() throws -> Tensor { try unaryOp(.tanh) }
    public func sigmoid() throws -> Tensor { try unaryOp(.sigmoid) }
    public func exp() throws -> Tensor { try unaryOp(.exp) }
    public func log() throws -> Tensor { try unaryOp(.log) }
    public func sqrt() throws -> Tensor { try unaryOp(.sqrt) }
    public func square() throws -> Tensor { try unaryOp(.square) }

    func unaryOp(_ op: UnaryOp) throws -> Tensor {
        try requireFloat(op.rawValue, self)
        let x = self
        let y = try empty()
        backend.unary(op, x, into: y)
        return Tensor.differentiable(op.rawValue, output: y, inputs: [x]) { g in
            let gx = try x.empty()
            x.backend.unaryBackward(op, x: x, y: y, gradOutput: g, into: gx)
            return [gx]
        }
    }
}
