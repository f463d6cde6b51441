import Foundation

/// A shared library opened at run time with `dlopen`, so Loom builds and runs without the
/// CUDA toolkit and uses it where it is installed.
public final class DynamicLibrary: @unchecked Sendable {
    public let path: String
    private let handle: UnsafeMutableRawPointer
    /// Whether this is Loom's CUDA emulator standing in for the library asked for.
    public let isEmulator: Bool

    /// The CUDA emulator's path when `LOOM_CUDA_EMULATOR` names it: then the driver,
    /// NVRTC and cuBLAS all come from that one library (`libLoomCUDAEmulator.so`, built
    /// with the package), which runs Loom's CUDA backend and its kernels on the CPU for
    /// tests. Never set on a machine with a GPU.
    public static var emulatorPath: String? {
        ProcessInfo.processInfo.environment["LOOM_CUDA_EMULATOR"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Opens the first of `candidates` that loads, looking first in the directories of
    /// `LOOM_CUDA_LIBS` (colon-separated; PyTorch's pip wheels keep cuBLAS and NVRTC
    /// outside the loader's path), then where the loader looks. The error names every
    /// one tried and the loader's reason for the last.
    ///
    /// `emulator`: the path of Loom's CUDA emulator, opened instead of any candidate.
    public init(candidates: [String], purpose: String, emulator: String? = DynamicLibrary.emulatorPath) throws {
        if let emulator {
            guard let h = dlopen(emulator, RTLD_NOW | RTLD_LOCAL) else {
                let reason = dlerror().map { String(cString: $0) } ?? "unknown"
                throw CUDAError(call: "dlopen", message: "cannot load the CUDA emulator LOOM_CUDA_EMULATOR=\(emulator) (\(reason))")
            }
            handle = h
            path = emulator
            isEmulator = true
            return
        }
        isEmulator = false
        var reason = ""
        let dirs = (ProcessInfo.processInfo.environment["LOOM_CUDA_LIBS"] ?? "").split(separator: ":").map(String.init)
        for name in dirs.flatMap({ d in candidates.map { d + "/" + $0 } }) + candidates {
            if let h = dlopen(name, RTLD_NOW | RTLD_LOCAL) {
                handle = h
                path = name
                return
            }
            reason = dlerror().map { String(cString: $0) } ?? "unknown"
        }
        throw CUDAError(call: "dlopen", message: "cannot load \(purpose) (tried \(candidates.joined(separator: ", ")); last error: \(reason))")
    }

    /// The function `name` as the C function type `T`.
    public func function<T>(_ name: String, as type: T.Type = T.self) throws -> T {
        guard let p = dlsym(handle, name) else {
            throw CUDAError(call: "dlsym", message: "\(path) has no symbol \(name) (too old a version?)")
        }
        return unsafeBitCast(p, to: T.self)
    }
}

/// A failed CUDA, NVRTC or cuBLAS call: which call, the library's name for the status
/// and its number, or the loader's message.
public struct CUDAError: Error, CustomStringConvertible, Equatable {
    public let call: String
    public let message: String

    public init(call: String, message: String) {
        self.call = call
        self.message = message
    }

    public var description: String { "\(call): \(message)" }
}
