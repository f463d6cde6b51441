import XCTest
import LoomCore
import LoomCUDA

/// The conformance suite (`BackendConformance`, in LoomCore: every op forward and backward,
/// and the optimizers, against the one-thread CPU backend) on every available backend: the
/// CPU backend with 4 threads (Loom splits GEMMs, convolutions and row loops across threads
/// itself, so this checks those splits); CUDA under Loom's emulator (the backend's code and
/// its kernels' CUDA C source, run on the CPU: always, in CI); and CUDA on a real GPU,
/// skipped where there is none.
final class BackendConformanceTests: XCTestCase {
    func testMultiThreadedCPUBackendConforms() throws {
        XCTAssertEqual(BackendConformance.disagreements(of: CPUBackend(threads: 4)), [])
    }

    func testCUDABackendConformsUnderTheEmulator() throws {
        XCTAssertEqual(BackendConformance.disagreements(of: try CUDABackend(emulator: try CUDAEmulator.path())), [])
    }

    func testCUDABackendConformsOnTheGPU() throws {
        let backend: CUDABackend
        do { backend = try CUDABackend(emulator: nil) } catch let e as CUDAError where e.call == "dlopen" {
            throw XCTSkip("no NVIDIA driver here: \(e)")
        }
        XCTAssertEqual(BackendConformance.disagreements(of: backend), [], backend.name)
    }
}
