import Foundation
import XCTest

/// Training on images other than MNIST, through the binary: a ResNet-20 on CIFAR-format
/// batches (made here), with augmentation, normalisation from the training split saved in
/// the checkpoint, and bit-exact resume; the CNN on other shapes.
final class ImageTrainingTests: CLITestCase {
    /// Two CIFAR-10 batches of 160 images whose colour says the class.
    func writeCIFAR() throws -> String {
        let dir = work + "/cifar"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var state: UInt64 = 42
        func next() -> UInt64 { state = state &* 6364136223846793005 &+ 1442695040888963407; return state >> 33 }
        for b in 1...2 {
            var bytes: [UInt8] = []
            for _ in 0..<160 {
                let label = Int(next() % 10)
                bytes.append(UInt8(label))
                for c in 0..<3 {
                    for _ in 0..<1024 { bytes.append(UInt8(Int(next() % 60) + (c == label % 3 ? 100 + 10 * label : 0))) }
                }
            }
            try Data(bytes).write(to: URL(fileURLWithPath: dir + "/data_batch_\(b).bin"))
        }
        return dir
    }

    func config(_ data: String, extra: String = "") throws -> String {
        let path = work + "/resnet.toml"
        try """
        [model]
        kind = "resnet"
        depth = 20
        width = 8
        [data]
        path = "\(data)"
        validation_fraction = 0.2
        crop_padding = 4
        flip = true
        \(extra)
        [train]
        steps = 12
        batch_size = 32
        optimizer = "sgd"
        lr = 0.05
        momentum = 0.9
        log_every = 1
        eval_every = 6
        """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func testResNet20TrainsOnCIFARBatchesAndResumesBitExactlyWithAugmentation() throws {
        let cfg = try config(try writeCIFAR())
        let whole = try loom(["train", cfg, "--out", work, "--name", "whole"])
        XCTAssertEqual(whole.status, 0, whole.err)
        XCTAssertTrue(whole.out.contains("resnet") || whole.err.contains("resnet"), whole.out + whole.err)
        let losses = try trainingLosses(work + "/whole")
        XCTAssertLessThan(Double(losses[12]!)!, Double(losses[1]!)!, "the loss falls: \(losses)")
        XCTAssertEqual(try loom(["train", cfg, "--out", work, "--name", "split", "--stop-at", "5"]).status, 0)
        let resumed = try loom(["train", "--resume", work + "/split"])
        XCTAssertEqual(resumed.status, 0, resumed.err)
        let again = try trainingLosses(work + "/split")
        for step in losses.keys.sorted() where step > 5 { XCTAssertEqual(again[step], losses[step], "step \(step) after the resume") }
        // Evaluation uses the normalisation the run saved, and gives the run's last val_loss.
        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: work + "/whole/summary.json"))) as! [String: Any]
        let eval = try loom(["eval", "--checkpoint", work + "/whole", "--json"])
        XCTAssertEqual(eval.status, 0, eval.err)
        let e = try JSONSerialization.jsonObject(with: Data(eval.out.utf8)) as! [String: Any]
        XCTAssertEqual(e["val_loss"] as! Double, summary["val_loss"] as! Double, accuracy: 1e-6)
    }

    /// Synchronised batch norm: two data-parallel ranks normalise with the whole batch's
    /// statistics, so a model with batch norm (the residual CNN) under dp 2 reproduces one
    /// process, augmentation included; with each rank's own statistics it does not.
    /// (A ResNet-20's 19 batch norms amplify the ranks' float32 rounding, 1e-7 per layer,
    /// past 1e-5 within a few steps, so the exactness check uses the shallower model.)
    func testBatchNormModelsUnderDataParallelMatchOneProcessWithSynchronisedStatistics() throws {
        let cfg = try config(try writeCIFAR())
        let cnn = ["--model", "cnn", "--steps", "8"]
        XCTAssertEqual(try loom(["train", cfg] + cnn + ["--out", work, "--name", "one"]).status, 0)
        let dp = try loom(["train", cfg] + cnn + ["--dp", "2", "--out", work, "--name", "dp2"])
        XCTAssertEqual(dp.status, 0, dp.err)
        let one = try trainingLosses(work + "/one"), two = try trainingLosses(work + "/dp2")
        XCTAssertEqual(Set(one.keys), Set(two.keys))
        for (step, a) in one {
            let x = Double(a)!, y = Double(two[step]!)!
            XCTAssertLessThanOrEqual(abs(x - y) / abs(x), 1e-5, "step \(step): dp 2 \(y), one process \(x)")
        }
        try (String(contentsOfFile: cfg, encoding: .utf8) + "\n[parallel]\nsync_batchnorm = false\n").write(toFile: work + "/local.toml", atomically: true, encoding: .utf8)
        XCTAssertEqual(try loom(["train", work + "/local.toml"] + cnn + ["--dp", "2", "--out", work, "--name", "local"]).status, 0)
        let local = try trainingLosses(work + "/local")
        XCTAssertGreaterThan(abs(Double(local[8]!)! - Double(one[8]!)!), 1e-4, "each rank's own statistics change the losses")
    }

    func testAugmentationChangesTheBatchesAndTheCNNTakesOtherShapes() throws {
        let data = try writeCIFAR()
        let plain = try config(data, extra: "")
        try String(contentsOfFile: plain, encoding: .utf8).replacingOccurrences(of: "crop_padding = 4\nflip = true", with: "")
            .write(toFile: work + "/plain.toml", atomically: true, encoding: .utf8)
        XCTAssertEqual(try loom(["train", plain, "--steps", "3", "--out", work, "--name", "aug"]).status, 0)
        XCTAssertEqual(try loom(["train", work + "/plain.toml", "--steps", "3", "--out", work, "--name", "noaug"]).status, 0)
        XCTAssertNotEqual(try trainingLosses(work + "/aug")[2], try trainingLosses(work + "/noaug")[2], "augmentation changed nothing")
        // The reference CNN on 32x32 colour images: its classifier sized for them.
        let cnn = try loom(["train", work + "/plain.toml", "--model", "cnn", "--steps", "3", "--out", work, "--name", "cnn"])
        XCTAssertEqual(cnn.status, 0, cnn.err)
        let bad = try loom(["train", work + "/plain.toml", "--model", "resnet", "--steps", "1", "--out", work, "--name", "bad", "--data", work + "/nowhere.bin"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.err.contains("nowhere.bin"), bad.err)
    }
}
