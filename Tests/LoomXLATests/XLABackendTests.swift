import Foundation
import LoomCore
import LoomNN
import LoomXLA
import XCTest

/// The XLA backend on the XLA:CPU PJRT plugin (the `lammps-jax-pjrt-cpu` wheel, which
/// scripts/test.sh caches from PyPI): Loom's conformance suite, and what a lazy backend
/// must keep: one compiled program per step, recompiling only for a new shape, errors
/// found on the device still thrown.
final class XLABackendTests: XCTestCase {
    static func backend(_ index: Int = 0) throws -> XLABackend {
        if let why = ProcessInfo.processInfo.environment["LOOM_XLA_UNAVAILABLE"] { throw XCTSkip(why) }
        return try XLABackend(index: index)
    }

    func testEveryOpAndOptimizerAgreesWithTheCPUBackend() throws {
        XCTAssertEqual(BackendConformance.disagreements(of: try Self.backend()), [])
    }

    /// A GPT and AdamW: steps after the first two compile nothing and run one program each
    /// (the update of step i and forward and backward of step i+1, up to the loss read);
    /// another batch size is one more program, then none again.
    func testATrainingStepCompilesOnceAndRunsAsOneProgram() throws {
        let xla = try Self.backend()
        let gpt = try GPT(GPTConfig(vocabSize: 40, contextLength: 8, layers: 2, dModel: 16, heads: 2), seed: 1, on: xla)
        let opt = Adam.adamW(gpt.namedParameters(), lr: 1e-3, weightDecay: 0.1)
        var rng = Philox(seed: 5)
        func batch(_ n: Int) -> (Tensor, Tensor) {
            (Tensor(indices: (0..<n * 8).map { _ in Int32(rng.nextInt(below: 40)) }, shape: [n, 8], on: xla),
             Tensor(indices: (0..<n * 8).map { _ in Int32(rng.nextInt(below: 40)) }, shape: [n, 8], on: xla))
        }
        func step(_ n: Int) throws -> Float {
            let (x, y) = batch(n)
            opt.zeroGrad()
            let loss = try gpt.loss(tokens: x, targets: y)
            try loss.backward()
            try opt.step()
            return loss.item
        }
        var losses = [try step(4), try step(4), try step(4)]
        xla.resetCounters()
        for _ in 0..<5 { losses.append(try step(4)) }
        XCTAssertEqual(xla.counts.compilations, 0, "same shapes, same program")
        XCTAssertEqual(xla.counts.executions, 5, "one program per step")
        XCTAssertEqual(xla.counts.cacheHits, 5)
        xla.resetCounters()
        for _ in 0..<4 { _ = try step(6) }
        XCTAssertLessThanOrEqual(xla.counts.compilations, 2, "a new batch size: its first steps compile, then it is cached")
        xla.resetCounters()
        for _ in 0..<3 { _ = try step(6) }
        XCTAssertEqual(xla.counts.compilations, 0)
        XCTAssertEqual(xla.counts.executions, 3)
        XCTAssertLessThan(losses.last!, losses[0])
    }

    /// The CPU checks an embedding's indices at the call; on XLA the check runs inside the
    /// program and the step's `deferredErrors` throws it, naming the problem.
    func testAnIndexOutsideTheTableIsReportedAfterTheStep() throws {
        let xla = try Self.backend()
        let table = Tensor((0..<20).map(Float.init), shape: [5, 4], on: xla)
        let out = try Tensor.embedding(table, indices: Tensor(indices: [1, 7], shape: [2], on: xla))
        _ = out.floats
        XCTAssertThrowsError(try xla.deferredErrors()) { error in
            XCTAssertTrue("\(error)".contains("outside the table of 5 rows"), "\(error)")
        }
        XCTAssertNoThrow(try xla.deferredErrors(), "reported once")
        let fine = try Tensor.embedding(table, indices: Tensor(indices: [4, 0], shape: [2], on: xla))
        XCTAssertEqual(fine.floats, [16, 17, 18, 19, 0, 1, 2, 3])
        XCTAssertNoThrow(try xla.deferredErrors())
    }

