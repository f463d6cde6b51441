import Foundation
import XCTest

/// Data parallelism through the real binary: in-process ranks (`--dp N`) and MPI
/// processes (`loom launch`, i.e. mpirun), against the single-process run.
final class DistributedEndToEndTests: CLITestCase {
    var mpirunAvailable: Bool {
        (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").contains {
            FileManager.default.isExecutableFile(atPath: "\($0)/mpirun")
        }
    }

    /// The reference workloads' shapes, 20 steps, every step logged.
    func config(_ kind: String) throws -> String {
        let path = work + "/\(kind).toml"
        let text = kind == "gpt" ? """
            [model]
            kind = "gpt"
            layers = 4
            d_model = 128
            heads = 4
            context = 128
            [data]
            path = "data/shakespeare.txt"
            [train]
            steps = 20
            batch_size = 16
            optimizer = "adamw"
            lr = 0.0003
            weight_decay = 0.01
            log_every = 1
            eval_every = 20
            eval_batches = 2
            """ : """
            [model]
            kind = "mlp"
            hidden = [512, 512]
            [train]
            steps = 20
            batch_size = 128
            optimizer = "sgd"
            lr = 0.01
            momentum = 0.9
            log_every = 1
            """
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func losses(_ run: String) throws -> [Int: Double] {
        try trainingLosses(work + "/" + run).mapValues { Double($0)! }
    }

    func assertMatches(_ run: String, _ reference: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let a = try losses(run), b = try losses(reference)
        XCTAssertEqual(a.count, 20, "\(run) logged \(a.count) steps", file: file, line: line)
        for (step, x) in b {
            let y = try XCTUnwrap(a[step], file: file, line: line)
            XCTAssertLessThanOrEqual(abs(x - y) / abs(x), 1e-5, "\(run) step \(step): \(y) vs \(x)", file: file, line: line)
        }
    }

    func testDataParallelMatchesSingleProcessInProcessAndUnderMPI() throws {
        for kind in ["mlp", "gpt"] {
            let cfg = try config(kind)
            XCTAssertEqual(try loom(["train", cfg, "--out", work, "--name", "\(kind)-1"]).status, 0)
            for n in [2, 4] {
                for zero in ["0", "1", "2", "3"] {
                    let name = "\(kind)-dp\(n)-zero\(zero)"
                    let r = try loom(["train", cfg, "--dp", "\(n)", "--zero", zero, "--out", work, "--name", name])
                    XCTAssertEqual(r.status, 0, r.err)
                    try assertMatches(name, "\(kind)-1")
                }
            }
            for zero in ["0", "3"] {
                let acc = try loom(["train", cfg, "--dp", "2", "--zero", zero, "--accumulate", "2", "--out", work, "--name", "\(kind)-dp2-acc2-zero\(zero)"])
                XCTAssertEqual(acc.status, 0, acc.err)
                try assertMatches("\(kind)-dp2-acc2-zero\(zero)", "\(kind)-1")
            }
            guard mpirunAvailable else { continue }
            for zero in ["0", "1", "2", "3"] {
                let r = try loom(["launch", "-n", "2", "--", "train", cfg, "--zero", zero, "--out", work, "--name", "\(kind)-mpi2-\(zero)"])
                XCTAssertEqual(r.status, 0, r.err)
                try assertMatches("\(kind)-mpi2-\(zero)", "\(kind)-1")
            }
            // As between two hosts: Open MPI over TCP only, its shared-memory transport off.
            let tcp = try loom(["launch", "-n", "2", "--", "train", cfg, "--out", work, "--name", "\(kind)-mpi2-tcp"],
                               env: ["OMPI_MCA_btl": "tcp,self"])
            XCTAssertEqual(tcp.status, 0, tcp.err)
            try assertMatches("\(kind)-mpi2-tcp", "\(kind)-1")
            let metrics = try String(contentsOfFile: work + "/\(kind)-mpi2-0/metrics.jsonl", encoding: .utf8)
            XCTAssertTrue(metrics.contains("\"comm_wait_s\""), "per-step timing breakdown missing")
        }
        if !mpirunAvailable { throw XCTSkip("mpirun not installed: the in-process ranks were checked, the MPI ranks were not") }
    }

    /// Two ranks started with different models (one rank's command line has a typo) call
    /// all-reduces of different sizes. With `LOOM_CHECK_COLLECTIVES=1` every rank stops at
    /// the first one with an error naming both sides, instead of pairing the wrong calls.
    func testRanksInDifferentCollectivesFailNamingBothSidesUnderMPI() throws {
        guard mpirunAvailable else { throw XCTSkip("mpirun not installed") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        // Two app contexts (MPMD); `-x` belongs to each.
        let rank = { (model: String) in
            ["-n", "1", "-x", "LOOM_CHECK_COLLECTIVES=1", "-x", "LOOM_THREADS=1", self.binary, "train", "--model", model, "--steps", "3",
             "--out", self.work!, "--name", "mixed"]
        }
        p.arguments = ["mpirun", "--allow-run-as-root", "--oversubscribe"] + rank("mlp") + [":"] + rank("cnn")
        p.currentDirectoryURL = Self.repo
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertNotEqual(p.terminationStatus, 0, text)
        // Each rank names its own call and the other's (mlp's first weight is 512 x 784 floats, the cnn's 16 x 1 x 5 x 5).
        XCTAssertTrue(text.contains("rank 0: broadcast of 1605632 bytes from rank 0 (broadcast from rank 0) met rank 1's broadcast of 1600 bytes"), text)
        XCTAssertTrue(text.contains("rank 1: broadcast of 1600 bytes from rank 0 (broadcast from rank 0) met rank 0's broadcast of 1605632 bytes"), text)
        XCTAssertTrue(text.contains("the ranks called different collectives"), text)
    }

    /// Checkpoints are keyed by global parameter names: saved under one layout (4 ranks
    /// with sharded optimizer state or fully sharded; or 1 process), resumed under another.
    func testCheckpointFromDataParallelRunResumesOnOtherRankCounts() throws {
        let cfg = try config("gpt")
        XCTAssertEqual(try loom(["train", cfg, "--out", work, "--name", "whole"]).status, 0)
        /// Run `name` saved at step 10 under `saved`, resumed under `resumed`: the uninterrupted losses.
        func assertResumes(_ name: String, saved: [String], resumed: [String], line: UInt = #line) throws {
            XCTAssertEqual(try loom(["train", cfg, "--out", work, "--name", name, "--stop-at", "10"] + saved).status, 0, line: line)
            let r = try loom(["train", "--resume", work + "/" + name] + resumed)
            XCTAssertEqual(r.status, 0, r.err, line: line)
            try assertMatches(name, "whole", line: line)
        }
        try assertResumes("split", saved: ["--dp", "4", "--zero", "1"], resumed: ["--dp", "2", "--zero", "0"])
        try assertResumes("other", saved: [], resumed: ["--dp", "2", "--zero", "1"])
        // Fully sharded (the checkpoint is whole all the same), resumed as a pipeline; and back.
        try assertResumes("sharded", saved: ["--dp", "4", "--zero", "3"], resumed: ["--dp", "2", "--pp", "2", "--zero", "0"])
        try assertResumes("to-sharded", saved: [], resumed: ["--dp", "2", "--zero", "3"])
    }

    /// A rank's memory budget (`LOOM_MEMORY_LIMIT`) is enforced on its tensors: a run
    /// past it stops on every rank with one line naming the rank, the bytes held and the
    /// limit; one within it trains; a budget that is not a byte count is refused.
    func testAMemoryLimitStopsARunPastItNamingTheBytesAndLetsOneWithinItTrain() throws {
        let cfg = try config("gpt")
        let over = try loom(["train", cfg, "--dp", "2", "--out", work, "--name", "over"], env: ["LOOM_MEMORY_LIMIT": "2M"])
        XCTAssertNotEqual(over.status, 0)
        XCTAssertTrue(over.err.contains("out of memory: rank ") && over.err.contains("would pass its limit of 2.00 MiB (2097152 bytes) (LOOM_MEMORY_LIMIT)"), over.err)
        let within = try loom(["train", cfg, "--dp", "2", "--zero", "3", "--out", work, "--name", "within"], env: ["LOOM_MEMORY_LIMIT": "1G"])
        XCTAssertEqual(within.status, 0, within.err)
        let bad = try loom(["train", cfg, "--out", work, "--name", "bad"], env: ["LOOM_MEMORY_LIMIT": "lots"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.err.contains("LOOM_MEMORY_LIMIT = 'lots' is not a byte count"), bad.err)
    }

    /// A GPT whose model states (16Ψ = 51 MB: Ψ = 3.2M, AdamW) are past a 40 MB budget per
    /// rank cannot start at ZeRO-0; at ZeRO-3 over 4 ranks (16Ψ/4 = 13 MB each) it trains,
    /// saves its checkpoint and resumes within the same budget, with the losses of the run
    /// that was not interrupted.
    func testAModelPastOneRanksBudgetTrainsSavesAndResumesFullySharded() throws {
        let cfg = work + "/wide.toml"
        try String(contentsOfFile: try config("gpt"), encoding: .utf8)
            .replacingOccurrences(of: "d_model = 128", with: "d_model = 256")
            .replacingOccurrences(of: "context = 128", with: "context = 32")
            .replacingOccurrences(of: "steps = 20", with: "steps = 4")
            .replacingOccurrences(of: "batch_size = 16", with: "batch_size = 4")
            .replacingOccurrences(of: "eval_every = 20", with: "eval_every = 2")
            .replacingOccurrences(of: "eval_batches = 2", with: "eval_batches = 1")
            .write(toFile: cfg, atomically: true, encoding: .utf8)
        let budget = ["LOOM_MEMORY_LIMIT": "40M"]
        let whole = try loom(["train", cfg, "--dp", "4", "--out", work, "--name", "whole"], env: budget)
        XCTAssertNotEqual(whole.status, 0)
        XCTAssertTrue(whole.err.contains("out of memory: rank ") && whole.err.contains("(LOOM_MEMORY_LIMIT)"), whole.err)
        let full = try loom(["train", cfg, "--dp", "4", "--zero", "3", "--out", work, "--name", "sharded"], env: budget)
        XCTAssertEqual(full.status, 0, full.err)
        let cut = try loom(["train", cfg, "--dp", "4", "--zero", "3", "--out", work, "--name", "cut", "--stop-at", "2"], env: budget)
        XCTAssertEqual(cut.status, 0, cut.err)
        let resumed = try loom(["train", "--resume", work + "/cut", "--dp", "4", "--zero", "3"], env: budget)
        XCTAssertEqual(resumed.status, 0, resumed.err)
        XCTAssertEqual(try losses("cut"), try losses("sharded"))
        XCTAssertEqual(try losses("cut").count, 4)
    }

    /// ZeRO-3 keeps parameters sharded across a pipeline stage's micro-batches, which it
    /// cannot: the combination is refused before any rank starts, saying what to use.
    func testZeroStage3WithAPipelineIsRefusedNamingTheAlternative() throws {
        let r = try loom(["train", try config("gpt"), "--dp", "2", "--pp", "2", "--zero", "3", "--out", work, "--name", "refused"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("parallel.zero = 3 with parallel.pp = 2") && r.err.contains("parallel.zero = 1 or 2"), r.err)
    }

    /// Tensor parallelism (alone, and with data parallelism and ZeRO), in-process and
    /// under MPI; checkpoints resharded between tensor-parallel and other layouts.
    func testTensorParallelMatchesSingleProcessAndReshards() throws {
        let cfg = try config("gpt")
        XCTAssertEqual(try loom(["train", cfg, "--out", work, "--name", "single"]).status, 0)
        for (name, args) in [("tp2", ["--tp", "2"]), ("dp2tp2", ["--dp", "2", "--tp", "2", "--zero", "1"]),
                             ("dp2tp2zero3", ["--dp", "2", "--tp", "2", "--zero", "3"])] {
            let r = try loom(["train", cfg, "--out", work, "--name", name] + args)
            XCTAssertEqual(r.status, 0, r.err)
            try assertMatches(name, "single")
        }
        XCTAssertEqual(try loom(["train", cfg, "--tp", "2", "--stop-at", "10", "--out", work, "--name", "from-tp"]).status, 0)
        XCTAssertEqual(try loom(["train", "--resume", work + "/from-tp", "--tp", "1", "--dp", "2"]).status, 0)
        try assertMatches("from-tp", "single")
        XCTAssertEqual(try loom(["train", cfg, "--stop-at", "10", "--out", work, "--name", "to-tp"]).status, 0)
        XCTAssertEqual(try loom(["train", "--resume", work + "/to-tp", "--tp", "4"]).status, 0)
        try assertMatches("to-tp", "single")
        guard mpirunAvailable else { throw XCTSkip("mpirun not installed: in-process tensor parallelism was checked, MPI was not") }
        let m = try loom(["launch", "-n", "2", "--", "train", cfg, "--tp", "2", "--out", work, "--name", "tp2-mpi"])
        XCTAssertEqual(m.status, 0, m.err)
        try assertMatches("tp2-mpi", "single")
    }

    /// The gpt config with plain SGD (no momentum, no weight decay) and no clipping: AdamW
    /// normalises away a constant factor in the gradient and clipping caps it, so only
    /// plain SGD shows a layout that scales gradients wrongly.
    func plainSGDConfig() throws -> String {
        let path = try config("gpt"), plain = work + "/gpt-sgd.toml"
        try String(contentsOfFile: path, encoding: .utf8)
            .replacingOccurrences(of: "optimizer = \"adamw\"", with: "optimizer = \"sgd\"\nmomentum = 0.0")
            .replacingOccurrences(of: "lr = 0.0003", with: "lr = 0.05")
            .replacingOccurrences(of: "weight_decay = 0.01", with: "weight_decay = 0.0")
            .write(toFile: plain, atomically: true, encoding: .utf8)
        return plain
    }

    /// Each logged step's global gradient norm, by step.
    func gradNorms(_ run: String) throws -> [Int: Double] {
        var out: [Int: Double] = [:]
        for line in try String(contentsOfFile: work + "/\(run)/metrics.jsonl", encoding: .utf8).split(separator: "\n") {
            let o = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            if let g = o["grad_norm"] as? Double { out[o["step"] as! Int] = g }
        }
        return out
    }

    /// Each logged step's global gradient norm equals the reference run's (1e-5): a layout
    /// that scales gradients wrongly shows here even where the optimizer hides it.
    func assertGradNormsMatch(_ run: String, _ reference: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let want = try gradNorms(reference), got = try gradNorms(run)
        XCTAssertEqual(want.count, 20, "\(reference): every logged step records grad_norm", file: file, line: line)
        for (step, g) in want {
            let h = try XCTUnwrap(got[step], "\(run) step \(step) has no grad_norm", file: file, line: line)
            XCTAssertLessThanOrEqual(abs(g - h) / g, 1e-5, "\(run) step \(step): grad_norm \(h) vs \(reference)'s \(g)", file: file, line: line)
        }
    }

    /// Every layout, pipelines included, under plain SGD (which, unlike AdamW, carries a
    /// wrong gradient scale into the losses): the single-process losses and gradient norms.
    func testParallelLayoutsMatchSingleProcessUnderPlainSGDWithEqualGradientNorms() throws {
        let cfg = try plainSGDConfig()
        XCTAssertEqual(try loom(["train", cfg, "--out", work, "--name", "single"]).status, 0)
        XCTAssertTrue(try gradNorms("single").values.allSatisfy { $0 > 0 && $0.isFinite })
        let layouts: [(String, [String])] = [
            ("dp2", ["--dp", "2"]),
            ("dp2-zero", ["--dp", "2", "--zero", "1"]),
            ("dp4-zero2", ["--dp", "4", "--zero", "2"]),
            ("dp2-tp2-zero2", ["--dp", "2", "--tp", "2", "--zero", "2"]),
            ("dp2-zero3", ["--dp", "2", "--zero", "3"]),
            ("dp4-zero3", ["--dp", "4", "--zero", "3"]),
            ("dp2-tp2-zero3", ["--dp", "2", "--tp", "2", "--zero", "3"]),
            ("tp2", ["--tp", "2"]),
            ("pp2", ["--pp", "2", "--micro-batches", "4"]),
            ("pp2-interleaved", ["--pp", "2", "--schedule", "interleaved", "--micro-batches", "4"]),
            ("tp2-pp2", ["--tp", "2", "--pp", "2", "--micro-batches", "4"]),
            ("pp4", ["--pp", "4", "--micro-batches", "4"]),
            ("pp2-gpipe-m8-recompute", ["--pp", "2", "--schedule", "gpipe", "--micro-batches", "8", "--recompute"]),
            ("dp2-tp2-pp2", ["--dp", "2", "--tp", "2", "--pp", "2", "--micro-batches", "4"]),
            ("dp2-pp2-zero", ["--dp", "2", "--pp", "2", "--zero", "1"]),
        ]
        for (name, args) in layouts {
            let r = try loom(["train", cfg, "--out", work, "--name", name] + args)
            XCTAssertEqual(r.status, 0, "\(name): \(r.err)")
            try assertMatches(name, "single")
            try assertGradNormsMatch(name, "single")
        }
        guard mpirunAvailable else { throw XCTSkip("mpirun not installed: in-process layouts were checked, MPI pipelines were not") }
        for (name, n, args) in [("mpi-pp2", "2", ["--pp", "2", "--micro-batches", "8"]),
                                ("mpi-tp2-pp2", "4", ["--tp", "2", "--pp", "2", "--schedule", "interleaved"])] {
            let r = try loom(["launch", "-n", n, "--", "train", cfg, "--out", work, "--name", name] + args)
            XCTAssertEqual(r.status, 0, "\(name): \(r.err)")
            try assertMatches(name, "single")
            try assertGradNormsMatch(name, "single")
        }
    }

    /// A job that loses a rank restarts from its last checkpoint and ends with exactly the
    /// losses of the same layout's run that lost nothing (resumes are bit-exact); the
    /// restart and its cause are in metrics.jsonl. The failure is at a fixed step (13: the
    /// last checkpoint is step 10's), so a failing run can be repeated. In-process, rank
    /// 1's thread really ends (`Thread.exit`, nothing thrown) and the world sees it die;
    /// where mpirun exists, MPI rank 1 is killed with SIGKILL (`launch --max-restarts`).
    func testAJobThatLosesARankRestartsFromItsCheckpointWithTheSameLosses() throws {
        let cfg = work + "/restart.toml", step = 13
        try (String(contentsOfFile: try config("mlp"), encoding: .utf8) + "\neval_every = 5\n").write(toFile: cfg, atomically: true, encoding: .utf8)
        func assertRestarted(_ run: String, cause: String) throws {
            let restarts = try String(contentsOfFile: work + "/\(run)/metrics.jsonl", encoding: .utf8).split(separator: "\n")
                .compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }.filter { $0["restart"] != nil }
            XCTAssertEqual(restarts.count, 1, run)
            XCTAssertEqual(restarts.first?["step"] as? Int, 10, "\(run) continued from the checkpoint before step \(step + 1)")
            XCTAssertTrue((restarts.first?["restart_cause"] as? String ?? "").contains(cause), "\(run): \(restarts)")
        }
        XCTAssertEqual(try loom(["train", cfg, "--dp", "2", "--out", work, "--name", "whole"]).status, 0)
        let r = try loom(["train", cfg, "--dp", "2", "--max-restarts", "1", "--out", work, "--name", "restarted"],
                         env: ["LOOM_TEST_FAIL_ONCE": "1:\(step):\(work!)/marker"])
        XCTAssertEqual(r.status, 0, "rank 1 dying at step \(step + 1): \(r.err)")
        XCTAssertTrue(r.err.contains("restart 1 of 1 from the last checkpoint"), r.err)
        XCTAssertEqual(try trainingLosses(work + "/restarted"), try trainingLosses(work + "/whole"), "the restarted run's losses, bit for bit")
        XCTAssertEqual(try trainingLosses(work + "/whole").count, 20)
        try assertRestarted("restarted", cause: "rank 1: its thread ended without returning")
        // Without restarts the same failure ends the job with the cause.
        let f = try loom(["train", cfg, "--dp", "2", "--out", work, "--name", "failed"], env: ["LOOM_TEST_FAIL_ONCE": "1:3:\(work!)/marker2"])
        XCTAssertNotEqual(f.status, 0)
        XCTAssertTrue(f.err.contains("rank 1: its thread ended without returning (the rank died)"), f.err)
        guard mpirunAvailable else { throw XCTSkip("mpirun not installed: in-process restarts were checked, MPI restarts were not") }
        XCTAssertEqual(try loom(["launch", "-n", "2", "--", "train", cfg, "--out", work, "--name", "mpi-whole"]).status, 0)
        let m = try loom(["launch", "-n", "2", "--max-restarts", "1", "--", "train", cfg, "--out", work, "--name", "mpi-restarted"],
                         env: ["LOOM_TEST_FAIL_ONCE": "1:\(step):\(work!)/marker3"])
        XCTAssertEqual(m.status, 0, "MPI rank 1 killed at step \(step + 1): \(m.err)")
        XCTAssertTrue(m.err.contains("restart 1 of 1"), m.err)
        XCTAssertEqual(try trainingLosses(work + "/mpi-restarted"), try trainingLosses(work + "/mpi-whole"), "the restarted MPI run's losses, bit for bit")
        try assertRestarted("mpi-restarted", cause: "the job exited with status")
    }

    /// Rank 0 writing a checkpoint for longer than a collective may wait (a slow disk) is
    /// not taken for a dead rank: the others wait for it at a barrier with its own
    /// timeout (parallel.checkpoint_timeout_s), in-process and under MPI.
    func testASlowCheckpointWriteIsNotTakenForADeadRank() throws {
        let cfg = work + "/slow.toml"
        try (String(contentsOfFile: try config("mlp"), encoding: .utf8).replacingOccurrences(of: "steps = 20", with: "steps = 10")
             + "\neval_every = 5\n[parallel]\ntimeout_s = 2\n").write(toFile: cfg, atomically: true, encoding: .utf8)
        let slow = ["LOOM_TEST_CHECKPOINT_PAUSE_MS": "3500"]
        let r = try loom(["train", cfg, "--dp", "2", "--out", work, "--name", "slow-inprocess"], env: slow)
        XCTAssertEqual(r.status, 0, r.err)
        guard mpirunAvailable else { throw XCTSkip("mpirun not installed: in-process ranks were checked, MPI ranks were not") }
        let m = try loom(["launch", "-n", "2", "--", "train", cfg, "--out", work, "--name", "slow-mpi"], env: slow)
        XCTAssertEqual(m.status, 0, m.err)
    }

    /// Image models cut into pipeline stages (layer chains: the CNN's convolutions on one
    /// stage, its classifier on the other) follow the single-process run, evaluation and
    /// accuracy included. The CNN without its batch-normalised residual block: batch norm
    /// over micro-batches sees other statistics than over the whole batch, as under data
    /// parallelism without synchronised batch norm.
    func testImageModelPipelinesMatchSingleProcess() throws {
        let cnn = work + "/cnn.toml"
        try """
            [model]
            kind = "cnn"
            residual = false
            [train]
            steps = 20
            batch_size = 32
            optimizer = "sgd"
            lr = 0.05
            momentum = 0.9
            log_every = 1
            eval_every = 10
            eval_batches = 4
            """.write(toFile: cnn, atomically: true, encoding: .utf8)
        for (kind, cfg) in [("mlp", try config("mlp")), ("cnn", cnn)] {
            XCTAssertEqual(try loom(["train", cfg, "--out", work, "--name", "\(kind)-single"]).status, 0)
            for (name, args) in [("\(kind)-pp2", ["--pp", "2", "--micro-batches", "4"]),
                                 ("\(kind)-pp2-dp2", ["--pp", "2", "--dp", "2", "--micro-batches", "2", "--schedule", "gpipe"])] {
                let r = try loom(["train", cfg, "--out", work, "--name", name] + args)
                XCTAssertEqual(r.status, 0, "\(name): \(r.err)")
                try assertMatches(name, "\(kind)-single")
                let a = try summary(name), b = try summary("\(kind)-single")
                XCTAssertEqual(a["val_accuracy"] as! Double, b["val_accuracy"] as! Double, accuracy: 1e-9, name)
                XCTAssertEqual(a["val_loss"] as! Double, b["val_loss"] as! Double, accuracy: 1e-5 * (b["val_loss"] as! Double), name)
                XCTAssertEqual(a["parameters"] as? Int, b["parameters"] as? Int, name)
            }
        }
    }

    /// ResNet-20 under data parallelism with synchronised batch norm (the default) follows
    /// one process on the whole batch, for the 5 steps `resNetConfig` says a comparison
    /// can check. Until the variance sum of synchronised batch norm was summed as one
    /// process sums it, step 3 was 8e-5 off.
    func testResNetWithSynchronisedBatchNormFollowsOneProcessUnderDataParallelism() throws {
        let cfg = try resNetConfig()
        XCTAssertEqual(try loom(["train", cfg, "--out", work, "--name", "resnet-1"]).status, 0)
        let single = try losses("resnet-1")
        XCTAssertEqual(single.count, 5)
        for n in [2, 4] {
            let r = try loom(["train", cfg, "--out", work, "--name", "resnet-dp\(n)", "--dp", "\(n)"])
            XCTAssertEqual(r.status, 0, r.err)
            for (step, x) in single {
                let y = try XCTUnwrap(try losses("resnet-dp\(n)")[step])
                XCTAssertLessThanOrEqual(abs(x - y) / abs(x), 1e-5, "dp \(n) step \(step): \(y) vs \(x)")
            }
        }
    }

    func summary(_ run: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: work + "/\(run)/summary.json"))) as! [String: Any]
    }

