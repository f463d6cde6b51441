import Foundation
import LoomDistributed

/// A failure injected for the restart tests: `LOOM_TEST_FAIL_ONCE=rank:step:marker` makes
/// that rank fail as it starts that step (0-based), once: the marker file records that it
/// happened, so the restarted job runs through. An MPI rank dies as a killed process does
/// (SIGKILL); an in-process rank, being a thread, throws the error a dead peer causes.
struct TestFailure {
    let step: Int
    let marker: String
    let rank: Int

    static func fromEnvironment(rank: Int) -> TestFailure? {
        guard let spec = ProcessInfo.processInfo.environment["LOOM_TEST_FAIL_ONCE"] else { return nil }
        let parts = spec.split(separator: ":", maxSplits: 2).map(String.init)
        guard parts.count == 3, let r = Int(parts[0]), let s = Int(parts[1]), r == rank else { return nil }
        return TestFailure(step: s, marker: parts[2], rank: r)
    }

    func fire(at current: Int) throws {
        guard current == step, !FileManager.default.fileExists(atPath: marker) else { return }
        _ = FileManager.default.createFile(atPath: marker, contents: nil)
        if MPICommunicator.launchedByMPI { kill(getpid(), SIGKILL) }
        throw CommError("rank \(rank): died at step \(step + 1) (injected by LOOM_TEST_FAIL_ONCE)")
    }
}
