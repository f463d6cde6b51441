import ArgumentParser
import Foundation
import LoomCore

/// `loom check --device cuda`: the conformance suite on a device, where there is no Swift
/// to run the tests (the GPU check runs it first).
struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check a device's backend against the CPU: every op forward and backward, and the optimizers.",
        discussion: """
        The conformance suite of the tests (BackendConformance): random inputs, every op's
        output and input gradients within 1e-5 of the one-thread CPU backend (bf16 products
        1e-4), multi-tensor SGD and AdamW within 1e-6. Prints what differs, one line each,
        and exits 1 if anything does.

        Examples:
          loom check --device cuda
          loom check --device cuda --tf32 --json
        """
    )

    @Flag(help: "Print one JSON object: the device, the cases, what differs.")
    var json = false
    @OptionGroup var deviceOptions: DeviceOptions

    func run() throws {
        try runReportingErrors {
            let backend = try deviceOptions.backend()
            let started = Date()
            let differences = BackendConformance.disagreements(of: backend)
            let seconds = Date().timeIntervalSince(started)
            if json {
                let report: [String: Any] = ["device": backend.name, "cases": BackendConformance.cases.count, "seconds": seconds,
                                             "disagreements": differences, "passed": differences.isEmpty]
                let data = try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                for line in differences { print(line) }
                print("\(backend.name): \(BackendConformance.cases.count) op cases and the optimizers, "
                      + (differences.isEmpty ? "all within tolerance" : "\(differences.count) outside tolerance")
                      + String(format: " (%.1f s)", seconds))
            }
            if !differences.isEmpty { throw ExitCode(1) }
        }
    }
}
