import LoomCore
import LoomDistributed

/// The ranks of a run and this rank's groups, made once, before anything of the model,
/// and handed to what is built for the layout as it is built: tensor-parallel layers get
/// the tensor group, batch norm the group it shares statistics with, a pipeline its
/// stages, the data-parallel reduction and ZeRO the data group. Nothing walks a finished
/// model to attach a group.
///
/// One process: `ParallelContext.single`, every group nil. A world of N ranks laid out as
/// `topology` (its size must be N): every rank makes its context together (the groups
/// are `split` from the world).
public struct ParallelContext {
    /// All ranks of the run (nil: one process).
    public let world: Communicator?
    public let topology: Topology
    /// Every axis's group (nil: one process, or a world that is data parallel only,
    /// whose one group is the world).
    public let groups: ProcessGroups?

    public static let single = ParallelContext(world: nil, topology: Topology(), groups: nil)

    private init(world: Communicator?, topology: Topology, groups: ProcessGroups?) {
        self.world = world; self.topology = topology; self.groups = groups
    }

    /// `world` laid out as dp × pp × tp, dp being what is left: world size / (tp × pp).
    /// Collective when tp × pp > 1.
    public init(world: Communicator?, tensor tp: Int = 1, pipeline pp: Int = 1) throws {
        guard let world else {
            guard tp * pp == 1 else {
                throw LoomError.config("parallel.tp = \(tp) x parallel.pp = \(pp) needs that many ranks; the trainer was given one process")
            }
            self = .single
            return
        }
        guard world.size % (tp * pp) == 0 else {
            throw LoomError.config("parallel.tp = \(tp) x parallel.pp = \(pp) does not divide the \(world.size) ranks")
        }
        let topology = Topology(dp: world.size / (tp * pp), pp: pp, tp: tp)
        self.init(world: world, topology: topology, groups: tp * pp > 1 ? try ProcessGroups(topology: topology, world: world) : nil)
    }

    /// The ranks that hold the same part of the model and split the batch.
    public var data: Communicator? { groups?.data ?? world }
    /// The ranks a tensor-parallel layer is split across (nil: none).
    public var tensor: Communicator? { topology.tp > 1 ? groups?.tensor : nil }
    /// The stages of this rank's pipeline (nil: no pipeline).
    public var pipeline: Communicator? { topology.pp > 1 ? groups?.pipeline : nil }

    /// This rank's index in the world (0 alone).
    public var rank: Int { world?.rank ?? 0 }
    public var size: Int { world?.size ?? 1 }

    /// "rank 3: dp 0, pp 1, tp 1" (the trace's track names).
    public func label(_ rank: Int) -> String { world == nil ? "rank \(rank)" : topology.label(rank) }
}
