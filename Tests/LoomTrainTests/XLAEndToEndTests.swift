import Foundation
import XCTest

/// `loom train --device xla` end to end on the XLA:CPU PJRT plugin (the `lammps-jax-pjrt-cpu`
/// wheel, cached from PyPI by scripts/test.sh): every model trains with the CPU's losses,
/// data parallel ranks on two XLA devices match one process, checkpoints move between the
/// devices, eval and generate agree. What this proves: Loom's lowering to StableHLO and
/// its PJRT integration. Not TPU numerics or speed (docs/xla.md).
final class XLAEndToEndTests: CLITestCase {
    override func setUpWithError() throws {
        if let why = ProcessInfo.processInfo.environment["LOOM_XLA_UNAVAILABLE"] { throw XCTSkip(why) }
    }

    @discardableResult
    func train(_ args: [String], name: String, xla: Bool) throws -> String {
        let r = try loom(["train"] + args + ["--out", work, "--name", name] + (xla ? ["--device", "xla"] : []))
        XCTAssertEqual(r.status, 0, "\(name): \(r.err)")
        return r.out + r.err
    }

    /// mlp, cnn and gpt over 20 steps to 1e-5 of the CPU's losses. ResNet-20 over its 5 to
    /// 1e-4: batch norm over 16 images makes its training chaotic (CLITestCase.resNetConfig),
    /// and XLA's convolutions sum in orders of their own: on the CPU itself, inputs moved by
    /// 1e-7 move this network's first gradients by 1-3% (measured), and XLA's losses stay
    /// within 9e-5 of the CPU's over the 5 steps.
    func testMLPCNNGPTAndResNetTrainOnXLAWithTheCPUsLosses() throws {
        for (model, tolerance) in [("mlp", 1e-5), ("cnn", 1e-5), ("gpt", 1e-5), ("resnet", 1e-4)] {
            let c = model == "resnet" ? try resNetConfig() : try smallConfig(model)
            let steps = model == "resnet" ? [] : ["--steps", "20"]
            try train([c] + steps, name: "cpu-\(model)", xla: false)
            let out = try train([c] + steps, name: "xla-\(model)", xla: true)
            XCTAssertTrue(out.contains("on xla:0 (cpu, PJRT"), "the run names its device: \(out)")
            try assertSameLosses("xla-\(model)", "cpu-\(model)", tolerance: tolerance)
        }
    }

    /// Two in-process ranks, each on an XLA device of its own (the plugin's devices 0 and
    /// 1), communicating through Loom's communicators (host staging): data parallel (ZeRO-1
    /// and -3 too), tensor parallel and a 1F1B pipeline give the single-process CPU run's
    /// losses.
    func testParallelLayoutsOnTwoXLADevicesMatchOneProcess() throws {
        let c = try smallConfig("gpt")
        try train([c], name: "cpu", xla: false)
        for (name, flags) in [("dp2", ["--dp", "2"]), ("dp2-zero1", ["--dp", "2", "--zero", "1"]), ("dp2-zero3", ["--dp", "2", "--zero", "3"]),
                              ("tp2", ["--tp", "2"]), ("pp2", ["--pp", "2", "--micro-batches", "4"])] {
            try train([c] + flags, name: name, xla: true)
            try assertSameLosses(name, "cpu")
        }
    }

