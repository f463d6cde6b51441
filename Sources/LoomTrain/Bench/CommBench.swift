import Foundation
import LoomCore
import LoomDistributed

/// All-reduce cost across message sizes, as NCCL's tests report it:
/// algorithm bandwidth = bytes / time; bus bandwidth = algbw x 2(n-1)/n, the rate each
/// link moves data in a ring all-reduce (comparable across rank counts).
public enum CommBench {
    public struct Row: Encodable {
        public var bytes: Int
        public var seconds: Double
        public var rawSeconds: Double?  // plain MPI_Allreduce, under MPI
        public var ranks: Int
        public var algGBps: Double { Double(bytes) / seconds / 1e9 }
        public var busGBps: Double { algGBps * 2 * Double(ranks - 1) / Double(ranks) }

        enum CodingKeys: String, CodingKey {
            case bytes, ranks, timeMicroseconds = "time_us", algGBps = "algbw_GBps", busGBps = "busbw_GBps"
            case mpiTimeMicroseconds = "mpi_time_us", mpiBusGBps = "mpi_busbw_GBps"
        }

        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(bytes, forKey: .bytes)
            try c.encode(ranks, forKey: .ranks)
            try c.encode(rounded(seconds * 1e6, 2), forKey: .timeMicroseconds)
            try c.encode(rounded(algGBps, 3), forKey: .algGBps)
            try c.encode(rounded(busGBps, 3), forKey: .busGBps)
            if let rawSeconds {
                try c.encode(rounded(rawSeconds * 1e6, 2), forKey: .mpiTimeMicroseconds)
                try c.encode(rounded(Double(bytes) / rawSeconds / 1e9 * 2 * Double(ranks - 1) / Double(ranks), 3), forKey: .mpiBusGBps)
            }
        }

        public var json: String { JSONOutput.string(self) }
    }

    /// 4 KB to 64 MB, by factors of 4.
    public static let sizes = (0...7).map { 4096 << (2 * $0) }

    /// Runs on every rank of `comm`; returns the rows (meaningful on every rank).
    public static func run(_ comm: Communicator, sizes: [Int] = sizes) throws -> [Row] {
        var rows: [Row] = []
        for bytes in sizes {
            let t = try Tensor.ones([bytes / 4])
            let iterations = max(5, min(200, (64 << 20) / bytes))
            for _ in 0..<2 { try comm.allReduce(t) }
            try comm.barrier()
            let t0 = monotonicSeconds()
            for _ in 0..<iterations { try comm.allReduce(t) }
            try comm.barrier()
            let seconds = (monotonicSeconds() - t0) / Double(iterations)
            let raw = (comm as? MPICommunicator)?.rawAllReduceSeconds(t, iterations: iterations)
            rows.append(Row(bytes: bytes, seconds: seconds, rawSeconds: raw, ranks: comm.size))
        }
        return rows
    }
}
