import XCTest
import LoomCore
import LoomDistributed
import LoomNN

/// Synchronised batch norm over two in-process ranks computes what one process computes
/// on the whole batch: outputs, input gradients, parameter gradients (after the
/// data-parallel average) and running statistics.
final class SyncBatchNormTests: XCTestCase {
    func testTwoRanksWithSynchronisedStatisticsEqualOneProcessOnTheWholeBatch() throws {
        var rng = Philox(seed: 3)
        let (n, c, h, w) = (8, 5, 6, 7)
        let x = (0..<(n * c * h * w)).map { _ in 3 + 2 * rng.nextFloat() }  // a large mean: E[x²] - mean² loses digits
        let g = (0..<(n * c * h * w)).map { _ in rng.nextFloat() - 0.5 }
        func run(_ rows: Range<Int>, group: Communicator?) throws -> (y: [Float], dx: [Float], dgamma: [Float], dbeta: [Float], mean: [Float], variance: [Float]) {
            let bn = BatchNorm(c, syncGroup: group)
            var gammaRNG = Philox(seed: 9)
            bn.weight.backend.copy(Tensor((0..<c).map { _ in 0.5 + gammaRNG.nextFloat() }, shape: [c]), into: bn.weight)
            let per = c * h * w
            let input = Tensor(Array(x[(rows.lowerBound * per)..<(rows.upperBound * per)]), shape: [rows.count, c, h, w])
            input.requiresGrad = true
            let y = try bn(input)
            // Each rank's loss is the mean over its rows: the seed is the whole batch's, scaled by the ranks.
            let scale = Float(n) / Float(rows.count)
            try y.backward(seed: Tensor(Array(g[(rows.lowerBound * per)..<(rows.upperBound * per)]).map { $0 * scale }, shape: y.shape))
            return (y.floats, try XCTUnwrap(input.grad).floats.map { $0 / scale }, try XCTUnwrap(bn.weight.grad).floats,
                    try XCTUnwrap(bn.bias.grad).floats, bn.runningMean.floats, bn.runningVar.floats)
        }
        let whole = try run(0..<n, group: nil)
        let parts = try InProcessWorld.run(size: 2) { comm in try run(comm.rank == 0 ? 0..<(n / 2) : (n / 2)..<n, group: comm) }
        func close(_ a: [Float], _ b: [Float], _ what: String) {
            let scale = max(1e-3, a.map(abs).max() ?? 0)
            let worst = zip(a, b).map { abs($0 - $1) }.max() ?? .infinity
            XCTAssertLessThanOrEqual(worst / scale, 2e-6, "\(what): relative error \(worst / scale)")
        }
        close(whole.y, parts[0].y + parts[1].y, "output")
        close(whole.dx, parts[0].dx + parts[1].dx, "input gradient")
        // The data-parallel reduction averages the ranks' (scaled) parameter gradients.
        close(whole.dgamma, zip(parts[0].dgamma, parts[1].dgamma).map { ($0 + $1) / 2 }, "gamma gradient")
        close(whole.dbeta, zip(parts[0].dbeta, parts[1].dbeta).map { ($0 + $1) / 2 }, "beta gradient")
        for p in parts { close(whole.mean, p.mean, "running mean"); close(whole.variance, p.variance, "running variance") }
    }
}