    /// `endStep` starts the step's program and returns while it runs (the next program
    /// waits for it): losses read after the last step are the losses read at every step,
    /// one program a step, and a bad index found by a program nobody waited for is still
    /// thrown by the next `deferredErrors`.
    func testAStepThatEndsWithoutWaitingGivesTheSameLossesAndStillReportsABadIndex() throws {
        let xla = try Self.backend()
        func losses(endingSteps: Bool) throws -> [Float] {
            let mlp = MLP(sizes: [6, 8, 3], seed: 2, on: xla)
            let opt = SGD(mlp.namedParameters(), lr: 0.1, momentum: 0.9)
            let x = Tensor((0..<24).map { Float($0) / 24 }, shape: [4, 6], on: xla)
            let y = Tensor(indices: [0, 2, 1, 2], shape: [4], on: xla)
            var read: [Float] = [], unread: [Tensor] = []
            for step in 0..<5 {
                if step == 1 { xla.resetCounters() }
                let loss = try mlp(x).crossEntropy(targets: y)
                try loss.backward()
                try opt.step()
                opt.zeroGrad()
                if endingSteps { try xla.endStep(); unread.append(loss) } else { read.append(loss.item) }
            }
            if endingSteps { XCTAssertEqual(xla.counts.executions, 4, "one program a step, none to read the losses") }
            return endingSteps ? unread.map(\.item) : read
        }
        let waited = try losses(endingSteps: false), ended = try losses(endingSteps: true)
        XCTAssertEqual(ended, waited)
        XCTAssertLessThan(ended.last!, ended[0])

        let table = Tensor((0..<20).map(Float.init), shape: [5, 4], on: xla)
        let out = try Tensor.embedding(table, indices: Tensor(indices: [1, 7], shape: [2], on: xla))
        try xla.endStep()
        XCTAssertThrowsError(try xla.deferredErrors()) { error in
            XCTAssertTrue("\(error)".contains("outside the table of 5 rows"), "\(error)")
        }
        XCTAssertEqual(out.shape, [2, 4])
    }

    /// XLA:CPU's plugin would make 4 devices, and so 4 threads, whatever the machine; Loom
    /// asks for one per processor this process may run on, at least 2 (two data parallel
    /// ranks).
    func testTheCPUPluginHasOneDevicePerProcessorAndAtLeastTwo() throws {
        _ = try Self.backend()
        XCTAssertEqual(try XLABackend.deviceCount(), max(2, ProcessInfo.processInfo.activeProcessorCount))
    }

    func testAMissingPluginIsAOneLineErrorNamingTheVariable() {
        XCTAssertThrowsError(try XLABackend(plugin: "/nonexistent/plugin.so")) { error in
            XCTAssertTrue("\(error)".contains("/nonexistent/plugin.so"), "\(error)")
        }
    }

    /// Without a TPU, libtpu's client would ask the cloud's metadata server for minutes:
    /// `--device tpu` says at once that there is none.
    func testATPUIsRefusedAtOnceOnAMachineWithoutOne() throws {
        if PJRTPlugin.machineHasTPU { throw XCTSkip("this machine has a TPU") }
        let started = Date()
        XCTAssertThrowsError(try XLABackend(kind: .tpu)) { error in
            XCTAssertTrue("\(error)".contains("this machine has no TPU"), "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)
    }

    /// Parameters move between the CPU and XLA devices both ways, values intact.
    func testTensorsMoveBetweenTheCPUAndTwoXLADevices() throws {
        let a = try Self.backend(0), b = try Self.backend(1)
        let x = Tensor((0..<6).map(Float.init), shape: [2, 3])
        let onA = try x.to(a.device), onB = try onA.to(b.device)
        let doubled = try onB.add(onB)
        XCTAssertEqual(doubled.device, .xla(1))
        XCTAssertEqual(try doubled.to(.cpu).floats, [0, 2, 4, 6, 8, 10])
    }
}
