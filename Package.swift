// swift-tools-version:6.0
import PackageDescription

// No unsafe flags: SwiftPM refuses a version-based dependency on a package whose targets
// carry them. Release builds are whole-module already (what LoomCore's -wmo asked for) and
// keep Swift's checks: -Ounchecked bought nothing measurable (docs/benchmarks.md). The C
// kernels get their square roots as instructions from a builtin (Dispatch.h), not from
// -fno-math-errno.

let package = Package(
    name: "Loom",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "LoomCore", targets: ["LoomCore"]),
        .library(name: "LoomNN", targets: ["LoomNN"]),
        .library(name: "LoomData", targets: ["LoomData"]),
        .library(name: "LoomDistributed", targets: ["LoomDistributed"]),
        .library(name: "LoomParallel", targets: ["LoomParallel"]),
        .library(name: "LoomTrain", targets: ["LoomTrain"]),
        .library(name: "LoomCUDA", targets: ["LoomCUDA"]),
        .library(name: "LoomXLA", targets: ["LoomXLA"]),
        // Test-only: the CUDA driver, NVRTC and cuBLAS answered on the CPU (docs/cuda.md).
        .library(name: "LoomCUDAEmulator", type: .dynamic, targets: ["CLoomCUDAEmulator"]),
        .executable(name: "loom", targets: ["loom"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CDNNL", providers: [.apt(["libdnnl-dev"])]),
        // Elementwise, softmax, norm and optimizer kernels in C, compiled for SSE2, AVX2 and
        // AVX-512 and picked at run time (Sources/CLoomKernels/Dispatch.h).
        .target(name: "CLoomKernels"),
        .target(name: "LoomCore", dependencies: ["COpenBLAS", "CDNNL", "CLoomKernels"]),
        .target(name: "LoomNN", dependencies: ["LoomCore", "LoomDistributed"]),
        .systemLibrary(name: "CZlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CPNG", providers: [.apt(["libpng-dev"])]),
        .target(name: "LoomData", dependencies: ["LoomCore", "CZlib", "CPNG"]),
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
        .target(name: "LoomDistributed", dependencies: ["LoomCore", "CMPI"]),
        .target(name: "LoomParallel", dependencies: ["LoomCore", "LoomNN", "LoomDistributed"]),
        .target(name: "LoomTrain", dependencies: [
            "LoomCore", "LoomNN", "LoomData", "LoomDistributed", "LoomParallel", "CZlib",
            .product(name: "TOMLKit", package: "TOMLKit"),
        ]),
        // CUDA through dlopen: no toolkit or headers at build time.
        // NCCL's unique id as a C type (NCCL itself is opened with dlopen too).
        .systemLibrary(name: "CNCCL"),
        .target(name: "LoomCUDA", dependencies: ["LoomCore", "LoomDistributed", "CNCCL"]),
        // XLA through a PJRT plugin opened with dlopen (the C API's header is vendored).
        .target(name: "CPJRT"),
        .target(name: "LoomXLA", dependencies: ["LoomCore", "CPJRT"]),
        .target(name: "CLoomCUDAEmulator", exclude: ["KernelRuntime.inc"],
                linkerSettings: [.linkedLibrary("openblas")]),
        .executableTarget(name: "loom", dependencies: [
            "LoomCore", "LoomNN", "LoomData", "LoomDistributed", "LoomParallel", "LoomTrain", "LoomCUDA", "LoomXLA",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Loom embedded in another program (a test runs it against loom train).
        .executableTarget(name: "EmbeddingExample", dependencies: ["LoomTrain"], path: "examples/embedding"),
        .testTarget(name: "LoomCoreTests", dependencies: ["LoomCore", "CLoomKernels"]),
        .testTarget(name: "LoomNNTests", dependencies: ["LoomCore", "LoomNN"], resources: [.copy("Fixtures")]),
        .testTarget(name: "LoomDataTests", dependencies: ["LoomCore", "LoomData"], resources: [.copy("Fixtures")]),
        .testTarget(name: "LoomParallelTests", dependencies: ["LoomCore", "LoomNN", "LoomDistributed", "LoomParallel"]),
        .testTarget(name: "LoomTrainTests", dependencies: ["LoomCore", "LoomNN", "LoomData", "LoomDistributed", "LoomTrain"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "LoomXLATests", dependencies: ["LoomCore", "LoomNN", "LoomXLA"]),
        .testTarget(name: "LoomCUDATests", dependencies: ["LoomCore", "LoomNN", "LoomDistributed", "LoomCUDA"]),
    ],
    swiftLanguageModes: [.v5],
    cxxLanguageStandard: .cxx17
)
