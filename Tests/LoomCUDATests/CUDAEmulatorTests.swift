import Foundation
import XCTest
import LoomCUDA

/// Loom's CUDA emulator keeps GPU semantics where kernels depend on them: shared memory
/// and barriers across a block, warp shuffles between lanes, and errors (not hangs, not
/// luck) for barriers and shuffles that some threads skip.
final class CUDAEmulatorTests: XCTestCase {
    static let source = #"""
    extern "C" __global__ void block_sum(const float* x, float* out, int n) {
        __shared__ float partial[8];
        float v = threadIdx.x < n ? x[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
        __syncthreads();
        if (threadIdx.x == 0) {
            float s = 0.0f;
            for (int w = 0; w < (int)(blockDim.x >> 5); ++w) s += partial[w];
            out[blockIdx.x] = s;
        }
    }

    extern "C" __global__ void shift_down(const float* x, float* out) {
        out[threadIdx.x] = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 3);
    }

    extern "C" __global__ void divergent_barrier(float* out) {
        if (threadIdx.x < 16) __syncthreads();
        out[threadIdx.x] = 1.0f;
    }

    extern "C" __global__ void early_exit_shuffle(float* out) {
        if (threadIdx.x == 5) return;
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
    }
    """#

    var context: CUDAContext!
    var module: CUDAModule!

    override func setUpWithError() throws {
        context = try CUDAContext.open(emulator: try CUDAEmulator.path())
        module = try CUDAModule(context: context, source: Self.source, name: "emulator_tests.cu")
    }

    func device(_ values: [Float]) throws -> CUdeviceptr {
        let p = try context.allocator.allocate(values.count * 4)
        try values.withUnsafeBytes { try context.copy($0, toDevice: p) }
        return p
    }

    func host(_ p: CUdeviceptr, count: Int) throws -> [Float] {
        var out = [Float](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try context.copy(fromDevice: p, into: $0) }
        return out
    }

    func testSharedMemoryBarriersAndWarpShufflesGiveTheBlockSum() throws {
        let values = (0..<200).map { Float($0 % 7) - 2 }
        let x = try device(values), out = try device([0, 0])
        try module.launch("block_sum", grid: 2, block: 256, [.pointer(x), .pointer(out), .int32(200)], stream: context.stream)
        XCTAssertEqual(try host(out, count: 2), [values.reduce(0, +), values.reduce(0, +)])
        let ramp = try device((0..<32).map(Float.init)), shifted = try device([Float](repeating: -1, count: 32))
        try module.launch("shift_down", grid: 1, block: 32, [.pointer(ramp), .pointer(shifted)], stream: context.stream)
        // Lanes 29-31 have no lane 3 above them: they keep their own value, as on a GPU.
        XCTAssertEqual(try host(shifted, count: 32), (0..<32).map { Float($0 + 3 < 32 ? $0 + 3 : $0) })
    }

    /// The driver's current context is per thread. A call on a thread that never made the
    /// context current is refused with CUDA_ERROR_INVALID_CONTEXT (201), as the real driver
    /// refuses it (a communicator's worker thread staging a gradient); through
    /// `CUDAContext` every thread makes it current first and the same copy works.
    func testADriverCallOnAThreadWithoutAContextIsRefusedAndTheContextSetsItOnEveryThread() throws {
        let p = try device([1, 2, 3, 4])
        // The emulator's own entry points (the library CUDAContext opened), called as a
        // defect would call them: on a new thread, with no cuCtxSetCurrent there.
        let library = try XCTUnwrap(dlopen(try CUDAEmulator.path(), RTLD_NOW))
        typealias DtoH = @convention(c) (UnsafeMutableRawPointer?, UInt64, Int, OpaquePointer?) -> Int32
        typealias LastError = @convention(c) () -> UnsafePointer<CChar>?
        let copyToHost = unsafeBitCast(try XCTUnwrap(dlsym(library, "cuMemcpyDtoHAsync_v2")), to: DtoH.self)
        let lastError = unsafeBitCast(try XCTUnwrap(dlsym(library, "loomEmulatorLastError")), to: LastError.self)
        final class Outcome: @unchecked Sendable {  // written by the worker, read after `done`
            var status: Int32 = -1, message = "", copied: [Float] = [], failure: Error?
        }
        let outcome = Outcome(), done = DispatchSemaphore(value: 0)
        let worker = Thread { [self] in
            var out = [Float](repeating: 0, count: 4)
            outcome.status = out.withUnsafeMutableBytes { copyToHost($0.baseAddress, p, 16, context.stream) }
            outcome.message = lastError().map { String(cString: $0) } ?? ""
            do { outcome.copied = try host(p, count: 4) } catch { outcome.failure = error }  // through CUDAContext
            done.signal()
        }
        worker.start()
        done.wait()
        XCTAssertEqual(outcome.status, 201, "a call without a current context must be refused (CUDA_ERROR_INVALID_CONTEXT)")
        XCTAssertTrue(outcome.message.contains("no current context"), outcome.message)
        XCTAssertNil(outcome.failure)
        XCTAssertEqual(outcome.copied, [1, 2, 3, 4])
    }

    func testABarrierThatSomeThreadsSkipIsAnErrorNamingIt() throws {
        let out = try device([Float](repeating: 0, count: 64))
        XCTAssertThrowsError(try module.launch("divergent_barrier", grid: 1, block: 64, [.pointer(out)], stream: context.stream)) { e in
            XCTAssertTrue("\(e)".contains("__syncthreads") && "\(e)".contains("divergent_barrier"), "\(e)")
        }
    }

    func testAShuffleWaitingForAnExitedLaneIsAnError() throws {
        let out = try device([Float](repeating: 0, count: 32))
        XCTAssertThrowsError(try module.launch("early_exit_shuffle", grid: 1, block: 32, [.pointer(out)], stream: context.stream)) { e in
            XCTAssertTrue("\(e)".contains("lane") && "\(e)".contains("exited"), "\(e)")
        }
    }

    func testACompileErrorCarriesTheCompilersMessage() throws {
        XCTAssertThrowsError(try CUDAModule(context: context, source: "extern \"C\" __global__ void broken(float* x) { x[0] = undeclared; }",
                                            name: "broken.cu")) { e in
            XCTAssertTrue("\(e)".contains("undeclared") && "\(e)".contains("broken.cu"), "\(e)")
        }
    }
}