    /// Three steps on one device, the other three on the other, both ways: the losses of
    /// the whole run on one. Then eval and generate on XLA from a checkpoint: the CPU's.
    func testCheckpointsMoveBetweenTheCPUAndXLAAndEvalAndGenerateAgree() throws {
        try assertCheckpointsMoveBothWays(try smallConfig("gpt"), device: "xla") { try train($0, name: $1, xla: $2) }

        let evalArgs = ["eval", "--checkpoint", work + "/whole", "--json"]
        let cpuEval = try loom(evalArgs), xlaEval = try loom(evalArgs + ["--device", "xla"])
        XCTAssertEqual(xlaEval.status, 0, xlaEval.err)
        let a = try JSONSerialization.jsonObject(with: Data(cpuEval.out.utf8)) as! [String: Any]
        let b = try JSONSerialization.jsonObject(with: Data(xlaEval.out.utf8)) as! [String: Any]
        XCTAssertEqual(b["val_loss"] as! Double, a["val_loss"] as! Double, accuracy: 1e-5 * (a["val_loss"] as! Double))
        let args = ["generate", "--checkpoint", work + "/whole", "--prompt", "ROMEO:", "--tokens", "24", "--seed", "7"]
        let cpu = try loom(args), xla = try loom(args + ["--device", "xla"], env: ["LOOM_XLA_LOG": "1"])
        XCTAssertEqual(xla.status, 0, xla.err)
        XCTAssertEqual(xla.out, cpu.out)
        // The position is a value, not a shape: the prompt's program and one for every next token.
        XCTAssertLessThanOrEqual(xla.err.components(separatedBy: "loom: xla: compiled").count - 1, 3, xla.err)
        XCTAssertTrue(cpu.out.hasPrefix("ROMEO:") && cpu.out.count > 24, cpu.out)
    }

    /// Compiled programs outlive the process: a second run of the same job loads every one
    /// from the cache on disk, compiles none, and trains alike; a cache given a size keeps to it.
    func testASecondRunLoadsItsProgramsFromTheCacheOnDisk() throws {
        let c = try smallConfig("mlp"), env = ["LOOM_XLA_CACHE": work + "/programs", "LOOM_XLA_LOG": "1"]
        var logs: [String] = []
        for name in ["first", "second"] {
            let r = try loom(["train", c, "--out", work, "--name", name, "--device", "xla"], env: env)
            XCTAssertEqual(r.status, 0, r.err)
            logs.append(r.err)
        }
        let compiled = logs.map { $0.components(separatedBy: "loom: xla: compiled").count - 1 }
        let loaded = logs.map { $0.components(separatedBy: "from the cache on disk").count - 1 }
        XCTAssertGreaterThan(compiled[0], 0)
        XCTAssertEqual(loaded[0], 0)
        XCTAssertEqual(compiled[1], 0, logs[1])
        XCTAssertEqual(loaded[1], compiled[0], logs[1])
        try assertSameLosses("second", "first", tolerance: 0)
        // Capped at 1 MiB, the cache keeps the programs used last and stays under the cap.
        let capped = work + "/capped"
        let r = try loom(["train", try smallConfig("gpt"), "--out", work, "--name", "capped", "--device", "xla"],
                         env: ["LOOM_XLA_CACHE": capped, "LOOM_XLA_CACHE_MB": "1"])
        XCTAssertEqual(r.status, 0, r.err)
        let files = try FileManager.default.contentsOfDirectory(atPath: capped)
        let bytes = try files.map { try FileManager.default.attributesOfItem(atPath: capped + "/" + $0)[.size] as! Int }.reduce(0, +)
        XCTAssertFalse(files.isEmpty)
        XCTAssertLessThanOrEqual(bytes, 1 << 20)
    }

    /// bf16 products on XLA (dot_general of bf16 operands into float32) give the CPU's bf16
    /// losses to 3e-5, as CUDA's do (EmulatedCUDAEndToEndTests says why not 1e-5), and stay
    /// near float32 without being it.
    func testBF16OnXLAGivesTheCPUsBF16LossesAndStaysNearFloat32() throws {
        let c = try smallConfig("gpt")
        try train([c], name: "fp32", xla: true)
        try train([c, "--precision", "bf16"], name: "cpu-bf16", xla: false)
        try train([c, "--precision", "bf16"], name: "bf16", xla: true)
        try assertSameLosses("bf16", "cpu-bf16", tolerance: 3e-5)
        try assertSameLosses("bf16", "fp32", tolerance: 1e-2)
        XCTAssertNotEqual(try trainingLosses(work + "/bf16"), try trainingLosses(work + "/fp32"), "bf16 changed nothing: not applied")
    }
}
