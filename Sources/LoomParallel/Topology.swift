import LoomDistributed

/// How ranks are laid out as DP × PP × TP, as a value.
///
/// Tensor parallelism varies fastest, so a TP group is consecutive ranks (the ones on one
/// machine, where the bandwidth is); then pipeline stages; data parallelism slowest:
///
///     rank = (dp_index * pp + pp_index) * tp + tp_index
///
/// Worked example, 8 ranks as dp 2 × pp 2 × tp 2:
///
///     rank:     0  1  2  3  4  5  6  7
///     dp index: 0  0  0  0  1  1  1  1
///     pp stage: 0  0  1  1  0  0  1  1
///     tp index: 0  1  0  1  0  1  0  1
///     TP groups {0,1} {2,3} {4,5} {6,7}; PP groups {0,2} {1,3} {4,6} {5,7};
///     DP groups {0,4} {1,5} {2,6} {3,7}
public struct Topology: Equatable, Sendable, CustomStringConvertible {
    public let dp: Int, pp: Int, tp: Int

    public init(dp: Int = 1, pp: Int = 1, tp: Int = 1) {
        precondition(dp >= 1 && pp >= 1 && tp >= 1)
        self.dp = dp; self.pp = pp; self.tp = tp
    }

    public var size: Int { dp * pp * tp }

    public struct Coordinates: Equatable, Sendable { public let dp: Int, pp: Int, tp: Int }

    public func coordinates(of rank: Int) -> Coordinates {
        Coordinates(dp: rank / (pp * tp), pp: (rank / tp) % pp, tp: rank % tp)
    }

    public func rank(dp d: Int, pp p: Int, tp t: Int) -> Int { (d * pp + p) * tp + t }

    /// The ranks that share `rank`'s coordinates except along one axis, in axis order.
    public func tensorGroup(of rank: Int) -> [Int] { let c = coordinates(of: rank); return (0..<tp).map { self.rank(dp: c.dp, pp: c.pp, tp: $0) } }
    public func pipelineGroup(of rank: Int) -> [Int] { let c = coordinates(of: rank); return (0..<pp).map { self.rank(dp: c.dp, pp: $0, tp: c.tp) } }
    public func dataGroup(of rank: Int) -> [Int] { let c = coordinates(of: rank); return (0..<dp).map { self.rank(dp: $0, pp: c.pp, tp: c.tp) } }

    public var description: String { "dp \(dp) × pp \(pp) × tp \(tp)" }
}

/// One rank's communicators for each axis of a topology (made with `split`, so every
/// rank of `world` must call `init` together).
public struct ProcessGroups {
    public let topology: Topology
    public let world: Communicator
    public let tensor: Communicator
    public let pipeline: Communicator
    public let data: Communicator

    public init(topology: Topology, world: Communicator) throws {
        guard world.size == topology.size else {
            throw CommError("topology \(topology) needs \(topology.size) ranks, the world has \(world.size)")
        }
        let c = topology.coordinates(of: world.rank)
        self.topology = topology
        self.world = world
        // Color: the coordinates that stay fixed; key: the position along the axis.
        tensor = try world.split(color: c.dp * topology.pp + c.pp, key: c.tp)
        pipeline = try world.split(color: c.dp * topology.tp + c.tp, key: c.pp)
        data = try world.split(color: c.pp * topology.tp + c.tp, key: c.dp)
    }
}
