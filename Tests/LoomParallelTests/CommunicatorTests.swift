import XCTest
import LoomCore
import LoomDistributed

final class CommunicatorTests: XCTestCase {
    func testCollectivesInProcess() throws {
        let out = try InProcessWorld.run(size: 3) { comm -> [[Float]] in
            let r = Float(comm.rank)
            let a = Tensor([r, 10 * r, 1], shape: [3])
            try comm.allReduce(a, .sum)
            let b = Tensor([r + 1, 2], shape: [2])
            try comm.allReduce(b, .average)
            let c = Tensor([r, r], shape: [2])
            try comm.broadcast(c, root: 2)
            let g = try Tensor.zeros([6])
            try comm.allGather(Tensor([r, -r], shape: [2]), into: g)
            let s = try Tensor.zeros([2])
            try comm.reduceScatter(Tensor([1, 2, 3, 4, 5, 6].map { $0 * (r + 1) }, shape: [6]), into: s, .sum)
            return [a.floats, b.floats, c.floats, g.floats, s.floats]
        }
        for (rank, r) in out.enumerated() {
            XCTAssertEqual(r[0], [3, 30, 3])
            XCTAssertEqual(r[1], [2, 2])
            XCTAssertEqual(r[2], [2, 2])
            XCTAssertEqual(r[3], [0, 0, 1, -1, 2, -2])
            let chunk: [Float] = [[1, 2], [3, 4], [5, 6]][rank]
            XCTAssertEqual(r[4], chunk.map { $0 * 6 })
        }
    }

    func testPointToPointSplitAndAsyncOrder() throws {
        let out = try InProcessWorld.run(size: 4) { comm -> [Float] in
            // Pairs (0,1) and (2,3); inside each pair, the rank with the larger world rank first.
            let sub = try comm.split(color: comm.rank / 2, key: -comm.rank)
            let t = Tensor([Float(comm.rank)], shape: [1])
            let reqs = (0..<3).map { _ in sub.allReduceAsync(t, .sum, label: "x") }
            for r in reqs { try r.wait() }  // three sums in order: s, 2s, 4s (s = the pair's sum)
            if comm.rank == 0 { try comm.send(Tensor([42, 43], shape: [2]), to: 3, tag: 7) }
            let got = try Tensor.zeros([2])
            if comm.rank == 3 { try comm.receive(into: got, from: 0, tag: 7) }
            return [Float(sub.rank), Float(sub.size), t.item, got.floats[1]]
        }
        XCTAssertEqual(out[0], [1, 2, 4 * 1, 0])  // pair {0, 1}: s = 1; world rank 0 has key 0 > -1, so sub-rank 1
        XCTAssertEqual(out[1][0], 0)
        XCTAssertEqual(out[3], [0, 2, 4 * 5, 43])
    }

    func testARankFailingInsideASubgroupAbortsThatGroupAtOnce() throws {
        // 4 ranks in two groups of 2 (as tensor-parallel groups); rank 3 dies before its
        // group's all-reduce. Rank 2 waits in that group, not the world: it must be told
        // at once, not after the timeout: every rank's error is the abort naming rank 3's
        // cause, none a time-out (the 600 s timeout only catches a hang).
        XCTAssertThrowsError(try InProcessWorld.run(size: 4, timeout: 600) { comm -> Void in
            let group = try comm.split(color: comm.rank / 2, key: comm.rank)
            if comm.rank == 3 { throw CommError("rank 3 lost its device") }
            do { try group.allReduce(Tensor([1], shape: [1])); try comm.barrier() } catch {
                XCTAssertTrue("\(error)".contains("aborted because rank 3 failed: rank 3 lost its device"), "rank \(comm.rank): \(error)")
                throw error
            }
        }) { e in XCTAssertTrue("\(e)".contains("rank 3 lost its device"), "\(e)") }
    }

    /// A rank whose thread ends without returning (as a killed process does, with nothing
    /// thrown) is seen dead at once: the others' collectives fail naming it, not after the
    /// timeout.
    func testARankWhoseThreadEndsIsSeenDeadByTheOthers() throws {
        XCTAssertThrowsError(try InProcessWorld.run(size: 3, timeout: 600) { comm -> Void in
            if comm.rank == 1 { Thread.exit() }
            do { try comm.allReduce(Tensor([1], shape: [1])) } catch {
                XCTAssertTrue("\(error)".contains("aborted because rank 1: its thread ended without returning (the rank died)"), "\(error)")
                throw error
            }
        }) { e in XCTAssertEqual("\(e)", "rank 1: its thread ended without returning (the rank died)") }
    }

    func testMismatchedCollectivesFailOnEveryRankNamingBothSides() throws {
        // Rank 1 all-reduces 3 elements where rank 0 all-reduces 4: both fail, at once.
        XCTAssertThrowsError(try InProcessWorld.run(size: 2, timeout: 60) { comm -> Void in
            try comm.allReduce(Tensor(Array(repeating: 1, count: 4 - comm.rank), shape: [4 - comm.rank]))
        }) { e in XCTAssertTrue("\(e)".contains("all-reduce of 4 float32") && "\(e)".contains("all-reduce of 3 float32"), "\(e)") }
        // An all-gather meeting a barrier.
        XCTAssertThrowsError(try InProcessWorld.run(size: 2, timeout: 60) { comm -> Void in
            if comm.rank == 0 { try comm.barrier() } else { try comm.allGather(Tensor([1], shape: [1]), into: Tensor.zeros([2])) }
        }) { e in XCTAssertTrue("\(e)".contains("barrier") && "\(e)".contains("all-gather"), "\(e)") }
    }

    func testDeadRankGivesAMessageNamingTheOperationNotAHang() {
        // The timeout is what is tested here; its message says it was reached.
        XCTAssertThrowsError(try InProcessWorld.run(size: 2, timeout: 1) { comm -> Void in
            if comm.rank == 1 { return }  // rank 1 "dies": never joins the all-reduce
            try comm.allReduce(Tensor.ones([4]), .sum, label: "all-reduce of gradient bucket 0")
        }) { e in
            XCTAssertTrue("\(e)".contains("rank 0: all-reduce of gradient bucket 0 timed out after 1 s waiting for rank(s) 1"), "\(e)")
        }
    }
}
