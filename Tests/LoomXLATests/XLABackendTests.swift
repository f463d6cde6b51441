import LoomCore
import LoomNN
import LoomXLA
import XCTest

/// The XLA backend on the XLA:CPU PJRT plugin (the `xla-cpu-pjrt` wheel, which
/// scripts/test.sh caches from PyPI): Loom's conformance suite, and whole training steps.
final class XLABackendTests: XCTestCase {
    static func backend() throws -> XLABackend {
        if let why = ProcessInfo.processInfo.environment["LOOM_XLA_UNAVAILABLE"] { throw XCTSkip(why) }
        return try XLABackend()
    }

    func testEveryOpAndOptimizerAgreesWithTheCPUBackend() throws {
        let xla = try Self.backend()
        XCTAssertEqual(BackendConformance.disagreements(of: xla), [])
    }
}
