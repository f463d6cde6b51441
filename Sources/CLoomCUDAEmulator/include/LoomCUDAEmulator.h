#pragma once
// Loom's CUDA emulator: the subset of the CUDA driver API, NVRTC and cuBLAS that Loom's
// CUDA backend calls, implemented on the CPU for tests (see Emulator.cpp). Loaded with
// dlopen in place of libcuda/libnvrtc/libcublas when LOOM_CUDA_EMULATOR names it.

#ifdef __cplusplus
extern "C" {
#endif

/// The message of the calling thread's last failed emulator call ("" if none).
const char* loomEmulatorLastError(void);

/// A digest of the kernel runtime compiled into every module: part of the kernel cache's
/// key, so a changed emulator never loads modules built by an older one.
const char* loomEmulatorRuntimeDigest(void);

/// Makes each stream wait between half of `microseconds` and all of it (seeded) before each
/// queued operation, so that a missing synchronisation reads stale memory (tests; also
/// LOOM_CUDA_EMULATOR_DELAY_US). 0 turns it off.
void loomEmulatorSetDelay(unsigned microseconds);

#ifdef __cplusplus
}
#endif
