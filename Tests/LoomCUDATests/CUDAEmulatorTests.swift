import Foundation
import XCTest
import LoomCUDA

/// Loom's CUDA emulator keeps GPU semantics where kernels depend on them: shared memory
/// and barriers across a block, warp shuffles between lanes, and errors (not hangs, not
/// luck) for barriers and shuffles that some threads skip. It is as strict as the driver
/// and stricter than a lucky GPU: each rule below plants the defect and sees it refused.
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

    // One thread per element, and one too many: the last reads past the end.
    extern "C" __global__ void read_one_past(const float* x, float* out, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i <= n) out[0] += x[i];
    }

    extern "C" __global__ void write_before(float* x) { if (threadIdx.x == 0) x[-1] = 1.0f; }

    extern "C" __global__ void fill(float* x, float v, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) x[i] = v;
    }

    // Where each block (or each thread of block 0) came in the order they ran.
    extern "C" __global__ void block_arrival(int* counter, int* order) {
        if (threadIdx.x == 0) order[atomicAdd(counter, 1)] = blockIdx.x;
    }
    extern "C" __global__ void thread_arrival(int* counter, int* order) {
        order[atomicAdd(counter, 1)] = threadIdx.x;
    }

    // Reads its shared cell before any thread of the block wrote it: on a GPU, whatever
    // was there; here NaN, every block.
    extern "C" __global__ void stale_shared(float* out) {
        __shared__ float cell[1];
        __syncthreads();
        if (threadIdx.x == 0) out[blockIdx.x] = cell[0];
        __syncthreads();
        if (threadIdx.x == 0) cell[0] = (float)blockIdx.x;
    }

    struct Big { float values[1100]; };
    extern "C" __global__ void big_parameter(Big b, float* out) { out[0] = b.values[0]; }
    """#

    var context: CUDAContext!
    var module: CUDAModule!
    var raw: RawEmulator!

    override func setUpWithError() throws {
        context = try CUDAContext.open(emulator: try CUDAEmulator.path())
        module = try CUDAModule(context: context, source: Self.source, name: "emulator_tests.cu")
        raw = try RawEmulator()
    }

    override func tearDownWithError() throws {
        // A planted defect leaves the context's error sticky, as on a GPU: start anew.
        raw.setDelay(0)
        XCTAssertEqual(raw.resetContext(0), 0)
    }

    func launch(_ kernel: String, grid: Int = 1, block: Int, _ arguments: [KernelArgument]) throws {
        try module.launch(kernel, grid: grid, block: block, arguments, stream: context.stream)
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

    /// A kernel's failure shows when the host next waits for the stream (the launch itself
    /// was only queued), and it is sticky: every later call fails with it until the context
    /// is reset, as after a GPU's launch failure.
    func testABarrierThatSomeThreadsSkipIsAStickyErrorNamingIt() throws {
        let out = try device([Float](repeating: 0, count: 64))
        try launch("divergent_barrier", block: 64, [.pointer(out)])
        XCTAssertThrowsError(try context.synchronize()) { e in
            XCTAssertTrue("\(e)".contains("CUDA_ERROR_LAUNCH_FAILED") && "\(e)".contains("__syncthreads") && "\(e)".contains("divergent_barrier"), "\(e)")
        }
        XCTAssertThrowsError(try host(out, count: 64)) { e in XCTAssertTrue("\(e)".contains("divergent_barrier"), "\(e)") }
        XCTAssertEqual(raw.resetContext(0), 0)
        XCTAssertEqual(try host(out, count: 1), [0])
    }

    func testAShuffleWaitingForAnExitedLaneIsAnError() throws {
        let out = try device([Float](repeating: 0, count: 32))
        try launch("early_exit_shuffle", block: 32, [.pointer(out)])
        XCTAssertThrowsError(try context.synchronize()) { e in
            XCTAssertTrue("\(e)".contains("lane") && "\(e)".contains("exited"), "\(e)")
        }
    }

    /// memcheck: a read past the end of a block lands on the guard page after it and is
    /// CUDA_ERROR_ILLEGAL_ADDRESS (700) naming the kernel and the block.
    func testAReadPastTheEndOfABlockIsAnIllegalAddressNamingTheKernel() throws {
        let x = try device([Float](repeating: 1, count: 128)), out = try device([0])  // 512 bytes: the block ends at a page
        try launch("read_one_past", block: 256, [.pointer(x), .pointer(out), .int32(128)])
        XCTAssertThrowsError(try context.synchronize()) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("CUDA_ERROR_ILLEGAL_ADDRESS") && m.contains("read_one_past") && m.contains("0 byte(s) past the end of the 512-byte block"), m)
        }
    }

    /// memcheck: a write just before a block lands in its red zone, found after the launch.
    func testAWriteBeforeTheStartOfABlockIsFoundInItsRedZone() throws {
        let x = try device([Float](repeating: 1, count: 128))
        try launch("write_before", block: 32, [.pointer(x)])
        XCTAssertThrowsError(try context.synchronize()) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("CUDA_ERROR_ILLEGAL_ADDRESS") && m.contains("write_before") && m.contains("before the 512-byte block"), m)
        }
    }

    /// initcheck: new device memory, a block the caching allocator hands out again, and a
    /// block's shared memory read as NaN until written, so a kernel that reads what
    /// nothing wrote shows.
    func testDeviceMemoryNothingWroteReadsAsNaN() throws {
        let fresh = try context.allocator.allocate(64 * 4)
        XCTAssertTrue(try host(fresh, count: 64).allSatisfy(\.isNaN))
        try launch("fill", block: 64, [.pointer(fresh), .float(3), .int32(64)])
        XCTAssertEqual(try host(fresh, count: 64), [Float](repeating: 3, count: 64))
        context.allocator.free(fresh)
        let again = try context.allocator.allocate(64 * 4)
        XCTAssertEqual(again, fresh, "the cache hands the same block out again")
        XCTAssertTrue(try host(again, count: 64).allSatisfy(\.isNaN))
        // Shared memory too, before each block: never what the previous block left.
        let out = try device([Float](repeating: 0, count: 8))
        try launch("stale_shared", grid: 8, block: 64, [.pointer(out)])
        XCTAssertTrue(try host(out, count: 8).allSatisfy(\.isNaN))
    }

    /// Streams are asynchronous: the host call returns before the work runs (here each
    /// operation waits 20-40 ms first), a copy into pinned memory arrives only when the
    /// stream gets there, and an event is a fence for the host and for another stream.
    func testQueuedWorkRunsAfterTheCallReturnsAndEventsAreFences() throws {
        let x = try device([Float](repeating: 0, count: 64)), y = try device([Float](repeating: 0, count: 64))
        try context.synchronize()
        raw.setDelay(40_000)
        let pinned = try raw.pinned(bytes: 256)
        pinned.initializeMemory(as: Float.self, repeating: -1, count: 64)
        try launch("fill", block: 64, [.pointer(x), .float(7), .int32(64)])
        let driver = context.driver
        try driver.check(driver.cuMemcpyDtoHAsync(pinned, x, 256, context.stream), "cuMemcpyDtoHAsync_v2")
        XCTAssertEqual(pinned.load(as: Float.self), -1, "the copy into pinned memory ran before the host went on")
        var done: OpaquePointer?
        try driver.check(driver.cuEventCreate(&done, 2), "cuEventCreate")
        try driver.check(driver.cuEventRecord(done, context.stream), "cuEventRecord")
        try driver.check(driver.cuEventSynchronize(done), "cuEventSynchronize")
        XCTAssertEqual(pinned.load(fromByteOffset: 63 * 4, as: Float.self), 7)
        // The copy stream waits for the compute stream's event before it copies x into y.
        try launch("fill", block: 64, [.pointer(x), .float(9), .int32(64)])
        try driver.check(driver.cuEventRecord(done, context.stream), "cuEventRecord")
        try driver.check(driver.cuStreamWaitEvent(context.copyStream, done, 0), "cuStreamWaitEvent")
        try driver.check(driver.cuMemcpyDtoDAsync(y, x, 256, context.copyStream), "cuMemcpyDtoDAsync_v2")
        try driver.check(driver.cuStreamSynchronize(context.copyStream), "cuStreamSynchronize")
        raw.setDelay(0)
        XCTAssertEqual(try host(y, count: 64), [Float](repeating: 9, count: 64))
        try driver.check(driver.cuEventDestroy(done), "cuEventDestroy_v2")
        try driver.check(driver.cuMemFreeHost(pinned), "cuMemFreeHost")
    }

    /// Blocks run in a seeded random order, and the threads of a block too, so a kernel
    /// whose result depends on which runs first differs from launch to launch.
    func testBlocksAndThreadsRunInARandomOrderThatDiffersBetweenLaunches() throws {
        func arrivals(_ kernel: String, grid: Int, block: Int, count: Int) throws -> [Int] {
            let counter = try context.allocator.allocate(4), order = try context.allocator.allocate(count * 4)
            try context.driver.check(context.driver.cuMemsetD8Async(counter, 0, 4, context.stream), "cuMemsetD8Async")
            try launch(kernel, grid: grid, block: block, [.pointer(counter), .pointer(order)])
            var out = [Int32](repeating: 0, count: count)
            try out.withUnsafeMutableBytes { try context.copy(fromDevice: order, into: $0) }
            return out.map(Int.init)
        }
        let first = try arrivals("block_arrival", grid: 64, block: 32, count: 64), second = try arrivals("block_arrival", grid: 64, block: 32, count: 64)
        XCTAssertEqual(first.sorted(), Array(0..<64))
        XCTAssertNotEqual(first, Array(0..<64))
        XCTAssertNotEqual(first, second)
        let threads = try arrivals("thread_arrival", grid: 1, block: 128, count: 128)
        XCTAssertEqual(threads.sorted(), Array(0..<128))
        XCTAssertNotEqual(threads, Array(0..<128))
    }

    /// The hardware's launch limits, refused when the launch is queued with the driver's
    /// CUDA_ERROR_INVALID_VALUE (1).
    func testLaunchesPastTheHardwaresLimitsAreRefusedWithTheDriversCode() throws {
        let out = try device([0])
        let f = try module.function("fill")
        var v: Float = 1, n: Int32 = 1, p = out
        func launch(grid: (UInt32, UInt32, UInt32), block: (UInt32, UInt32, UInt32), shared: UInt32 = 0) -> (Int32, String) {
            withUnsafeMutablePointer(to: &p) { pp in withUnsafeMutablePointer(to: &v) { pv in withUnsafeMutablePointer(to: &n) { pn in
                var params: [UnsafeMutableRawPointer?] = [UnsafeMutableRawPointer(pp), UnsafeMutableRawPointer(pv), UnsafeMutableRawPointer(pn)]
                let status = context.driver.cuLaunchKernel(f, grid.0, grid.1, grid.2, block.0, block.1, block.2, shared, context.stream, &params, nil)
                return (status, raw.lastError())
            } } }
        }
        for (grid, block, shared, why) in [((1, 1, 1), (1025, 1, 1), 0, "block limits"), ((1, 1, 1), (512, 3, 1), 0, "block limits"),
                                           ((1, 1, 1), (1, 1, 65), 0, "block limits"), ((1, 65536, 1), (32, 1, 1), 0, "grid limits"),
                                           ((1, 1, 1), (32, 1, 1), 48 * 1024 + 1, "shared memory")] as [((UInt32, UInt32, UInt32), (UInt32, UInt32, UInt32), UInt32, String)] {
            let (status, message) = launch(grid: grid, block: block, shared: shared)
            XCTAssertEqual(status, 1, "grid \(grid), block \(block), shared \(shared): \(message)")
            XCTAssertTrue(message.contains(why) && message.contains("fill"), message)
        }
        XCTAssertEqual(launch(grid: (1, 65535, 1), block: (1024, 1, 1)).0, 0, "the limits themselves are allowed")
        let big = try module.function("big_parameter")
        var bytes = [UInt8](repeating: 0, count: 4400)
        let status = bytes.withUnsafeMutableBytes { b in
            withUnsafeMutablePointer(to: &p) { pp in
                var params: [UnsafeMutableRawPointer?] = [b.baseAddress, UnsafeMutableRawPointer(pp)]
                return context.driver.cuLaunchKernel(big, 1, 1, 1, 1, 1, 1, 0, context.stream, &params, nil)
            }
        }
        XCTAssertEqual(status, 1)
        XCTAssertTrue(raw.lastError().contains("4 KB"), raw.lastError())
        try context.synchronize()
    }

    /// cuBLAS checks its arguments (OpenBLAS alone would print a line and leave C as it was).
    func testCuBLASRefusesALeadingDimensionShorterThanAColumn() throws {
        let blas = try CUBLAS(stream: context.stream, allowTF32: false, emulator: try CUDAEmulator.path())
        let a = try device([Float](repeating: 1, count: 16)), c = try device([Float](repeating: 0, count: 16))
        XCTAssertThrowsError(try blas.gemm(transA: false, transB: false, m: 4, n: 4, k: 4, alpha: 1, a: a, lda: 3, strideA: 0,
                                           b: a, ldb: 4, strideB: 0, beta: 0, c: c, ldc: 4, strideC: 0, batch: 1)) { e in
            XCTAssertTrue("\(e)".contains("CUBLAS_STATUS_INVALID_VALUE (7)"), "\(e)")
        }
        try blas.gemm(transA: false, transB: false, m: 4, n: 4, k: 4, alpha: 1, a: a, lda: 4, strideA: 0,
                      b: a, ldb: 4, strideB: 0, beta: 0, c: c, ldc: 4, strideC: 0, batch: 1)
        XCTAssertEqual(try host(c, count: 16), [Float](repeating: 4, count: 16))
    }

    func testACompileErrorCarriesTheCompilersMessage() throws {
        XCTAssertThrowsError(try CUDAModule(context: context, source: "extern \"C\" __global__ void broken(float* x) { x[0] = undeclared; }",
                                            name: "broken.cu")) { e in
            XCTAssertTrue("\(e)".contains("undeclared") && "\(e)".contains("broken.cu"), "\(e)")
        }
    }
}

/// The emulator's entry points, called directly (as a defect would call them, or where
/// `CUDAContext` has no wrapper): the library `CUDAContext` opened, resolved with dlsym.
struct RawEmulator {
    let library: UnsafeMutableRawPointer

    init() throws { library = try XCTUnwrap(dlopen(try CUDAEmulator.path(), RTLD_NOW)) }

    func symbol<T>(_ name: String, as type: T.Type) -> T { unsafeBitCast(dlsym(library, name)!, to: type) }

    func lastError() -> String {
        symbol("loomEmulatorLastError", as: (@convention(c) () -> UnsafePointer<CChar>?).self)().map { String(cString: $0) } ?? ""
    }
    func setDelay(_ microseconds: UInt32) { symbol("loomEmulatorSetDelay", as: (@convention(c) (UInt32) -> Void).self)(microseconds) }
    func resetContext(_ device: Int32) -> Int32 { symbol("cuDevicePrimaryCtxReset_v2", as: (@convention(c) (Int32) -> Int32).self)(device) }

    func pinned(bytes: Int) throws -> UnsafeMutableRawPointer {
        var p: UnsafeMutableRawPointer?
        let alloc = symbol("cuMemHostAlloc", as: (@convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>, Int, UInt32) -> Int32).self)
        XCTAssertEqual(alloc(&p, bytes, 0), 0, lastError())
        return try XCTUnwrap(p)
    }
}
