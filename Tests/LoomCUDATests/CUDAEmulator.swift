import Foundation
import XCTest

/// Where the tests find Loom's CUDA emulator: the library the package builds next to
/// this test bundle (`swift build --product LoomCUDAEmulator`; scripts/test.sh does).
enum CUDAEmulator {
    static func path() throws -> String {
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let found = [dir, dir.deletingLastPathComponent()].map { $0.appendingPathComponent("libLoomCUDAEmulator.so").path }
            .first { FileManager.default.fileExists(atPath: $0) }
        guard let found else {
            XCTFail("libLoomCUDAEmulator.so is not built next to \(dir.path): run swift build -c release --product LoomCUDAEmulator")
            throw CancellationError()
        }
        return found
    }
}
