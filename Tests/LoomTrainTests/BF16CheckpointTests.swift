import LoomCore
import LoomNN
import LoomTrain
import XCTest

/// Restoring a checkpoint writes the parameters' memory, so the bf16 roundings products kept
/// from before (OperandCopy) are dropped and the next bf16 products read the restored values.
final class BF16CheckpointTests: ScratchDirectoryTestCase {
    func testACheckpointRestoredMidTrainingIsWhatTheNextBF16ProductsRead() throws {
        var rng = Philox(seed: 3)
        let x = Tensor.uniform([16, 12], low: -1, high: 1, rng: &rng)
        let y = Tensor(indices: (0..<16).map { _ in Int32(rng.nextInt(below: 4)) }, shape: [16])
        let trained = MLP(sizes: [12, 24, 4], seed: 1), stored = MLP(sizes: [12, 24, 4], seed: 2)
        let opt = SGD(trained.namedParameters(), lr: 0.1, momentum: 0.9)
        for _ in 0..<2 {
            let loss = try withPrecision(.bfloat16) { try trained(x).crossEntropy(targets: y) }
            opt.zeroGrad()
            try loss.backward()
            try opt.step()
        }
        let weights = trained.namedParameters().map(\.tensor).filter { $0.rank == 2 }
        XCTAssertTrue(weights.allSatisfy(\.hasKeptBF16Operand), "the optimizer kept the next roundings")

        let path = work + "/model.safetensors"
        try SafeTensors.write(stored.namedTensors().map { (name: "model." + $0.name, tensor: $0.tensor) }, metadata: [:], to: path)
        try TrainingCheckpoint.restoreModel(SafeTensors.read(path), path: path, into: trained)
        XCTAssertFalse(weights.contains(where: \.hasKeptBF16Operand), "the restore dropped the kept roundings")
        let got = try withPrecision(.bfloat16) { try trained(x) }.floats
        let want = try withPrecision(.bfloat16) { try stored(x) }.floats
        XCTAssertEqual(got.map(\.bitPattern), want.map(\.bitPattern), "the products read the restored weights")
    }
}
