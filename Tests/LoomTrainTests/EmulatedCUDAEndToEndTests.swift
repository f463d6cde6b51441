import Foundation
import XCTest

/// `loom train --device cuda` end to end, on Loom's CUDA emulator (the CUDA backend's
/// code and its kernels' CUDA C source, run on the CPU; see docs/cuda.md): the same losses
/// as the CPU run for every model and parallel layout, checkpoints that move between the
/// devices, TF32 within its tolerance. It proves the backend's logic, not its speed.
final class EmulatedCUDAEndToEndTests: CLITestCase {
    var emulator: [String: String] {
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let path = [dir, dir.deletingLastPathComponent()].map { $0.appendingPathComponent("libLoomCUDAEmulator.so").path }
            .first { FileManager.default.fileExists(atPath: $0) }
        if path == nil { XCTFail("libLoomCUDAEmulator.so is not built: run swift build -c release --product LoomCUDAEmulator") }
        return ["LOOM_CUDA_EMULATOR": path ?? "missing"]
    }

    @discardableResult
    func train(_ args: [String], name: String, cuda: Bool) throws -> String {
        let r = try loom(["train"] + args + ["--out", work, "--name", name] + (cuda ? ["--device", "cuda"] : []), env: cuda ? emulator : [:])
        XCTAssertEqual(r.status, 0, "\(name): \(r.err)")
        return r.out + r.err
    }

    func testMLPCNNAndGPTTrainOnEmulatedCUDAWithTheCPUsLosses() throws {
        for model in ["mlp", "cnn", "gpt"] {
            let c = try smallConfig(model)
            try train([c], name: "cpu-\(model)", cuda: false)
            let out = try train([c], name: "cuda-\(model)", cuda: true)
            XCTAssertTrue(out.contains("on cuda:0 (Loom CUDA emulator"), "the run names its device: \(out)")
            try assertSameLosses("cuda-\(model)", "cpu-\(model)")
        }
    }

