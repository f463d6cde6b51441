import XCTest
import LoomCore

final class LayoutGradTests: XCTestCase {
    func testReshapePermuteTranspose() throws {
        try checkGradients("reshape", inputs: [randn([2, 6], seed: 1)]) { try $0[0].reshaped([3, -1]).square() }
        try checkGradients("permute", inputs: [randn([2, 3, 4], seed: 2)]) { try $0[0].permuted([2, 0, 1]) }
        try checkGradients("transpose", inputs: [randn([2, 3, 4], seed: 3)]) { try $0[0].transposed(0, 1) }
        let x = Tensor([1, 2, 3, 4, 5, 6], shape: [2, 3])
        XCTAssertEqual(try x.transposed().floats, [1, 4, 2, 5, 3, 6])
    }

    func testSliceConcatSplit() throws {
        try checkGradients("slice", inputs: [randn([3, 5, 2], seed: 1)]) { try $0[0].slice(axis: 1, 1..<4) }
        try checkGradients("concat", inputs: [randn([2, 3], seed: 2), randn([2, 2], seed: 3)]) { try Tensor.concat($0, axis: 1) }
        try checkGradients("split", inputs: [randn([4, 3], seed: 4)]) { x in
            let parts = try x[0].split([1, 3], axis: 0)
            return try parts[1].sum(axes: [0]).mul(parts[0].reshaped([3]))
        }
        let a = Tensor([1, 2, 3, 4], shape: [2, 2]), b = Tensor([5, 6], shape: [2, 1])
        XCTAssertEqual(try Tensor.concat([a, b], axis: 1).floats, [1, 2, 5, 3, 4, 6])
        XCTAssertEqual(try a.slice(axis: 0, 1..<2).floats, [3, 4])
    }
}
