import XCTest
import LoomParallel

/// Schedules as pure data: no tensors, no communication.
final class ScheduleTests: XCTestCase {
    func testInstructionCountsAndPairing() throws {
        for kind in Schedule.Kind.allCases {
            for (k, m) in [(2, 4), (2, 8), (4, 8), (4, 2), (1, 3)] {
                let s = Schedule(kind, stages: k, microBatches: m)
                let report = try ScheduleCheck().run(s)  // throws on unmatched sends or deadlock
                for stage in 0..<k {
                    let c = report.instructionCounts[stage]
                    XCTAssertEqual(c["forward"], m); XCTAssertEqual(c["backward"], m)
                    XCTAssertEqual(c["sendActivation"] ?? 0, stage < k - 1 ? m : 0)
                    XCTAssertEqual(c["recvActivation"] ?? 0, stage > 0 ? m : 0)
                    XCTAssertEqual(c["sendGradient"] ?? 0, stage > 0 ? m : 0)
                    XCTAssertEqual(c["recvGradient"] ?? 0, stage < k - 1 ? m : 0)
                    XCTAssertEqual(c["optimizerStep"], 1)
                }
            }
        }
    }

    func testInFlightActivations() throws {
        let (k, m) = (4, 8)
        let gpipe = try ScheduleCheck().run(Schedule(.gpipe, stages: k, microBatches: m))
        XCTAssertEqual(gpipe.peakInFlight, [8, 8, 8, 8])
        let ofob = try ScheduleCheck().run(Schedule(.oneFOneB, stages: k, microBatches: m))
        XCTAssertEqual(ofob.peakInFlight, (0..<k).map { k - $0 })  // K - stage
        let few = try ScheduleCheck().run(Schedule(.oneFOneB, stages: 4, microBatches: 2))
        XCTAssertEqual(few.peakInFlight, [2, 2, 2, 1])  // capped by M
    }

    func testPredictedBubbleIsTheTheoreticalOne() throws {
        for kind in Schedule.Kind.allCases {
            for (k, m) in [(2, 8), (4, 8), (4, 16)] {
                let s = Schedule(kind, stages: k, microBatches: m)
                let r = try ScheduleCheck().run(s)
                for b in r.bubble { XCTAssertEqual(b, s.theoreticalBubble, accuracy: 1e-9, "\(kind) K=\(k) M=\(m)") }
            }
        }
    }

    func testBrokenScheduleIsRejectedBeforeRunning() {
        XCTAssertThrowsError(try ScheduleCheck().run(ScheduleTests.swapped())) { e in
            XCTAssertTrue("\(e)".contains("expects activation of micro-batch 1 but stage 0 sent micro-batch 0 first"), "\(e)")
        }
        XCTAssertThrowsError(try ScheduleCheck().run(ScheduleTests.deadlocked())) { e in
            XCTAssertTrue("\(e)".contains("deadlocks"), "\(e)")
        }
    }

    /// GPipe on 2 stages whose second stage receives micro-batch 1 before 0.
    static func swapped() -> Schedule {
        Schedule(custom: .gpipe, stages: 2, microBatches: 2) { stage, steps in
            stage == 1 ? [steps[1], steps[0]] + Array(steps[2...]) : steps
        }
    }

    /// Stage 0 waits for a gradient before it has sent any activation.
    static func deadlocked() -> Schedule {
        Schedule(custom: .gpipe, stages: 2, microBatches: 1) { stage, steps in
            stage == 0 ? [steps[1], steps[0], steps[2]] : steps
        }
    }
}
