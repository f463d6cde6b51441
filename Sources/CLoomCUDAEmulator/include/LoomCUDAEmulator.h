#pragma once
// Loom's CUDA emulator: the subset of the CUDA driver API, NVRTC and cuBLAS that Loom's
// CUDA backend calls, implemented on the CPU for tests (see Emulator.cpp). Loaded with
// dlopen in place of libcuda/libnvrtc/libcublas when LOOM_CUDA_EMULATOR names it.

#ifdef __cplusplus
extern "C" {
#endif

/// The message of the calling thread's last failed emulator call ("" if none).
const char* loomEmulatorLastError(void);

#ifdef __cplusplus
}
#endif
