import Foundation
import XCTest

/// A test case with a fresh directory for its files (`work`), removed afterwards, and the
/// repository's files at hand (`repoPath`).
class ScratchDirectoryTestCase: XCTestCase {
    var work = ""

    override func setUpWithError() throws {
        work = NSTemporaryDirectory() + "loom-\(type(of: self))-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: work) }

    func repoPath(_ p: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(p).path
    }
}
