import Foundation
import XCTest
import LoomCUDA

/// Every kernel of the CUDA backend compiles with the real NVRTC, for the A100's and the
/// H100's architectures, with no GPU and no driver: NVRTC from PyPI's nvidia-cuda-nvrtc
/// wheel, which scripts/test.sh installs into a cache outside the tree and puts on
/// `LOOM_CUDA_LIBS`. The registers, shared memory, stack and spills of each kernel are printed
/// and written to kernel-resources-sm_XX.json next to the test bundle.
final class KernelCompileTests: XCTestCase {
    struct Resources: Codable, Equatable {
        var kernel: String
        var registers: Int
        var sharedBytes: Int
        var spillStores: Int
        var spillLoads: Int
        /// Local memory for the thread's stack (a by-value argument indexed at run time
        /// would be copied there).
        var stackBytes: Int = 0
    }

    /// ptxas's `-v` report: "Compiling entry function 'k' for 'sm_90'" then "Used N registers, ... N bytes smem"
    /// and "N bytes spill stores, N bytes spill loads".
    static func parse(_ log: String) -> [Resources] {
        var out: [Resources] = []
        func number(before word: String, in line: Substring) -> Int {
            guard let r = line.range(of: word) else { return 0 }
            return Int(line[..<r.lowerBound].split(separator: " ").last ?? "") ?? 0
        }
        for line in log.split(separator: "\n") {
            if let r = line.range(of: "Compiling entry function '") {
                out.append(Resources(kernel: String(line[r.upperBound...].prefix { $0 != "'" }), registers: 0, sharedBytes: 0,
                                     spillStores: 0, spillLoads: 0))
            } else if !out.isEmpty, line.contains("spill stores") {
                out[out.count - 1].stackBytes = number(before: " bytes stack frame", in: line)
                out[out.count - 1].spillStores = number(before: " bytes spill stores", in: line)
                out[out.count - 1].spillLoads = number(before: " bytes spill loads", in: line)
            } else if !out.isEmpty, line.contains("Used") {
                out[out.count - 1].registers = number(before: " registers", in: line)
                out[out.count - 1].sharedBytes = number(before: " bytes smem", in: line)
            }
        }
        return out
    }

    func testEveryKernelCompilesWithNVRTCForSm80AndSm90() throws {
        if let reason = ProcessInfo.processInfo.environment["LOOM_NVRTC_UNAVAILABLE"] {
            throw XCTSkip("NVRTC could not be installed from PyPI: \(reason)")
        }
        let nvrtc: NVRTC
        do { nvrtc = try NVRTC(emulator: nil) } catch {
            XCTFail("NVRTC did not load (scripts/test.sh installs nvidia-cuda-nvrtc and sets LOOM_CUDA_LIBS): \(error)")
            return
        }
        let kernels = CUDAKernels.kernelNames
        XCTAssertGreaterThan(kernels.count, 40)
        for arch in [80, 90] {
            let (binary, log) = try nvrtc.compileReportingLog(source: CUDAKernels.source, name: CUDAKernels.moduleName, arch: arch, verbose: true)
            XCTAssertEqual(Array(binary.prefix(4)), [0x7f, 0x45, 0x4c, 0x46], "sm_\(arch): a CUBIN is an ELF file")
            let resources = Self.parse(log)
            XCTAssertEqual(Set(resources.map(\.kernel)), Set(kernels), "sm_\(arch): ptxas reports every kernel")
            for r in resources {
                XCTAssertGreaterThan(r.registers, 0, "sm_\(arch) \(r.kernel): registers reported")
                XCTAssertEqual(r.spillStores + r.spillLoads, 0, "sm_\(arch) \(r.kernel) spills registers")
                XCTAssertEqual(r.stackBytes, 0, "sm_\(arch) \(r.kernel) uses local memory for its stack")
                // A launch of a kernel with more than 48 KB of static shared memory fails
                // without cuFuncSetAttribute's opt-in (the emulator checks dynamic shared memory).
                XCTAssertLessThanOrEqual(r.sharedBytes, 48 * 1024, "sm_\(arch) \(r.kernel): static shared memory past 48 KB")
            }
            let report = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
                .appendingPathComponent("kernel-resources-sm_\(arch).json")
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(resources).write(to: report)
            let most = resources.max { $0.registers < $1.registers }
            print("sm_\(arch): \(resources.count) kernels, \(binary.count) bytes of CUBIN; most registers: \(most?.kernel ?? "-") \(most?.registers ?? 0); no spills, no stack; \(report.path)")
        }
    }
}
