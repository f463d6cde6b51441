import XCTest
import LoomCore

final class AutodiffTests: XCTestCase {
    func testGradientAccumulatesAcrossBackwardCalls() throws {
        let w = Tensor([2], shape: [1]); w.requiresGrad = true
        try (w * w).sum().backward()       // d/dw w^2 = 2w = 4
        try w.scaled(3).sum().backward()   // + 3
        XCTAssertEqual(w.grad?.floats, [7])
    }

    func testSharedInputSumsBothPaths() throws {
        let x = Tensor([3], shape: [1]); x.requiresGrad = true
        let y = try (x * x) + x            // dy/dx = 2x + 1 = 7
        try y.sum().backward()
        XCTAssertEqual(x.grad?.floats, [7])
    }

    func testLeavesNeverShareGradientStorage() throws {
        let a = Tensor([1, 2], shape: [2]), b = Tensor([3, 4], shape: [2])
        a.requiresGrad = true; b.requiresGrad = true
        try (a + b).sum().backward()
        XCTAssertFalse(a.grad!.storage === b.grad!.storage)
    }

    func testBackwardWithSeed() throws {
        let x = Tensor([1, 2, 3], shape: [3]); x.requiresGrad = true
        try x.square().backward(seed: Tensor([1, 0, 2], shape: [3]))
        XCTAssertEqual(x.grad?.floats, [2, 0, 12])
        XCTAssertThrowsError(try x.square().backward(seed: Tensor([1], shape: [1])))
    }

    func testNoGradScopeRecordsNothing() throws {
        let x = Tensor([1], shape: [1]); x.requiresGrad = true
        let y = try withoutGrad { try x.scaled(2) }
        XCTAssertFalse(y.requiresGrad)
        XCTAssertNil(y.gradFn)
        XCTAssertThrowsError(try y.sum().backward())
        XCTAssertTrue(GradMode.isEnabled)
    }

    func testCustomDifferentiableOp() throws {
        // A user-defined op: forward doubles, backward claims 10 (to prove it is used).
        let x = Tensor([1, 2], shape: [2]); x.requiresGrad = true
        let y = Tensor.differentiable("custom", output: try withoutGrad { try x.scaled(2) }, inputs: [x]) { g in [try g.scaled(10)] }
        try y.sum().backward()
        XCTAssertEqual(x.grad?.floats, [10, 10])
    }

    func testDeepGraphDoesNotOverflowTheStack() throws {
        let x = Tensor([1], shape: [1]); x.requiresGrad = true
        var y = x
        for _ in 0..<20_000 { y = try y.shifted(0) }
        try y.sum().backward()
        XCTAssertEqual(x.grad?.floats, [1])
    }
}
