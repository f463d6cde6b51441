/// A parameter's values rounded for the bf16 matrix products that read it, kept from one
/// use to the next.
///
/// Under bf16 autocast a product reads its operands rounded (`gemmInput`). Rounding a weight
/// afresh at every use reads the whole float32 weight from memory, every step, for values that
/// changed only in the optimizer's update (the mlp workload at 1 thread on a Zen 4: 0.13 ms of
/// the 0.7 ms its bf16 step spent outside the products). So the rounding is kept, as
/// PyTorch's autocast keeps a weight's cast within a forward pass, and here across steps too:
///
/// - `gemmInput` rounds a parameter once and keeps the copy; later products in the same step
///   (a tied embedding's second use, every micro-batch of gradient accumulation) read it;
/// - the optimizer's update writes the next copy in the pass that writes the parameter
///   (`loom_sgd`'s `rounded`), for the cost of its stores;
/// - anything else that reaches the parameter's memory (a checkpoint load, a ZeRO
///   all-gather, a broadcast, reading its values) does so through `Storage.hostAddress` or
///   `Tensor.ptr`, which break the storage's seal, and the next product rounds afresh.
///
/// A copy is exactly `cast(_:into:)`'s rounding of the values it was sealed with, so results
/// are bit for bit those of rounding at every use. Only host storages are sealed: device
/// memory is written by kernels that `Storage` does not see. A host pointer is taken for one
/// access: one taken before a copy is made and written through after it goes unseen. Like
/// `grad`, not for one tensor used from several threads at once.
///
/// ```swift
/// let wl = try w.gemmInput(.bfloat16)     // rounds w, keeps the copy
/// _ = try w.gemmInput(.bfloat16)          // the same tensor as wl: nothing touched w
/// try optimizer.step()                    // writes w and, in the same pass, its next copy
/// _ = w.floats                            // touches w's storage: the copy is not trusted
/// _ = try w.gemmInput(.bfloat16)          // rounds afresh
/// ```
struct OperandCopy {
    var values: Tensor
    /// Where in its storage the values were read from (a tensor rebound to another offset).
    let offset: Int
    /// `Storage.seal()`'s answer when the copy was made. Generations are numbered across all
    /// storages, so this one also says which storage: a rebound or moved tensor's never matches.
    let generation: Int
}

extension Tensor {
    /// Whether bf16 products will read a kept rounding of this tensor instead of rounding it
    /// again (`OperandCopy`): for tests and diagnostics.
    public var hasKeptBF16Operand: Bool { keptOperand(.bfloat16) != nil }

    /// The kept copy in `dtype`, where it still holds this tensor's values.
    func keptOperand(_ dtype: DType) -> Tensor? {
        guard let c = operandCopy, c.values.dtype == dtype, c.offset == offset, storage.isSealed(at: c.generation) else { return nil }
        return c.values
    }

    /// Keeps `copies[i]` (where not nil) as the rounding of `tensors[i]`'s values as they are
    /// now. Call it after the last access to their memory: a storage that holds several of the
    /// tensors is sealed once, for all of them.
    static func keepOperandCopies(_ tensors: [Tensor], _ copies: [Tensor?]) {
        var sealed: [ObjectIdentifier: Int] = [:]
        for (t, copy) in zip(tensors, copies) {
            guard let copy else { continue }
            let id = ObjectIdentifier(t.storage)
            guard let generation = sealed[id] ?? t.storage.seal() else { continue }
            sealed[id] = generation
            copy.tagMemory(.parameters)
            t.operandCopy = OperandCopy(values: copy, offset: t.offset, generation: generation)
        }
    }

    /// Where an update of this tensor in place writes its next copy: the kept one where nothing
    /// else holds it, else a new one (a graph still alive keeps the old values for its
    /// backward); nil where no product reads a copy of this tensor, or none can be allocated.
    /// The copy is not kept until `keepOperandCopies`.
    func operandCopyToRewrite() -> Tensor? {
        guard var c = operandCopy else { return nil }
        operandCopy = nil  // the local `c` is now the tensor's only holder but for other owners
        if isKnownUniquelyReferenced(&c.values) { return c.values }
        return try? c.values.empty()
    }
}
