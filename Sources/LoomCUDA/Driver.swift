import Foundation

public typealias CUdeviceptr = UInt64
public typealias CUstream = OpaquePointer?
public typealias CUevent = OpaquePointer?

/// The subset of the CUDA driver API Loom calls, resolved from `libcuda.so.1` (the
/// driver, present wherever a GPU is; no toolkit needed). Every call's status is checked
/// by `check`, which names the call and the status (`cuMemAlloc_v2:
/// CUDA_ERROR_OUT_OF_MEMORY (2)`).
public final class CUDADriver: @unchecked Sendable {
    public let library: DynamicLibrary
    public typealias Status = Int32
    public let cuInit: @convention(c) (UInt32) -> Status
    public let cuDeviceGetCount: @convention(c) (UnsafeMutablePointer<Int32>) -> Status
    public let cuDeviceGet: @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Status
    public let cuDeviceGetName: @convention(c) (UnsafeMutablePointer<CChar>, Int32, Int32) -> Status
    public let cuDeviceGetAttribute: @convention(c) (UnsafeMutablePointer<Int32>, Int32, Int32) -> Status
    public let cuDevicePrimaryCtxRetain: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32) -> Status
    public let cuCtxSetCurrent: @convention(c) (OpaquePointer?) -> Status
    public let cuMemAlloc: @convention(c) (UnsafeMutablePointer<CUdeviceptr>, Int) -> Status
    public let cuMemFree: @convention(c) (CUdeviceptr) -> Status
    public let cuMemHostAlloc: @convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>, Int, UInt32) -> Status
    public let cuMemFreeHost: @convention(c) (UnsafeMutableRawPointer?) -> Status
    public let cuMemcpyHtoDAsync: @convention(c) (CUdeviceptr, UnsafeRawPointer?, Int, CUstream) -> Status
    public let cuMemcpyDtoHAsync: @convention(c) (UnsafeMutableRawPointer?, CUdeviceptr, Int, CUstream) -> Status
    public let cuMemcpyDtoDAsync: @convention(c) (CUdeviceptr, CUdeviceptr, Int, CUstream) -> Status
    public let cuMemsetD8Async: @convention(c) (CUdeviceptr, UInt8, Int, CUstream) -> Status
    public let cuStreamCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UInt32) -> Status
    public let cuStreamDestroy: @convention(c) (CUstream) -> Status
    public let cuStreamSynchronize: @convention(c) (CUstream) -> Status
    public let cuStreamWaitEvent: @convention(c) (CUstream, CUevent, UInt32) -> Status
    public let cuEventCreate: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UInt32) -> Status
    public let cuEventRecord: @convention(c) (CUevent, CUstream) -> Status
    public let cuEventSynchronize: @convention(c) (CUevent) -> Status
    public let cuEventDestroy: @convention(c) (CUevent) -> Status
    public let cuModuleLoadData: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafeRawPointer) -> Status
    public let cuModuleGetFunction: @convention(c) (UnsafeMutablePointer<OpaquePointer?>, OpaquePointer?, UnsafePointer<CChar>) -> Status
    public let cuLaunchKernel: @convention(c) (OpaquePointer?, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, CUstream,
                                        UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Status
    public let cuGetErrorName: @convention(c) (Status, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Status
    /// The emulator's explanation of its last failure (a divergent barrier, a missing
    /// kernel); nil for the NVIDIA driver.
    let emulatorLastError: (@convention(c) () -> UnsafePointer<CChar>?)?
    /// The emulator's kernel-runtime digest (part of the kernel cache's key); nil on a GPU.
    public let emulatorRuntimeDigest: String?

    /// Whether this is Loom's CPU emulator of the driver (`LOOM_CUDA_EMULATOR`), not a GPU's.
    public var isEmulated: Bool { library.isEmulator }

    /// Loads the driver and initialises it. Throws on a machine without the NVIDIA driver.
    /// `emulator`: Loom's CPU emulator of the driver instead (tests).
    public init(emulator: String? = DynamicLibrary.emulatorPath) throws {
        library = try DynamicLibrary(candidates: ["libcuda.so.1", "libcuda.so"], purpose: "the NVIDIA driver (libcuda.so.1)", emulator: emulator)
        let l = library
        cuInit = try l.function("cuInit")
        cuDeviceGetCount = try l.function("cuDeviceGetCount")
        cuDeviceGet = try l.function("cuDeviceGet")
        cuDeviceGetName = try l.function("cuDeviceGetName")
        cuDeviceGetAttribute = try l.function("cuDeviceGetAttribute")
        cuDevicePrimaryCtxRetain = try l.function("cuDevicePrimaryCtxRetain")
        cuCtxSetCurrent = try l.function("cuCtxSetCurrent")
        cuMemAlloc = try l.function("cuMemAlloc_v2")
        cuMemFree = try l.function("cuMemFree_v2")
        cuMemHostAlloc = try l.function("cuMemHostAlloc")
        cuMemFreeHost = try l.function("cuMemFreeHost")
        cuMemcpyHtoDAsync = try l.function("cuMemcpyHtoDAsync_v2")
        cuMemcpyDtoHAsync = try l.function("cuMemcpyDtoHAsync_v2")
        cuMemcpyDtoDAsync = try l.function("cuMemcpyDtoDAsync_v2")
        cuMemsetD8Async = try l.function("cuMemsetD8Async")
        cuStreamCreate = try l.function("cuStreamCreate")
        cuStreamDestroy = try l.function("cuStreamDestroy_v2")
        cuStreamSynchronize = try l.function("cuStreamSynchronize")
        cuStreamWaitEvent = try l.function("cuStreamWaitEvent")
        cuEventCreate = try l.function("cuEventCreate")
        cuEventRecord = try l.function("cuEventRecord")
        cuEventSynchronize = try l.function("cuEventSynchronize")
        cuEventDestroy = try l.function("cuEventDestroy_v2")
        cuModuleLoadData = try l.function("cuModuleLoadData")
        cuModuleGetFunction = try l.function("cuModuleGetFunction")
        cuLaunchKernel = try l.function("cuLaunchKernel")
        cuGetErrorName = try l.function("cuGetErrorName")
        emulatorLastError = l.isEmulator ? try l.function("loomEmulatorLastError") : nil
        let digest: (@convention(c) () -> UnsafePointer<CChar>?)? = l.isEmulator ? try l.function("loomEmulatorRuntimeDigest") : nil
        emulatorRuntimeDigest = digest.flatMap { $0() }.map { String(cString: $0) }
        try check(cuInit(0), "cuInit")
    }

    /// Throws unless `status` is CUDA_SUCCESS (0), naming `call` and the status.
    public func check(_ status: Int32, _ call: String) throws {
        guard status != 0 else { return }
        var name: UnsafePointer<CChar>?
        let known = cuGetErrorName(status, &name) == 0 && name != nil
        let detail = emulatorLastError.flatMap { $0() }.map { String(cString: $0) } ?? ""
        throw CUDAError(call: call, message: "\(known ? String(cString: name!) : "unknown CUDA status") (\(status))"
                                            + (detail.isEmpty ? "" : ": \(detail)"))
    }

    public func deviceCount() throws -> Int {
        var n: Int32 = 0
        try check(cuDeviceGetCount(&n), "cuDeviceGetCount")
        return Int(n)
    }

    /// The device's name and compute capability (9.0 on an H100).
    public func describe(device ordinal: Int) throws -> (name: String, major: Int, minor: Int, multiprocessors: Int) {
        var dev: Int32 = 0
        try check(cuDeviceGet(&dev, Int32(ordinal)), "cuDeviceGet(\(ordinal))")
        var buffer = [CChar](repeating: 0, count: 256)
        try check(cuDeviceGetName(&buffer, 256, dev), "cuDeviceGetName")
        var major: Int32 = 0, minor: Int32 = 0
        try check(cuDeviceGetAttribute(&major, 75, dev), "cuDeviceGetAttribute(COMPUTE_CAPABILITY_MAJOR)")
        try check(cuDeviceGetAttribute(&minor, 76, dev), "cuDeviceGetAttribute(COMPUTE_CAPABILITY_MINOR)")
        var sms: Int32 = 0
        try check(cuDeviceGetAttribute(&sms, 16, dev), "cuDeviceGetAttribute(MULTIPROCESSOR_COUNT)")
        return (String(cString: buffer), Int(major), Int(minor), Int(sms))
    }
}
