import LoomCore

/// A backend whose devices move tensors between ranks themselves (NCCL between GPUs), not
/// through host memory: given the host world, the communicator for this rank's tensors.
public protocol DeviceCommunication: Backend {
    /// A communicator over `world`'s ranks that moves this device's tensors device to
    /// device (and everything else through `world`), or nil where it cannot (ranks sharing
    /// one device, the library missing); `note` says which, for the run's opening line.
    /// Collective: every rank of `world` calls it, and all get the same answer.
    func deviceCommunicator(over world: Communicator) throws -> (communicator: Communicator?, note: String)
}

/// The world a rank's model and collectives use: `world` itself, or, where the backend's
/// devices communicate themselves, the device communicator over it (with its note).
public func deviceWorld(_ world: Communicator?, for backend: any Backend) throws -> (world: Communicator?, note: String?) {
    guard let world, world.size > 1, let device = backend as? DeviceCommunication else { return (world, nil) }
    let (communicator, note) = try device.deviceCommunicator(over: world)
    return (communicator ?? world, note)
}
