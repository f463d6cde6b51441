/// A backend that moves input batches to its device off the compute queue (a GPU's copy
/// stream, from pinned host buffers), so that batch N+1 travels while step N runs. The
/// trainer stages each batch one step ahead when its backend can; other backends get
/// their batches with `Tensor.to(_:)`.
public protocol BatchStaging: Backend {
    /// Starts copying host tensors to this device. The copies wait for the work queued
    /// so far (the device memory they fill may have been freed by it); work queued after
    /// `StagedTensors.take()` waits for the copies.
    func stage(_ tensors: [Tensor]) throws -> StagedTensors
}

/// Tensors on their way to a device: `take()` hands them over once, ordering the work
/// queued after it behind their copies.
public final class StagedTensors {
    private let tensors: [Tensor]
    private var ready: (() throws -> Void)?

    /// `ready` orders later device work behind the copies (it runs once: on `take()`, or
    /// when the batch is dropped untaken, so its memory is not reused under a copy).
    public init(_ tensors: [Tensor], ready: @escaping () throws -> Void) {
        self.tensors = tensors
        self.ready = ready
    }

    public func take() throws -> [Tensor] {
        let r = ready
        ready = nil
        try r?()
        return tensors
    }

    deinit { try? ready?() }
}
