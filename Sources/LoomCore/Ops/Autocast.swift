// Mixed precision, PyTorch's autocast narrowed to what pays: under `.bfloat16` the matrix
// products (linear, matmul, attention's Q·Kᵀ and P·V, forward and backward) read bf16
// copies of their operands and accumulate in float32 into float32 outputs. Everything else
// stays float32: parameters (the master weights), optimizer state, gradients, softmax,
// layer norm, the loss. A product saves its bf16 operands for backward, so each operand
// is rounded once.
//
// Convolutions too, where the backend convolves bf16 (`Backend.runsConvolution`: the CPU
// with oneDNN's bf16 kernels; elsewhere they stay float32), their bias gradients float32.
//
// Unlike PyTorch, a product's output is float32, not bf16: the elementwise ops after it
// need no bf16 kernels and no dtype promotion rules. The price is memory and bandwidth:
// activations stay float32, the graph keeps the float32 input next to its bf16 copy, and
// the elementwise ops, norms and softmax move as many bytes as in float32. Where one op
// owns both ends, a tensor that only products read is written once, in bf16: the MLP's
// GELU output and its gradient (`feedForward`, `linear(weight:bias:after:)`), and dY with
// its bias gradient (`productGradient`).

/// The precision of matrix products.
public enum Precision: String, CaseIterable, Sendable {
    case float32
    /// bf16 operands (8-bit mantissa), float32 accumulation and outputs.
    case bfloat16 = "bf16"

    /// The dtype a product's operands are read in.
    public var operandDType: DType { self == .bfloat16 ? .bfloat16 : .float32 }
}

/// The precision of the calling thread's matrix products: the innermost `withPrecision`
/// scope, else float32. Per thread, like `withoutGrad`, because in-process ranks are threads.
public enum Autocast {
    private static let bf16 = ThreadFlag()

    public static var precision: Precision { bf16.isOn ? .bfloat16 : .float32 }

    public static func with<T>(_ precision: Precision, _ body: () throws -> T) rethrows -> T {
        try bf16.with(precision == .bfloat16, body)
    }
}

/// Runs `body` with its matrix products in `precision`. Backward passes use the precision
/// each product was recorded with, wherever they run.
public func withPrecision<T>(_ precision: Precision, _ body: () throws -> T) rethrows -> T {
    try Autocast.with(precision, body)
}

extension Tensor {
    /// This tensor as a matrix-product operand in `precision`: itself, or a copy rounded to
    /// bf16. Not recorded in the graph: the product that reads it writes its own backward.
    /// A parameter's copy is kept while its values stay as they were (`OperandCopy`).
    func gemmInput(_ precision: Precision) throws -> Tensor {
        let dtype = precision.operandDType
        if dtype == self.dtype { return self }
        if let kept = keptOperand(dtype) { return kept }
        let y = try empty(dtype: dtype)
        backend.cast(self, into: y)
        if isLeaf && requiresGrad { Tensor.keepOperandCopies([self], [y]) }
        return y
    }
}
