// Loom's shim over the PJRT C API (include/pjrt_c_api.h, OpenXLA, Apache-2.0, vendored
// unchanged from the xla-cpu-pjrt 0.0.1 wheel: API 0.81). A plugin (XLA:CPU, libtpu, the
// CUDA plugin) is opened at run time with dlopen; nothing here links against one.
//
// Every call that can fail returns NULL on success or a message the caller frees: the
// plugin's own words, prefixed with the PJRT call that said them. One place for errors.
#ifndef LOOM_PJRT_H
#define LOOM_PJRT_H

#include <stddef.h>
#include <stdint.h>

typedef struct LoomPJRT LoomPJRT;

/// Element types Loom sends (PJRT_Buffer_Type values are resolved inside the shim).
enum { LOOM_PJRT_F32 = 0, LOOM_PJRT_BF16 = 1, LOOM_PJRT_S32 = 2, LOOM_PJRT_F16 = 3, LOOM_PJRT_U32 = 4 };

/// dlopen the plugin, GetPjrtApi, initialise it, create a client.
char *loom_pjrt_open(const char *path, LoomPJRT **out);
void loom_pjrt_close(LoomPJRT *p);

/// The plugin's API version and platform ("cpu", "tpu", "cuda").
void loom_pjrt_api_version(const LoomPJRT *p, int *major, int *minor);
const char *loom_pjrt_platform(const LoomPJRT *p);
int loom_pjrt_device_count(const LoomPJRT *p);

/// Opens a plugin for compiling only: no client, so no device is needed (libtpu on a
/// machine without a TPU; set TPU_SKIP_MDS_QUERY=1 there or it waits on the cloud's
/// metadata server).
char *loom_pjrt_open_compiler(const char *path, LoomPJRT **out);

/// Compiles a StableHLO module for a named topology ("v5e:2x2", "v6e:2x2", …) without
/// devices, for one replica of one partition; `bytes` is the serialised executable's size.
char *loom_pjrt_compile_for_topology(LoomPJRT *p, const char *topology, const char *code, size_t size, size_t *bytes);

/// Compiles a StableHLO module (MLIR text or bytecode) for one device.
char *loom_pjrt_compile(LoomPJRT *p, const char *code, size_t size, void **executable, size_t *outputs);
void loom_pjrt_executable_destroy(LoomPJRT *p, void *executable);

/// A compiled program as bytes (`*bytes` malloc'd, the caller frees), and back: a cache on
/// disk skips recompiling in the next process.
char *loom_pjrt_serialize(LoomPJRT *p, void *executable, char **bytes, size_t *size);
char *loom_pjrt_deserialize(LoomPJRT *p, const char *bytes, size_t size, void **executable, size_t *outputs);

/// Runs a compiled program on `device` with `nargs` argument buffers; its `nouts` results
/// come back in `outs`. Arguments flagged in `donated` may be consumed: the caller must not
/// use those buffers afterwards (they are destroyed here). With `running` NULL it returns
/// when the run has finished; otherwise once the run is enqueued, `*running` the event of
/// its end, for `loom_pjrt_wait` (the results can be passed to another run or downloaded
/// before: PJRT orders them).
char *loom_pjrt_execute(LoomPJRT *p, void *executable, int device, void *const *args, size_t nargs,
                        const uint8_t *donated, void **outs, size_t nouts, void **running);
/// Waits for the run `running` came from, and frees the event; the run's error if it failed.
char *loom_pjrt_wait(LoomPJRT *p, void *running);

/// A device buffer of `type` with `dims`, from host memory (copied before returning).
char *loom_pjrt_buffer_from_host(LoomPJRT *p, int device, const void *data, int type, const int64_t *dims,
                                 size_t rank, void **buffer);
/// Copies a buffer's bytes (row-major) into `dst` (`bytes` long), waiting for them.
char *loom_pjrt_buffer_to_host(LoomPJRT *p, void *buffer, void *dst, size_t bytes);
void loom_pjrt_buffer_destroy(LoomPJRT *p, void *buffer);

#endif
