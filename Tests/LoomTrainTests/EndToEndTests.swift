import Foundation
import XCTest

/// `loom train`, `eval` and `generate` end to end.
final class EndToEndTests: CLITestCase {
    func testDefaultRunReachesAccuracyAndWritesOutputs() throws {
        let r = try loom(["train", "--out", work])
        XCTAssertEqual(r.status, 0, r.err)
        let run = work + "/mnist-cnn"
        let summary = try json(run + "/summary.json")
        XCTAssertGreaterThanOrEqual(summary["val_accuracy"] as! Double, 0.95)
        XCTAssertGreaterThan(summary["wall_s"] as! Double, 0)  // speed is measured by loom bench, not asserted here
        for f in ["metrics.jsonl", "loss.svg", "config.toml", "checkpoint.safetensors"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/" + f), f)
        }
        let first = try JSONSerialization.jsonObject(with: Data(try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)
            .split(separator: "\n")[0].utf8)) as! [String: Any]
        for key in ["step", "epoch", "loss", "lr", "samples_per_s", "elapsed_s"] { XCTAssertNotNil(first[key], key) }
        XCTAssertTrue(r.out.contains("val_accuracy"), r.out)
        let e = try loom(["eval", "--checkpoint", run, "--json"])
        XCTAssertEqual(e.status, 0, e.err)
        XCTAssertEqual(try JSONSerialization.jsonObject(with: Data(e.out.utf8)) as! [String: Any] as NSDictionary?,
                       ["step": summary["steps"]!, "val_loss": summary["val_loss"]!, "val_accuracy": summary["val_accuracy"]!] as NSDictionary)
    }

    /// A run stopped at step k and resumed logs the same losses, bit for bit, as the run
    /// that was never stopped: GPT with dropout (generator state) and AdamW; CNN with
    /// batch norm (running statistics) and Adam.
    /// Where the processor has no bf16 instructions (`LOOM_BF16_GEMM=widen` stands in for one)
    /// bf16 training runs the same products on operands widened to float32 (exact), the fused
    /// attention included: the losses of Loom's bf16 kernel, to 3e-5 (sums in other orders
    /// can round an operand to the next bf16 value; EmulatedCUDAEndToEndTests says more).
    func testBF16WithoutBF16InstructionsGivesTheKernelsLosses() throws {
        let c = try smallConfig("gpt")
        for path in ["kernel", "widen"] {
            let r = try loom(["train", c, "--precision", "bf16", "--out", work, "--name", path], env: ["LOOM_BF16_GEMM": path])
            XCTAssertEqual(r.status, 0, "\(path): \(r.err)")
        }
        try assertSameLosses("widen", "kernel", tolerance: 3e-5)
    }

    func testResumeIsBitExact() throws {
        let gpt: [String] = ["--model", "gpt", "--steps", "40", "--batch-size", "8", "--out", work]
        let cfg: String = work + "/tiny-gpt.toml"
        try """
        [model]
        kind = "gpt"
        layers = 1
        d_model = 32
        heads = 2
        context = 32
        dropout = 0.1
        [data]
        path = "data/shakespeare.txt"
        [train]
        optimizer = "adamw"
        lr = 0.003
        schedule = "cosine"
        warmup_steps = 5
        log_every = 1
        eval_every = 15
        eval_batches = 2
        """.write(toFile: cfg, atomically: true, encoding: .utf8)
        let cnn: [String] = ["--model", "cnn", "--steps", "30", "--out", work]
        for (args, config) in [(gpt, [cfg]), (cnn, [])] {
            let whole = try loom(["train"] + config + args + ["--name", "whole"])
            XCTAssertEqual(whole.status, 0, whole.err)
            let first = try loom(["train"] + config + args + ["--name", "split", "--stop-at", "17"])
            XCTAssertEqual(first.status, 0, first.err)
            let resumed = try loom(["train", "--resume", work + "/split"])
            XCTAssertEqual(resumed.status, 0, resumed.err)
            let a = try trainingLosses(work + "/whole"), b = try trainingLosses(work + "/split")
            XCTAssertEqual(a.keys.max(), b.keys.max())
            for step in a.keys.sorted() where step > 17 { XCTAssertEqual(a[step], b[step], "step \(step) of \(args[1])") }
            try FileManager.default.removeItem(atPath: work + "/whole"); try FileManager.default.removeItem(atPath: work + "/split")
        }
    }

    /// A GPT on byte-level BPE, fitted by the run or read from `loom tokenizer train`'s
    /// file: the tokenizer travels in the checkpoint, so a resumed run is bit-exact and
    /// eval and generate tokenize as training did.
    func testBPEModelsResumeBitExactlyAndEvaluateAndGenerateWithTheirSavedTokenizer() throws {
        let tok = try loom(["tokenizer", "train", "--vocab", "300", "data/shakespeare.txt", "--out", work + "/tok.json"])
        XCTAssertEqual(tok.status, 0, tok.err)
        XCTAssertTrue(tok.out.contains("300 tokens ("), tok.out)
        func config(_ name: String, _ tokenizer: String) throws -> String {
            let path = work + "/\(name).toml"
            try """
            [model]
            kind = "gpt"
            layers = 1
            d_model = 32
            heads = 2
            context = 24
            [data]
            path = "data/shakespeare.txt"
            \(tokenizer)
            [train]
            steps = 24
            batch_size = 8
            optimizer = "adamw"
            lr = 0.003
            log_every = 1
            eval_every = 12
            eval_batches = 2
            """.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let fitted = try config("fitted", "tokenizer = \"bpe\"\nvocab_size = 400")
        let whole = try loom(["train", fitted, "--out", work, "--name", "whole"])
        XCTAssertEqual(whole.status, 0, whole.err)
        XCTAssertEqual(try loom(["train", fitted, "--out", work, "--name", "split", "--stop-at", "10"]).status, 0)
        let resumed = try loom(["train", "--resume", work + "/split"])
        XCTAssertEqual(resumed.status, 0, resumed.err)
        let a = try trainingLosses(work + "/whole"), b = try trainingLosses(work + "/split")
        for step in a.keys.sorted() where step > 10 { XCTAssertEqual(a[step], b[step], "step \(step)") }
        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: work + "/whole/summary.json"))) as! [String: Any]
        let loss = try XCTUnwrap(summary["val_loss"] as? Double), bpc = try XCTUnwrap(summary["val_bits_per_char"] as? Double)
        XCTAssertGreaterThan(bpc, loss / log(2) / 4, "bits per character: nats per token x tokens per character / ln 2 (\(bpc))")
        XCTAssertLessThan(bpc, loss / log(2), "a BPE token is more than one character")

        let eval = try loom(["eval", "--checkpoint", work + "/whole", "--json"])
        XCTAssertEqual(eval.status, 0, eval.err)
        let e = try JSONSerialization.jsonObject(with: Data(eval.out.utf8)) as! [String: Any]
        XCTAssertEqual(e["val_loss"] as! Double, loss, accuracy: 1e-4 * loss)
        let g = try loom(["generate", "--checkpoint", work + "/whole", "--prompt", "ROMEO: é😀", "--tokens", "30", "--seed", "1"])
        XCTAssertEqual(g.status, 0, g.err)
        XCTAssertTrue(g.out.hasPrefix("ROMEO: é😀") && g.out.count > 15, g.out)
        XCTAssertFalse(g.err.contains("not in the model's vocabulary"), "BPE encodes any character: \(g.err)")

        let fromFile = try config("file", "tokenizer_file = \"\(work!)/tok.json\"")
        let run = try loom(["train", fromFile, "--out", work, "--name", "file", "--steps", "2"])
        XCTAssertEqual(run.status, 0, run.err)
        let saved = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: work + "/file/summary.json"))) as! [String: Any]
        let fitSaved = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: work + "/whole/summary.json"))) as! [String: Any]
        // Only the token table differs: (400 - 300) tokens x 32.
        XCTAssertEqual((fitSaved["parameters"] as! Int) - (saved["parameters"] as! Int), 100 * 32)
        let missing = try loom(["train", try config("missing", "tokenizer_file = \"nope.json\""), "--out", work])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.err.contains("nope.json"), missing.err)
    }

    /// `kill -9` at any point of a checkpoint's write (a test hook on the writer kills the
    /// process after a given byte of step 10's checkpoint, or between its sync and rename,
    /// or after the rename) leaves step 5's checkpoint or step 10's, whole; `loom eval`
    /// reads it and a resume from it ends with the uninterrupted run's losses, bit for bit.
    func testKillDuringACheckpointWriteLeavesTheOldOrTheNewOneAndResumeTakesIt() throws {
        let cfg = work + "/killed.toml"
        try "[model]\nkind = \"mlp\"\n[train]\nsteps = 20\nbatch_size = 32\nlog_every = 1\neval_every = 5\neval_batches = 2\n"
            .write(toFile: cfg, atomically: true, encoding: .utf8)
        XCTAssertEqual(try loom(["train", cfg, "--out", work, "--name", "whole"]).status, 0)
        let whole = try trainingLosses(work + "/whole")
        let size = try XCTUnwrap(try FileManager.default.attributesOfItem(atPath: work + "/whole/checkpoint.safetensors")[.size] as? Int)
        for (at, step) in [("0", 5), ("1", 5), ("4096", 5), ("\(size / 2)", 5), ("\(size - 1)", 5), ("rename", 5), ("renamed", 10)] {
            let name = "killed-\(at)", run = work + "/" + name
            let k = try loom(["train", cfg, "--out", work, "--name", name], env: ["LOOM_TEST_KILL_WRITE": "checkpoint.safetensors:2:\(at)"])
            XCTAssertEqual(k.status, SIGKILL, "\(name): the hook did not kill the run: \(k.err)")
            let e = try loom(["eval", "--checkpoint", run, "--json"])
            XCTAssertEqual(e.status, 0, "\(name): no loadable checkpoint: \(e.err)")
            XCTAssertEqual((try? JSONSerialization.jsonObject(with: Data(e.out.utf8)) as? [String: Any])?["step"] as? Int, step, name)
            let r = try loom(["train", "--resume", run])
            XCTAssertEqual(r.status, 0, "\(name): \(r.err)")
            XCTAssertEqual(try trainingLosses(run), whole, "\(name): resumed losses differ from the uninterrupted run's")
            let stale = try FileManager.default.contentsOfDirectory(atPath: run).filter { $0.contains(".tmp-") }
            XCTAssertEqual(stale, [], "\(name): the dead writer's temporary file was not cleared by the next write")
        }
    }

    /// A tokenizer file killed mid-write is absent, or the previous one, never a partial
    /// file under its name.
    func testKillDuringATokenizerWriteLeavesNoPartialFile() throws {
        let out = work + "/tok.json", args = ["tokenizer", "train", "--vocab", "300", "data/shakespeare.txt", "--out", out]
        XCTAssertEqual(try loom(args, env: ["LOOM_TEST_KILL_WRITE": "tok.json:1:100"]).status, SIGKILL)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        XCTAssertEqual(try loom(args).status, 0)
        let before = try Data(contentsOf: URL(fileURLWithPath: out))
        XCTAssertEqual(try loom(["tokenizer", "train", "--vocab", "260", "data/shakespeare.txt", "--out", out],
                                env: ["LOOM_TEST_KILL_WRITE": "tok.json:1:100"]).status, SIGKILL)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: out)), before, "the previous tokenizer, intact")
    }

    /// An update that would make the parameters non-finite is never applied: the run stops
    /// before it, naming the step and the parameter, with the last good checkpoint intact;
    /// or, with train.nonfinite = "skip", the step is skipped and counted.
    func testNonFiniteGradientsStopBeforeTheUpdateOrAreSkipped() throws {
        try "[model]\nkind = \"mlp\"\nhidden = [32]\n[train]\nsteps = 4\nbatch_size = 32\noptimizer = \"sgd\"\nmomentum = 0.0\nlr = 1e30\nlog_every = 1\neval_every = 1\n"
            .write(toFile: work + "/diverge.toml", atomically: true, encoding: .utf8)
        let r = try loom(["train", work + "/diverge.toml", "--out", work, "--name", "stop"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
        XCTAssertTrue(r.err.contains("the gradient became ") && r.err.contains(" at step 2 (first parameter affected: net."), r.err)
        // The checkpoint is step 1's, finite, and loads.
        let e = try loom(["eval", "--checkpoint", work + "/stop", "--json"])
        XCTAssertEqual(e.status, 0, e.err)
        XCTAssertTrue(e.out.contains("\"step\":1"), e.out)
        try (String(contentsOfFile: work + "/diverge.toml", encoding: .utf8) + "nonfinite = \"skip\"\n")
            .write(toFile: work + "/skip.toml", atomically: true, encoding: .utf8)
        let s = try loom(["train", work + "/skip.toml", "--out", work, "--name", "skip"])
        XCTAssertEqual(s.status, 0, s.err)
        let last = try String(contentsOfFile: work + "/skip/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }.last { $0["loss"] != nil }
        XCTAssertEqual(last?["skipped_steps"] as? Int, 3, "steps 2, 3 and 4 skipped")
    }

    /// A character-level model evaluated on, or prompted with, text holding characters its
    /// training text did not: each is read as a space, counted, and said once.
    func testUnseenCharactersAreReadAsASpaceAndCounted() throws {
        XCTAssertEqual(try loom(["train", "--model", "gpt", "--steps", "2", "--out", work, "--name", "lm"]).status, 0)
        let plays = try String(contentsOfFile: Self.repo.appendingPathComponent("data/shakespeare.txt").path, encoding: .utf8)
        try (String(plays.prefix(4000)) + "_\u{00E9}_\n").write(toFile: work + "/other.txt", atomically: true, encoding: .utf8)
        let e = try loom(["eval", "--checkpoint", work + "/lm", "--data", work + "/other.txt"])
        XCTAssertEqual(e.status, 0, e.err)
        XCTAssertTrue(e.err.contains("note: 3 characters of '\(work!)/other.txt' are not in the checkpoint's vocabulary"), e.err)
        let g = try loom(["generate", "--checkpoint", work + "/lm", "--prompt", "ROMEO_", "--tokens", "5"])
        XCTAssertEqual(g.status, 0, g.err)
        XCTAssertTrue(g.err.contains("note: 1 characters of the prompt"), g.err)
    }

    func testBadInputsGetOneLineErrorsAndNonZeroExit() throws {
        func expectError(_ args: [String], contains: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let r = try loom(args)
            XCTAssertNotEqual(r.status, 0, "\(args) succeeded", file: file, line: line)
            let lines = r.err.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, "expected one line, got: \(r.err)", file: file, line: line)
            XCTAssertTrue(r.err.contains(contains), "\(r.err) lacks \(contains)", file: file, line: line)
        }
        try expectError(["train", "--data", work + "/missing.csv", "--out", work], contains: "cannot open '\(work!)/missing.csv'")
        try "1,2,3\n4,5\n".write(toFile: work + "/bad.csv", atomically: true, encoding: .utf8)
        try expectError(["train", "--data", work + "/bad.csv", "--out", work], contains: "'\(work!)/bad.csv' line 1: expected 785 values")
        try "[train]\nlearning_rate = 1\n".write(toFile: work + "/c.toml", atomically: true, encoding: .utf8)
        try expectError(["train", work + "/c.toml"], contains: "unknown key 'train.learning_rate'; valid keys in [train]:")
        try expectError(["train", work + "/nope.toml"], contains: "config '\(work!)/nope.toml': cannot read")
        try expectError(["train", "--model", "rnn"], contains: "'rnn' is invalid for '--model <model>'. Please provide one of 'cnn', 'mlp', 'gpt' or 'resnet'")
        try expectError(["train", "--schedule", "zigzag"], contains: "Please provide one of 'gpipe', '1f1b' or 'interleaved'")
        try expectError(["bench", "--device", "npu"], contains: "Please provide one of 'cpu', 'cuda[:N]', 'xla[:N]' or 'tpu[:N]'")
        try expectError(["train", "--model", "mlp", "--tp", "2"], contains: "tensor parallelism splits gpt models only")
        // Flags are held to the same rules as the file's keys.
        try expectError(["train", "--dp", "0"], contains: "parallel.dp must be an integer >= 1, got 0")
        try expectError(["train", "--tp", "0", "--dp", "2"], contains: "parallel.tp must be an integer >= 1, got 0")
        try expectError(["train", "--accumulate", "0"], contains: "train.accumulation_steps must be an integer >= 1, got 0")
        try expectError(["train", "--seed=-1"], contains: "train.seed must be an integer >= 0, got -1")
        try expectError(["train", "--epochs=-1"], contains: "train.epochs must be an integer >= 0, got -1")
        try expectError(["train", "--lr", "inf"], contains: "train.lr must be a finite number >= 0.0")
        try expectError(["generate", "--checkpoint", work + "/x", "--tokens=-1"], contains: "--tokens -1")
        // A text too short for the context: named, not a division by zero.
        try String(repeating: "To be, or not to be. ", count: 50).write(toFile: work + "/short.txt", atomically: true, encoding: .utf8)
        try expectError(["train", "--model", "gpt", "--data", work + "/short.txt", "--out", work],
                        contains: "the validation split has 105 tokens, fewer than one window of model.context + 1 = 129")
        let rows = (0..<20).map { i in (0..<100).map { _ in "1" }.joined(separator: ",") + ",\(i % 10)" }.joined(separator: "\n")
        try (rows + "\n").write(toFile: work + "/small.csv", atomically: true, encoding: .utf8)
        try expectError(["train", "--data", work + "/small.csv", "--out", work, "--batch-size", "4"],
                        contains: "small.csv' line 1: expected 785 values (784 pixels + label), got 101")

        // Checkpoints: build one, then damage copies of it.
        XCTAssertEqual(try loom(["train", "--model", "mlp", "--steps", "5", "--out", work, "--name", "ok"]).status, 0)
        let good = try Data(contentsOf: URL(fileURLWithPath: work + "/ok/checkpoint.safetensors"))
        try good.prefix(good.count / 2).write(to: URL(fileURLWithPath: work + "/truncated.safetensors"))
        try expectError(["eval", "--checkpoint", work + "/truncated.safetensors"], contains: "truncated")
        try Data("not a checkpoint".utf8).write(to: URL(fileURLWithPath: work + "/foreign.safetensors"))
        try expectError(["eval", "--checkpoint", work + "/foreign.safetensors"], contains: "not a safetensors file")
        var corrupt = good; corrupt[corrupt.count - 10] ^= 0x55
        try corrupt.write(to: URL(fileURLWithPath: work + "/corrupt.safetensors"))
        try expectError(["eval", "--checkpoint", work + "/corrupt.safetensors"], contains: "checksum mismatch")
        try expectError(["generate", "--checkpoint", work + "/ok"], contains: "is a mlp model; generate needs a gpt checkpoint")
        try expectError(["train", "--resume", work + "/absent"], contains: "checkpoint '\(work!)/absent/checkpoint.safetensors': cannot read")
        // A failed resume (bad data path) leaves the existing checkpoint as it was.
        try expectError(["train", "--resume", work + "/ok", "--data", work + "/missing.csv"], contains: "cannot open")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: work + "/ok/checkpoint.safetensors")), good)
    }

    func testCheckpointLoadsInPythonSafetensors() throws {
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        probe.arguments = ["python3", "-c", "import safetensors.numpy"]
        probe.standardError = Pipe()
        try probe.run(); probe.waitUntilExit()
        guard probe.terminationStatus == 0 else { throw XCTSkip("python3 with the safetensors package is not installed") }
        XCTAssertEqual(try loom(["train", "--model", "mlp", "--steps", "3", "--out", work, "--name", "py"]).status, 0)
        let check = Process()
        check.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        check.arguments = ["python3", "-c", """
            import sys; from safetensors.numpy import load_file; from safetensors import safe_open
            t = load_file(sys.argv[1]); m = safe_open(sys.argv[1], "np").metadata()
            assert t["model.net.layers.0.weight"].shape == (512, 784), t["model.net.layers.0.weight"].shape
            assert m["loom.step"] == "3", m
            print(len(t))
            """, work + "/py/checkpoint.safetensors"]
        let out = Pipe(); check.standardOutput = out; check.standardError = Pipe()
        try check.run(); check.waitUntilExit()
        XCTAssertEqual(check.terminationStatus, 0, String(data: (check.standardError as! Pipe).fileHandleForReading.readDataToEndOfFile(), encoding: .utf8)!)
    }
}