    /// The gpt config with gradient clipping tight enough to act at every step, so that
    /// split models must count each gradient element once in the global norm.
    func clippedConfig() throws -> String {
        let path = try config("gpt"), clipped = work + "/gpt-clipped.toml"
        try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(of: "log_every = 1", with: "log_every = 1\ngrad_clip = 0.1")
            .write(toFile: clipped, atomically: true, encoding: .utf8)
        return clipped
    }

    /// Pipeline parallelism through the trainer: every schedule at M = 4 and 8 on 2 stages,
    /// 4 stages, interleaved, recomputation, and dp 2 × tp 2 × pp 2, against single-process.
    func testPipelineLayoutsMatchSingleProcess() throws {
        let cfg = try clippedConfig()
        XCTAssertEqual(try loom(["train", cfg, "--out", work, "--name", "single"]).status, 0)
        XCTAssertEqual(try loom(["train", try config("gpt"), "--out", work, "--name", "unclipped"]).status, 0)
        XCTAssertNotEqual(try losses("single")[20], try losses("unclipped")[20], "grad_clip 0.1 did not act; the test would not cover clipping")
        let layouts: [(String, [String])] = [
            ("pp2-gpipe-m4", ["--pp", "2", "--schedule", "gpipe", "--micro-batches", "4"]),
            ("pp2-gpipe-m8", ["--pp", "2", "--schedule", "gpipe", "--micro-batches", "8"]),
            ("pp2-1f1b-m4", ["--pp", "2", "--schedule", "1f1b", "--micro-batches", "4"]),
            ("pp2-1f1b-m8", ["--pp", "2", "--schedule", "1f1b", "--micro-batches", "8"]),
            ("pp2-interleaved-m4", ["--pp", "2", "--schedule", "interleaved", "--micro-batches", "4"]),
            ("pp2-interleaved-m8", ["--pp", "2", "--schedule", "interleaved", "--micro-batches", "8", "--recompute"]),
            ("pp4", ["--pp", "4", "--micro-batches", "4"]),
            ("dp2-tp2-pp2", ["--dp", "2", "--tp", "2", "--pp", "2", "--micro-batches", "4"]),
            ("dp2-pp2-zero", ["--dp", "2", "--pp", "2", "--zero", "1"]),
        ]
        for (name, args) in layouts {
            let r = try loom(["train", cfg, "--out", work, "--name", name] + args)
            XCTAssertEqual(r.status, 0, "\(name): \(r.err)")
            try assertMatches(name, "single")
            try assertGradNormsMatch(name, "single")  // before clipping: AdamW hides a wrong scale in the losses, not here
        }
        // The summary reports each stage's measured bubble and memory next to the theory.
        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: work + "/pp4/summary.json"))) as! [String: Any]
        let p = try XCTUnwrap(summary["pipeline"] as? [String: Any])
        XCTAssertEqual(p["bubble_theory"] as! Double, 3.0 / 7, accuracy: 1e-4)
        XCTAssertEqual((p["bubble_per_stage"] as! [Double]).count, 4)
        XCTAssertTrue((p["peak_step_bytes_per_stage"] as! [Int]).allSatisfy { $0 > 0 })
        XCTAssertEqual(p["peak_in_flight_per_stage"] as! [Int], [4, 3, 2, 1])  // 1F1B: K - stage
        XCTAssertEqual(summary["parameters"] as? Int, (try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: work + "/single/summary.json"))) as! [String: Any])["parameters"] as? Int)
    }

    /// A checkpoint saved by a tp 2 × pp 2 run resumes under dp 4 and under a 4-stage
    /// interleaved pipeline; a single-process one resumes as a pipeline; losses continue.
    /// Also the trace: one lane per rank, forward and backward per micro-batch.
    func testPipelineCheckpointsReshardAndTrace() throws {
        let cfg = try clippedConfig()
        XCTAssertEqual(try loom(["train", cfg, "--out", work, "--name", "single"]).status, 0)
        let trace = work + "/trace.json"
        for (name, resume) in [("to-dp4", ["--tp", "1", "--pp", "1", "--dp", "4"]),
                               ("to-interleaved", ["--tp", "1", "--pp", "2", "--schedule", "interleaved", "--micro-batches", "4"])] {
            let first = try loom(["train", cfg, "--tp", "2", "--pp", "2", "--stop-at", "10", "--out", work, "--name", name, "--trace", trace])
            XCTAssertEqual(first.status, 0, first.err)
            let e = try loom(["eval", "--checkpoint", work + "/" + name])  // one process reads a split run's checkpoint
            XCTAssertEqual(e.status, 0, e.err)
            let r = try loom(["train", "--resume", work + "/" + name] + resume)
            XCTAssertEqual(r.status, 0, "\(name): \(r.err)")
            try assertMatches(name, "single")
        }
        XCTAssertEqual(try loom(["train", cfg, "--stop-at", "10", "--out", work, "--name", "from-single"]).status, 0)
        XCTAssertEqual(try loom(["train", "--resume", work + "/from-single", "--pp", "4", "--schedule", "gpipe"]).status, 0)
        try assertMatches("from-single", "single")

        let t = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: trace))) as! [String: Any]
        let events = t["traceEvents"] as! [[String: Any]]
        // A lane per rank (thread 2r); no data parallelism, so no communication lanes (2r + 1).
        XCTAssertEqual(Set(events.compactMap { $0["ph"] as? String == "M" ? $0["tid"] as? Int : nil }), [0, 2, 4, 6])
        let names = Set(events.compactMap { $0["name"] as? String })
        for n in ["forward(0)", "backward(3)", "sendActivation(0)", "recvGradient(0)", "reduceGradients", "optimizerStep"] {
            XCTAssertTrue(names.contains(n), "trace lacks \(n)")
        }
    }

    /// A pipeline and a 3D layout under mpirun (one process per rank).
    func testPipelineUnderMPIMatchesSingleProcess() throws {
        guard mpirunAvailable else { throw XCTSkip("mpirun not installed") }
        let cfg = try clippedConfig()
        XCTAssertEqual(try loom(["train", cfg, "--out", work, "--name", "single"]).status, 0)
        for (name, n, args) in [("mpi-pp2", "2", ["--pp", "2", "--micro-batches", "8"]),
                                ("mpi-tp2-pp2", "4", ["--tp", "2", "--pp", "2", "--schedule", "interleaved"])] {
            let r = try loom(["launch", "-n", n, "--", "train", cfg, "--out", work, "--name", name] + args)
            XCTAssertEqual(r.status, 0, "\(name): \(r.err)")
            try assertMatches(name, "single")
        }
    }

    /// 1F1B under MPI: the stages' sends cross (activations one way, gradients the other)
    /// and must not block each other. With blocking MPI_Send this hung.
    func testOneFOneBPipelineRunsUnderMPI() throws {
        guard mpirunAvailable else { throw XCTSkip("mpirun not installed") }
        let r = try loom(["launch", "-n", "2", "--", "bench", "--workload", "gpt", "--pp", "2", "--micro-batches", "8",
                          "--schedule", "1f1b", "--steps", "2", "--json"])
        XCTAssertEqual(r.status, 0, r.err)
        let o = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as! [String: Any]
        XCTAssertEqual(o["bubble_theory"] as! Double, 1.0 / 9, accuracy: 1e-4)
        XCTAssertGreaterThan(o["per_s"] as! Double, 0)
    }

    func testKilledRankEndsTheMPIRunWithAMessageAndKeepsTheCheckpoint() throws {
        guard mpirunAvailable else { throw XCTSkip("mpirun not installed") }
        let mlp = try config("mlp"), gpt = try config("gpt")
        try (try String(contentsOfFile: mlp, encoding: .utf8).replacingOccurrences(of: "steps = 20", with: "steps = 100000")
             + "\neval_every = 20\n[parallel]\ntimeout_s = 20\n").write(toFile: mlp, atomically: true, encoding: .utf8)
        try (try String(contentsOfFile: gpt, encoding: .utf8).replacingOccurrences(of: "steps = 20", with: "steps = 100000")
                .replacingOccurrences(of: "eval_every = 20", with: "eval_every = 3")
             + "\n[parallel]\ntimeout_s = 20\n").write(toFile: gpt, atomically: true, encoding: .utf8)
        // Data parallel, and rank 1 dying inside a tensor- and a pipeline-parallel group.
        for (name, cfg, args) in [("dying-dp", mlp, [String]()), ("dying-tp", gpt, ["--tp", "2"]), ("dying-pp", gpt, ["--pp", "2"])] {
            let p = try start(["launch", "-n", "2", "--", "train", cfg, "--out", work, "--name", name] + args)
            // The event: the first checkpoint exists (the 600 s limits only catch a hang).
            let checkpoint = work + "/\(name)/checkpoint.safetensors"
            XCTAssertTrue(waitFor(600) { FileManager.default.fileExists(atPath: checkpoint) }, "\(name): no checkpoint; the run hung or died")
            // Kill rank 1: the loom process with OMPI_COMM_WORLD_RANK=1.
            let victim = try XCTUnwrap(loomRank(1), "\(name): rank 1 not found")
            kill(victim, SIGKILL)
            let hang = DispatchWorkItem { p.terminate() }
            DispatchQueue.global().asyncAfter(deadline: .now() + 600, execute: hang)
            let err = String(data: (p.standardError as! Pipe).fileHandleForReading.readDataToEndOfFile(), encoding: .utf8)!
            p.waitUntilExit()
            hang.cancel()
            XCTAssertNotEqual(p.terminationReason, .uncaughtSignal, "\(name): the run hung after its rank was killed")
            XCTAssertNotEqual(p.terminationStatus, 0, name)
            // Loom's own message on the survivor, naming it and the operation it was in (not
            // only mpirun's report of the dead process).
            XCTAssertTrue(err.contains("loom: error: ") && err.contains("rank 0: "), "\(name): no Loom message naming the surviving rank: \(err)")
            let e = try loom(["eval", "--checkpoint", work + "/\(name)"])
            XCTAssertEqual(e.status, 0, "\(name): last checkpoint not loadable: \(e.err)")
        }
    }

    /// Polls `event` until it holds or `seconds` pass (a limit that only catches hangs).
    func waitFor(_ seconds: Double, _ event: () -> Bool) -> Bool {
        let limit = DispatchTime.now() + seconds
        while !event() {
            if DispatchTime.now() > limit { return false }
            usleep(20_000)
        }
        return true
    }

    /// PID of the loom process that is rank `rank` of an MPI job (from /proc).
    func loomRank(_ rank: Int) -> pid_t? {
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry),
                  let env = FileManager.default.contents(atPath: "/proc/\(entry)/environ"),
                  let cmd = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline") else { continue }
            let vars = env.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if vars.contains("OMPI_COMM_WORLD_RANK=\(rank)"), String(decoding: cmd, as: UTF8.self).contains("loom") { return pid }
        }
        return nil
    }
}
