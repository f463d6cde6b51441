import XCTest
import LoomParallel

/// Schedules as pure data: no tensors, no communication.
final class ScheduleTests: XCTestCase {
    func testInstructionCountsAndPairing() throws {
        for kind in Schedule.Kind.allCases {
            for (k, m) in [(2, 4), (2, 8), (4, 8), (4, 2), (1, 3)] where kind != .interleaved || (k > 1 && m % k == 0) {
                let s = try Schedule(kind, stages: k, microBatches: m)
                let report = try ScheduleCheck().run(s)  // throws on unmatched sends or deadlock
                let v = s.chunks
                for stage in 0..<k {
                    let c = report.instructionCounts[stage]
                    XCTAssertEqual(c[.forward], m * v); XCTAssertEqual(c[.backward], m * v)
                    // Every piece but the last sends activations; every piece but the first, gradients.
                    let sending = (0..<v).filter { s.next(stage: stage, chunk: $0) != nil }.count
                    let receiving = (0..<v).filter { s.previous(stage: stage, chunk: $0) != nil }.count
                    XCTAssertEqual(c[.sendActivation] ?? 0, sending * m, "\(kind) K=\(k) M=\(m) stage \(stage)")
                    XCTAssertEqual(c[.recvActivation] ?? 0, receiving * m)
                    XCTAssertEqual(c[.sendGradient] ?? 0, receiving * m)
                    XCTAssertEqual(c[.recvGradient] ?? 0, sending * m)
                    XCTAssertEqual(c[.optimizerStep], 1)
                }
            }
        }
    }

    func testInterleavedPiecesAndBubble() throws {
        let s = try Schedule(.interleaved, stages: 4, microBatches: 8, chunks: 2)
        // Piece j on stage j mod 4: stage 3's chunk 0 (piece 3) feeds stage 0's chunk 1 (piece 4).
        XCTAssertEqual(s.next(stage: 3, chunk: 0)!.stage, 0); XCTAssertEqual(s.next(stage: 3, chunk: 0)!.chunk, 1)
        XCTAssertNil(s.next(stage: 3, chunk: 1)); XCTAssertNil(s.previous(stage: 0, chunk: 0))
        // Interleaving divides the bubble by about the number of chunks.
        let r = try ScheduleCheck().run(s)
        let plain = try ScheduleCheck().run(try Schedule(.oneFOneB, stages: 4, microBatches: 8))
        XCTAssertEqual(s.theoreticalBubble, 3.0 / 19.0, accuracy: 1e-12)
        for b in r.bubble { XCTAssertLessThan(b, plain.bubble[0]) }
        XCTAssertEqual(r.bubble[0], s.theoreticalBubble, accuracy: 0.03)
        // Megatron's warm-up: 2(K - s - 1) + (v - 1)K forward units before the first backward.
        for stage in 0..<4 {
            let program = s.program(stage: stage)
            let warm = program.prefix { $0.kind != .backward }.filter { $0.kind == .forward }.count
            XCTAssertEqual(warm, 2 * (4 - stage - 1) + 4 + 1, "stage \(stage)")  // + the first steady-state forward
        }
        XCTAssertThrowsError(try Schedule(.interleaved, stages: 4, microBatches: 6)) { e in
            XCTAssertTrue("\(e)".contains("multiple of stages"), "\(e)")
        }
    }

    func testInFlightActivations() throws {
        let (k, m) = (4, 8)
        let gpipe = try ScheduleCheck().run(try Schedule(.gpipe, stages: k, microBatches: m))
        XCTAssertEqual(gpipe.peakInFlight, [8, 8, 8, 8])
        let ofob = try ScheduleCheck().run(try Schedule(.oneFOneB, stages: k, microBatches: m))
        XCTAssertEqual(ofob.peakInFlight, (0..<k).map { k - $0 })  // K - stage
        let few = try ScheduleCheck().run(try Schedule(.oneFOneB, stages: 4, microBatches: 2))
        XCTAssertEqual(few.peakInFlight, [2, 2, 2, 1])  // capped by M
    }

    func testPredictedBubbleIsTheTheoreticalOne() throws {
        for kind in [Schedule.Kind.gpipe, .oneFOneB] {
            for (k, m) in [(2, 8), (4, 8), (4, 16)] {
                let s = try Schedule(kind, stages: k, microBatches: m)
                let r = try ScheduleCheck().run(s)
                for b in r.bubble { XCTAssertEqual(b, s.theoreticalBubble, accuracy: 1e-9, "\(kind) K=\(k) M=\(m)") }
            }
        }
    }

    func testUnbalancedPiecesPredictTheSlowStagesPace() throws {
        let s = try Schedule(.oneFOneB, stages: 2, microBatches: 8)
        // The last piece does 1.5× the work: stage 0 waits for it, stage 1 is busier than in theory.
        let r = try ScheduleCheck(pieceCosts: [1, 1.5]).run(s)
        XCTAssertGreaterThan(r.bubble[0], s.theoreticalBubble + 0.1)
        XCTAssertLessThan(r.bubble[1], s.theoreticalBubble)
        let balanced = try ScheduleCheck(pieceCosts: [2, 2]).run(s)
        XCTAssertEqual(balanced.bubble[0], s.theoreticalBubble, accuracy: 1e-9)
    }

    func testBrokenScheduleIsRejectedBeforeRunning() {
        XCTAssertThrowsError(try ScheduleCheck().run(try ScheduleTests.swapped())) { e in
            XCTAssertTrue("\(e)".contains("expects activation of micro-batch 1 but stage 0 sent micro-batch 0 first"), "\(e)")
        }
        XCTAssertThrowsError(try ScheduleCheck().run(try ScheduleTests.deadlocked())) { e in
            XCTAssertTrue("\(e)".contains("deadlocks"), "\(e)")
        }
    }

    /// GPipe on 2 stages whose second stage receives micro-batch 1 before 0.
    static func swapped() throws -> Schedule {
        try Schedule(custom: .gpipe, stages: 2, microBatches: 2) { stage, steps in
            stage == 1 ? [steps[1], steps[0]] + Array(steps[2...]) : steps
        }
    }

    /// Stage 0 waits for a gradient before it has sent any activation.
    static func deadlocked() throws -> Schedule {
        try Schedule(custom: .gpipe, stages: 2, microBatches: 1) { stage, steps in
            stage == 0 ? [steps[1], steps[0], steps[2]] : steps
        }
    }
}