    /// Each in-process rank has an emulated GPU of its own, so the collectives are NCCL's
    /// (the emulator's NCCL: queued on the streams, no host staging); with LOOM_NCCL=0 they
    /// go through host memory. ZeRO-3's gathers and reduce-scatters too.
    func testDataTensorAndPipelineParallelGPTOnEmulatedCUDAMatchTheSingleProcessCPURun() throws {
        let c = try smallConfig("gpt")
        try train([c], name: "cpu", cuda: false)
        for (name, flags) in [("dp2", ["--dp", "2"]), ("tp2", ["--tp", "2"]), ("pp2", ["--pp", "2", "--micro-batches", "2"]),
                              ("dp2-zero3", ["--dp", "2", "--zero", "3"])] {
            let out = try train([c] + flags, name: "cuda-\(name)", cuda: true)
            XCTAssertTrue(out.contains("collectives: NCCL"), "\(name) went through NCCL: \(out)")
            try assertSameLosses("cuda-\(name)", "cpu")
        }
        let r = try loom(["train", c, "--out", work, "--name", "cuda-dp2-host", "--device", "cuda", "--dp", "2"],
                         env: emulator.merging(["LOOM_NCCL": "0"]) { $1 })
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("collectives: through host memory (NCCL not loaded on every rank: LOOM_NCCL=0)"), r.out)
        try assertSameLosses("cuda-dp2-host", "cpu")
    }

    /// The rest of the README's "every model and layout" on CUDA: ResNet-20 with batch
    /// norm, alone, under dp 2 (synchronised batch norm; ZeRO-1) and with gradient accumulation;
    /// the CNN cut into two pipeline stages; dp 2 x tp 2 x pp 2 of the GPT (8 ranks).
    func testResNetsImagePipelinesAndEveryAxisAtOnceOnEmulatedCUDAMatchTheCPU() throws {
        let resnet = try resNetConfig()
        try train([resnet], name: "cpu-resnet", cuda: false)
        for (name, flags) in [("resnet", []), ("resnet-dp2", ["--dp", "2"]), ("resnet-dp2-zero1", ["--dp", "2", "--zero", "1"])] {
            try train([resnet] + flags, name: "cuda-\(name)", cuda: true)
            try assertSameLosses("cuda-\(name)", "cpu-resnet")
        }
        try train([resnet, "--accumulate", "2"], name: "cpu-resnet-accumulate", cuda: false)
        try train([resnet, "--accumulate", "2"], name: "cuda-resnet-accumulate", cuda: true)
        try assertSameLosses("cuda-resnet-accumulate", "cpu-resnet-accumulate")
        // The CNN without its batch-normalised block (batch norm over micro-batches sees other statistics).
        let cnn = work + "/cnn-plain.toml"
        try String(contentsOfFile: try smallConfig("cnn"), encoding: .utf8).replacingOccurrences(of: "residual = true", with: "residual = false")
            .write(toFile: cnn, atomically: true, encoding: .utf8)
        try train([cnn], name: "cpu-cnn-plain", cuda: false)
        try train([cnn, "--pp", "2", "--micro-batches", "2"], name: "cuda-cnn-pp2", cuda: true)
        try assertSameLosses("cuda-cnn-pp2", "cpu-cnn-plain")
        let gpt = try smallConfig("gpt")
        try train([gpt], name: "cpu-gpt", cuda: false)
        try train([gpt, "--dp", "2", "--tp", "2", "--pp", "2", "--micro-batches", "2"], name: "cuda-gpt-3d", cuda: true)
        try assertSameLosses("cuda-gpt-3d", "cpu-gpt")
    }

    /// `loom check`, the conformance suite where there is no Swift (the GPU check runs it):
    /// every case within tolerance on the emulated GPU, said as JSON; a device that does
    /// not open is a one-line error.
    func testTheConformanceSuiteRunsFromTheCommandLine() throws {
        let r = try loom(["check", "--device", "cuda", "--json"], env: emulator)
        XCTAssertEqual(r.status, 0, r.err)
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any], r.out)
        XCTAssertEqual(report["passed"] as? Bool, true, r.out)
        XCTAssertEqual(report["disagreements"] as? [String], [])
        XCTAssertGreaterThan(report["cases"] as? Int ?? 0, 30)
        let missing = try loom(["check", "--device", "cuda"], env: ["LOOM_CUDA_EMULATOR": ""])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.err.contains("--device cuda"), missing.err)
    }

    func testCheckpointsMoveBetweenTheCPUAndCUDA() throws {
        try assertCheckpointsMoveBothWays(try smallConfig("gpt"), device: "cuda") { try train($0, name: $1, cuda: $2) }
    }

    /// TF32 rounds the matrix products' inputs to 10 mantissa bits: the losses move, by
    /// far less than training does.
    func testTF32StaysWithinItsToleranceOfFloat32() throws {
        let c = try smallConfig("gpt")
        try train([c], name: "fp32", cuda: true)
        try train([c, "--tf32"], name: "tf32", cuda: true)
        try assertSameLosses("tf32", "fp32", tolerance: 1e-2)
        XCTAssertNotEqual(try trainingLosses(work + "/tf32"), try trainingLosses(work + "/fp32"), "TF32 changed nothing: not applied")
    }

    /// bf16 products round their operands to 8 mantissa bits: the CUDA run (cuBLAS GemmEx)
    /// gives the CPU's bf16 losses, and both stay near float32 without being it.
    ///
    /// To 3e-5, not float32's 1e-5: where two implementations sum a product in another
    /// order, an operand one float32 ulp apart can round to the next bf16 value, 2^-8 away.
    /// Measured on an AMD EPYC Zen 5 (family 26) over these 6 steps: the emulated cuBLAS and the CPU's oneDNN
    /// kernels (or its widening path) up to 1.2e-5 apart; bf16 and float32 5e-5 to 8e-5 apart.
    func testBF16OnEmulatedCUDAGivesTheCPUsBF16LossesAndStaysNearFloat32() throws {
        let c = try smallConfig("gpt")
        try train([c], name: "fp32", cuda: true)
        try train([c, "--precision", "bf16"], name: "cpu-bf16", cuda: false)
        let out = try train([c, "--precision", "bf16"], name: "bf16", cuda: true)
        XCTAssertTrue(out.contains("bf16 matrix products"), "the run says its precision: \(out)")
        try assertSameLosses("bf16", "cpu-bf16", tolerance: 3e-5)
        try assertSameLosses("bf16", "fp32", tolerance: 1e-2)
        XCTAssertNotEqual(try trainingLosses(work + "/bf16"), try trainingLosses(work + "/fp32"), "bf16 changed nothing: not applied")
        XCTAssertTrue(try String(contentsOfFile: work + "/bf16/config.toml", encoding: .utf8).contains("precision = \"bf16\""))
        // Every rank keeps the precision: tensor- and pipeline-parallel bf16 runs give the
        // single-process bf16 losses (on the CPU: this is about the layouts, not CUDA).
        for (name, flags) in [("tp2", ["--tp", "2"]), ("pp2", ["--pp", "2", "--micro-batches", "2"])] {
            try train([c, "--precision", "bf16"] + flags, name: "cpu-bf16-\(name)", cuda: false)
            try assertSameLosses("cpu-bf16-\(name)", "cpu-bf16", tolerance: 2e-5)
        }
    }

    func testEvalAndGenerateOnEmulatedCUDAGiveTheCPUsLossAndText() throws {
        let c = try smallConfig("gpt")
        try train([c], name: "model", cuda: false)
        let evalArgs = ["eval", "--checkpoint", work + "/model", "--json"]
        let cpuEval = try loom(evalArgs), gpuEval = try loom(evalArgs + ["--device", "cuda"], env: emulator)
        XCTAssertEqual(gpuEval.status, 0, gpuEval.err)
        let a = try JSONSerialization.jsonObject(with: Data(cpuEval.out.utf8)) as! [String: Any]
        let b = try JSONSerialization.jsonObject(with: Data(gpuEval.out.utf8)) as! [String: Any]
        XCTAssertEqual(b["val_loss"] as! Double, a["val_loss"] as! Double, accuracy: 1e-5 * (a["val_loss"] as! Double))
        let args = ["generate", "--checkpoint", work + "/model", "--prompt", "ROMEO:", "--tokens", "40", "--seed", "7"]
        let cpu = try loom(args), gpu = try loom(args + ["--device", "cuda"], env: emulator)
        XCTAssertEqual(gpu.status, 0, gpu.err)
        XCTAssertEqual(gpu.out, cpu.out)
        XCTAssertTrue(cpu.out.hasPrefix("ROMEO:") && cpu.out.count > 40, cpu.out)
    }
}
