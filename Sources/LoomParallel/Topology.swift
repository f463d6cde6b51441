import LoomDistributed

/// How ranks are laid out, as a value: named axes, each of a size, the last varying
/// fastest. Loom's training layout is DP × PP × TP:
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
///
/// A group along an axis is the ranks whose other coordinates are the same. A new kind
/// of parallelism (experts, a ZeRO shard group inside a replica) is a new axis, not new
/// code here.
public struct Topology: Equatable, Sendable, CustomStringConvertible {
    /// A direction ranks are laid out along.
    public struct Axis: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        public init(_ name: String) { self.name = name }
        public var description: String { name }
        public static let data = Axis("dp"), pipeline = Axis("pp"), tensor = Axis("tp")
    }

    /// The axes, slowest first, with their sizes.
    public let axes: [(axis: Axis, size: Int)]

    public init(axes: [(axis: Axis, size: Int)]) {
        precondition(axes.allSatisfy { $0.size >= 1 } && Set(axes.map(\.axis)).count == axes.count)
        self.axes = axes
    }

    /// Loom's training layout: data slowest, then pipeline stages, tensor fastest.
    public init(dp: Int = 1, pp: Int = 1, tp: Int = 1) {
        self.init(axes: [(.data, dp), (.pipeline, pp), (.tensor, tp)])
    }

    public var size: Int { axes.reduce(1) { $0 * $1.size } }

    /// An axis's size (1 for an axis the layout does not have).
    public func size(of axis: Axis) -> Int { axes.first { $0.axis == axis }?.size ?? 1 }

    public var dp: Int { size(of: .data) }
    public var pp: Int { size(of: .pipeline) }
    public var tp: Int { size(of: .tensor) }

    /// Ranks between consecutive indices along `axis` (the product of the faster axes).
    private func stride(of axis: Axis) -> Int {
        guard let i = axes.firstIndex(where: { $0.axis == axis }) else { return size }
        return axes[(i + 1)...].reduce(1) { $0 * $1.size }
    }

    /// `rank`'s index along `axis`.
    public func coordinate(of rank: Int, along axis: Axis) -> Int { (rank / stride(of: axis)) % size(of: axis) }

    /// The ranks that share `rank`'s coordinates except along `axis`, in axis order.
    public func group(of rank: Int, along axis: Axis) -> [Int] {
        let s = stride(of: axis), base = rank - coordinate(of: rank, along: axis) * s
        return (0..<size(of: axis)).map { base + $0 * s }
    }

    public struct Coordinates: Equatable, Sendable { public let dp: Int, pp: Int, tp: Int }

    public func coordinates(of rank: Int) -> Coordinates {
        Coordinates(dp: coordinate(of: rank, along: .data), pp: coordinate(of: rank, along: .pipeline), tp: coordinate(of: rank, along: .tensor))
    }

    public func rank(dp d: Int, pp p: Int, tp t: Int) -> Int {
        d * stride(of: .data) + p * stride(of: .pipeline) + t * stride(of: .tensor)
    }

    public func tensorGroup(of rank: Int) -> [Int] { group(of: rank, along: .tensor) }
    public func pipelineGroup(of rank: Int) -> [Int] { group(of: rank, along: .pipeline) }
    public func dataGroup(of rank: Int) -> [Int] { group(of: rank, along: .data) }

    /// "rank 3: dp 0, pp 1, tp 1": a rank and its coordinates (trace tracks, messages).
    public func label(_ rank: Int) -> String {
        "rank \(rank): " + axes.map { "\($0.axis) \(coordinate(of: rank, along: $0.axis))" }.joined(separator: ", ")
    }

    public var description: String { axes.map { "\($0.axis) \($0.size)" }.joined(separator: " × ") }

    public static func == (a: Topology, b: Topology) -> Bool {
        a.axes.map(\.axis) == b.axes.map(\.axis) && a.axes.map(\.size) == b.axes.map(\.size)
    }
}

/// One rank's communicator along each axis of a topology (made with `split`, so every
/// rank of `world` must call `init` together).
public struct ProcessGroups {
    public let topology: Topology
    public let world: Communicator
    private let groups: [Topology.Axis: Communicator]

    public init(topology: Topology, world: Communicator) throws {
        guard world.size == topology.size else {
            throw CommError("topology \(topology) needs \(topology.size) ranks, the world has \(world.size)")
        }
        self.topology = topology
        self.world = world
        var groups: [Topology.Axis: Communicator] = [:]
        for (axis, _) in topology.axes {
            // Color: the first rank of the group (the other coordinates, fixed); key: the
            // position along the axis.
            let members = topology.group(of: world.rank, along: axis)
            groups[axis] = try world.split(color: members[0], key: topology.coordinate(of: world.rank, along: axis))
        }
        self.groups = groups
    }

    /// This rank's group along `axis` (nil: the layout has no such axis).
    public subscript(axis: Topology.Axis) -> Communicator? { groups[axis] }

    // Loom's training layout (`Topology(dp:pp:tp:)`) has all three.
    public var tensor: Communicator { groups[.tensor]! }
    public var pipeline: Communicator { groups[.pipeline]! }
    public var data: Communicator { groups[.data]! }
}
