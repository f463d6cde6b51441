import XCTest
import LoomCore

final class ErrorMessageTests: XCTestCase {
    func message(_ body: () throws -> Any) -> String {
        do { _ = try body(); return "no error" } catch { return "\(error)" }
    }

    func testMatmulNamesBothShapes() {
        let m = message { try Tensor.zeros([32, 784]).matmul(.zeros([512, 10])) }
        XCTAssertEqual(m, "shape mismatch: matmul: [32, 784] x [512, 10]: inner dimensions differ (784 vs 512)")
    }

    func testOtherShapeErrors() {
        XCTAssertTrue(message { try Tensor.zeros([2, 3]) + .zeros([4]) }.contains("[2, 3] and [4] do not broadcast"))
        XCTAssertTrue(message { try Tensor.zeros([2, 3]).reshaped([4]) }.contains("reshape: [2, 3] (6 elements) to [4]"))
        XCTAssertTrue(message { try Tensor.zeros([2, 3]).linear(weight: .zeros([4, 5]), bias: nil) }.contains("[2, 3] x weight [4, 5]"))
        XCTAssertTrue(message { try Tensor.zeros([2, 3]).crossEntropy(targets: Tensor(indices: [0, 1, 2], shape: [3])) }
            .contains("logits [2, 3] and targets [3]"))
        XCTAssertTrue(message { try Tensor.zeros([2, 3]).crossEntropy(targets: Tensor(indices: [0, 7], shape: [2])) }
            .contains("target 7 at row 1"))
        XCTAssertTrue(message { try Tensor.embedding(.zeros([3, 2]), indices: Tensor(indices: [5], shape: [1])) }
            .contains("index 5"))
        XCTAssertTrue(message { try Tensor.zeros([1, 3, 8, 8]).conv2d(weight: .zeros([4, 2, 3, 3]), bias: nil) }
            .contains("input [1, 3, 8, 8] with weight [4, 2, 3, 3]"))
    }
}
