/// What a step's forward and backward ask of the layout between the last backward and
/// the update: make every rank's gradients the global batch's. A schedule calls it at the
/// same two points whatever the layout (`AccumulatedSteps`, `PipelineEngine`), and the
/// layout answers (data parallelism reduces across replicas; one process has nothing to
/// do), so neither knows the other.
public protocol GradientReduction: AnyObject {
    /// Whether the next backward also starts the reduction (data parallelism overlaps it
    /// with backward): on for the last accumulation micro-batch only, off under a
    /// pipeline, whose reduction waits for the tied parameters' sum.
    func setOverlapsBackward(_ on: Bool)
    /// Makes every rank's gradients the global batch's (waits for the reduction that
    /// backward started, or runs it).
    func reduceGradients() throws
}

/// Nothing to reduce: one process, or a pipeline alone.
public final class LocalGradients: GradientReduction {
    public init() {}
    public func setOverlapsBackward(_ on: Bool) {}
    public func reduceGradients() throws {}
}
