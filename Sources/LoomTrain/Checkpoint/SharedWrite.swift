import CZlib
import Foundation
import LoomCore
import LoomDistributed

extension SafeTensors {
    /// Writes one safetensors file from the pieces the ranks of `world` hold, each rank
    /// writing its own pieces at their places in the file: nothing is gathered, and a rank
    /// holds one piece's host bytes at a time beyond its own state (none on the CPU).
    /// Collective: every rank calls it with the same entries in the same order (their
    /// pieces differ); the file is what `write` would write from the whole tensors.
    ///
    /// 1. Rank 0 lays out the header (its `metadata` is the file's, and the others'
    ///    is not used), creates the file under a temporary name at its full size, and
    ///    sends the name and where the data starts to the others.
    /// 2. Every rank writes its pieces, with the CRC-32 of each, and syncs.
    /// 3. All wait at a barrier (`timeout`: a slow disk is not a dead rank), then send
    ///    rank 0 their pieces' places and CRCs, or their failure.
    /// 4. Rank 0 checks that the pieces tile the data exactly (no gap, no overlap),
    ///    combines their CRCs after the header's (zlib's `crc32_combine`), writes the
    ///    checksum, renames the file into place, and tells every rank the outcome.
    ///
    /// A failure anywhere leaves no file under `path` (the previous one stays) and is
    /// thrown on every rank, naming the rank.
    public static func write(_ entries: [CheckpointEntry], metadata: [String: String], to path: String, world: Communicator,
                             timeout: Double) throws {
        let tag = 1 << 22, rank = world.rank
        if let split = entries.first(where: { $0.sharding != nil }) {
            throw LoomError.invalidArgument("writing '\(path)': entry '\(split.name)' is still a tensor-parallel slice (place its pieces with `unsharded`)")
        }
        let head = header(entries.map { ($0.name, $0.dtype, $0.shape) }, metadata: rank == 0 ? metadata : [:])

        // 1. The file, at its temporary name.
        var file: AtomicFile.SharedFile?, dataStart = head.bytes.count
        if rank == 0 {
            var failure: String?
            do { file = try AtomicFile.SharedFile.create(path, size: head.bytes.count + head.dataBytes, head: head.bytes) } catch {
                failure = "\(error)"
            }
            for r in 1..<world.size {
                try world.send(named: [], metadata: file.map { ["file": $0.temporary, "data": String(dataStart)] } ?? ["error": failure ?? ""],
                               to: r, tag: tag)
            }
            if let failure { throw LoomError.io("checkpoint not written: \(failure)") }
        } else {
            let meta = try world.receiveNamed(from: 0, tag: tag).metadata
            guard let temporary = meta["file"], let start = meta["data"].flatMap({ Int($0) }) else {
                throw LoomError.io("checkpoint not written: rank 0: \(meta["error"] ?? "no file")")
            }
            file = AtomicFile.SharedFile(path: path, temporary: temporary)
            dataStart = start
        }

        // 2. This rank's pieces, in file order.
        var runs: [(offset: Int, length: Int, crc: UInt32)] = [], failure: String?
        do {
            let writer = try file!.open()
            var begin = dataStart  // where the entry's data starts
            for entry in entries {
                let size = entry.dtype.byteSize
                for piece in entry.pieces {
                    try withBytes(of: try piece.make(), count: piece.count, dtype: entry.dtype, "writing '\(path)': a piece of '\(entry.name)'") { raw in
                        try writer.write(raw, at: begin + piece.offset * size)
                        runs.append((begin + piece.offset * size, raw.count, crc(raw)))
                    }
                }
                begin += entry.count * size
            }
            try writer.close()
            if rank == 0 { file!.creatorWrote() }
        } catch { failure = "\(error)" }

        // 3. Everyone has written (or failed); rank 0 hears how.
        try world.barrier(timeout: timeout)
        let report = runs.map { "\($0.offset),\($0.length),\($0.crc)" }.joined(separator: ";")
        guard rank == 0 else {
            try world.send(named: [], metadata: failure.map { ["error": $0] } ?? ["runs": report], to: 0, tag: tag)
            let outcome = try world.receiveNamed(from: 0, tag: tag).metadata
            if let error = outcome["error"] { throw LoomError.io("checkpoint not written: \(error)") }
            return
        }
        var failures = failure.map { ["rank 0: \($0)"] } ?? []
        var all = runs
        for r in 1..<world.size {
            let meta = try world.receiveNamed(from: r, tag: tag).metadata
            if let error = meta["error"] { failures.append("rank \(r): \(error)"); continue }
            for run in (meta["runs"] ?? "").split(separator: ";") {
                let f = run.split(separator: ",").compactMap { Int($0) }
                guard f.count == 3 else { failures.append("rank \(r): a malformed report '\(run)'"); break }
                all.append((f[0], f[1], UInt32(truncatingIfNeeded: f[2])))
            }
        }

        // 4. The checksum over the header and the pieces in file order; the file in place.
        do {
            guard failures.isEmpty else { throw LoomError.io(failures.joined(separator: "; ")) }
            var checksum = crc(head.bytes)
            var at = head.bytes.count
            for run in all.sorted(by: { $0.offset < $1.offset }) {
                guard run.offset == at else {
                    throw LoomError.io("the ranks' pieces of '\(path)' \(run.offset < at ? "overlap" : "leave a gap") at byte \(min(at, run.offset))")
                }
                checksum = UInt32(crc32_combine(uLong(checksum), uLong(run.crc), off_t(run.length)))
                at += run.length
            }
            guard at == head.bytes.count + head.dataBytes else {
                throw LoomError.io("the ranks' pieces of '\(path)' end at byte \(at) of \(head.bytes.count + head.dataBytes)")
            }
            try file!.publish(patch: Array(hex8(checksum).utf8), at: head.checksumAt)
        } catch {
            file!.discard()
            for r in 1..<world.size { try world.send(named: [], metadata: ["error": "\(error)"], to: r, tag: tag) }
            throw LoomError.io("checkpoint not written: \(error)")
        }
        for r in 1..<world.size { try world.send(named: [], metadata: ["ok": "1"], to: r, tag: tag) }
    }
}
