import XCTest
import LoomCUDA

/// What of the CUDA layer runs without a GPU: loading (and its error where the driver is
/// missing), the caching allocator and the kernel cache, with host stand-ins for the
/// driver and NVRTC.
final class CUDARuntimeTests: XCTestCase {
    func testWithoutTheDriverOpeningFailsNamingTheLibrary() throws {
        do {
            let c = try CUDAContext.open()
            throw XCTSkip("a GPU is present (\(c.description)): this checks the machines without one")
        } catch let e as CUDAError {
            XCTAssertTrue("\(e)".contains("libcuda.so.1"), "\(e)")
            XCTAssertFalse("\(e)".contains("\n"), "one line: \(e)")
        }
    }

    func testMissingLibraryAndSymbolErrorsNameThem() {
        XCTAssertThrowsError(try DynamicLibrary(candidates: ["libloom-does-not-exist.so.7"], purpose: "a test library")) { e in
            XCTAssertTrue("\(e)".contains("libloom-does-not-exist.so.7") && "\(e)".contains("a test library"), "\(e)")
        }
        let libc = try? DynamicLibrary(candidates: ["libc.so.6"], purpose: "libc")
        XCTAssertNotNil(libc)
        XCTAssertThrowsError(try libc!.function("cuNoSuchCall", as: (@convention(c) () -> Int32).self)) { e in
            XCTAssertTrue("\(e)".contains("cuNoSuchCall"), "\(e)")
        }
    }

    /// A host stand-in for cuMemAlloc/cuMemFree with a capacity.
    final class FakeDevice {
        var live: [UInt64: Int] = [:]
        var next: UInt64 = 0x1000
        var capacity: Int
        var calls = 0
        init(capacity: Int) { self.capacity = capacity }
        var used: Int { live.values.reduce(0, +) }
        func allocate(_ n: Int) throws -> UInt64 {
            calls += 1
            guard used + n <= capacity else { throw CUDAError(call: "cuMemAlloc_v2(\(n) bytes)", message: "CUDA_ERROR_OUT_OF_MEMORY (2)") }
            defer { next += UInt64(n) }
            live[next] = n
            return next
        }
        func release(_ a: UInt64) { live[a] = nil }
    }

    func testCachingAllocatorReusesBlocksAndRetriesAfterReleasingTheCache() throws {
        let device = FakeDevice(capacity: 8 << 20)
        let a = CachingAllocator(allocate: device.allocate, release: device.release)
        XCTAssertEqual(CachingAllocator.rounded(1), 512)
        XCTAssertEqual(CachingAllocator.rounded(1000), 1024)
        XCTAssertEqual(CachingAllocator.rounded(3 << 20), 4 << 20)
        let x = try a.allocate(1000)
        a.free(x)
        let y = try a.allocate(900)  // same rounded size: the cached block, no driver call
        XCTAssertEqual(x, y)
        XCTAssertEqual(device.calls, 1)
        XCTAssertEqual(a.hits, 1)
        a.free(y)
        // A 4 MiB block cached, then 6 MiB requested: the 8 MiB device has room only once the cache is released.
        let big = try a.allocate(4 << 20)
        a.free(big)
        XCTAssertEqual(a.reservedBytes, 1024 + (4 << 20))
        let bigger = try a.allocate(6 << 20)  // fails on the device, succeeds after the cache is released
        XCTAssertEqual(a.reservedBytes, 6 << 20)
        XCTAssertEqual(a.allocatedBytes, 6 << 20)
        XCTAssertThrowsError(try a.allocate(4 << 20)) { e in
            XCTAssertTrue("\(e)".contains("4194304 bytes requested") && "\(e)".contains("6291456 allocated"), "\(e)")
        }
        a.free(bigger)
        try a.releaseCached()
        XCTAssertEqual(a.reservedBytes, 0)
        XCTAssertTrue(device.live.isEmpty)
        XCTAssertEqual(a.peakAllocatedBytes, 6 << 20)
    }

    func testKernelsCompileOnceAndLaterProcessesReadTheBinaryFromDisk() throws {
        let dir = NSTemporaryDirectory() + "loom-kernels-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var compiled: [String] = []
        func cache() -> KernelCache<String> {
            KernelCache(directory: dir, compile: { source, name in compiled.append(name); return Array("binary of \(name): \(source.count)".utf8) },
                        load: { binary, _ in String(decoding: binary, as: UTF8.self) })
        }
        let first = cache()
        let k1 = try first.kernel("add", source: "extern \"C\" __global__ void add() {}", target: "sm_90")
        let k2 = try first.kernel("add", source: "extern \"C\" __global__ void add() {}", target: "sm_90")
        XCTAssertEqual(k1, k2)
        XCTAssertEqual(compiled, ["add"])
        _ = try first.kernel("add", source: "extern \"C\" __global__ void add() {}", target: "sm_80")  // another target compiles
        XCTAssertEqual(compiled.count, 2)
        let second = cache()  // a new process: reads the binary written by the first
        XCTAssertEqual(try second.kernel("add", source: "extern \"C\" __global__ void add() {}", target: "sm_90"), k1)
        XCTAssertEqual(second.compilations, 0)
    }
}
