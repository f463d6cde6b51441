import LoomCore
import LoomData

/// The loader's batches on the training backend. A backend that stages batches
/// (`BatchStaging`: a GPU's copy stream) gets batch N+1 staged as batch N is handed out,
/// so that its copy overlaps step N; any other backend gets each batch with `to(_:)` (on
/// the CPU, the batch itself). Reading one batch ahead does not move the loader's
/// position in a checkpoint: that is the step count.
struct DeviceBatches {
    let loader: PrefetchLoader
    let backend: any Backend
    private var ahead: StagedTensors?

    init(_ loader: PrefetchLoader, on backend: any Backend) {
        self.loader = loader
        self.backend = backend
    }

    mutating func next() throws -> (inputs: Tensor, targets: Tensor)? {
        guard let stager = backend as? BatchStaging else {
            return try loader.next().map { (try $0.inputs.to(backend), try $0.targets.to(backend)) }
        }
        func stage(_ batch: (inputs: Tensor, targets: Tensor)?) throws -> StagedTensors? {
            try batch.map { try stager.stage([$0.inputs, $0.targets]) }
        }
        guard let current = try ahead ?? stage(loader.next()) else { return nil }
        let tensors = try current.take()
        ahead = try stage(loader.next())
        return (tensors[0], tensors[1])
    }
}
