// Loom's shim over the PJRT C API (see include/loom_pjrt.h).
#define _GNU_SOURCE
#include "include/loom_pjrt.h"
#include "include/pjrt_c_api.h"

#include <dlfcn.h>
#include <sched.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct LoomPJRT {
    void *library;
    const PJRT_Api *api;
    PJRT_Client *client;
    PJRT_Device *const *devices;
    size_t device_count;
    char platform[32];
};

static char *message(const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    char *s = NULL;
    if (vasprintf(&s, format, ap) < 0) s = NULL;
    va_end(ap);
    return s;
}

// Takes the plugin's error apart: its message, prefixed with the call, and frees it.
static char *failed(const PJRT_Api *api, PJRT_Error *error, const char *call) {
    if (!error) return NULL;
    PJRT_Error_Message_Args m = {.struct_size = PJRT_Error_Message_Args_STRUCT_SIZE, .error = error};
    api->PJRT_Error_Message(&m);
    char *s = message("%s: %.*s", call, (int)m.message_size, m.message);
    PJRT_Error_Destroy_Args d = {.struct_size = PJRT_Error_Destroy_Args_STRUCT_SIZE, .error = error};
    api->PJRT_Error_Destroy(&d);
    return s;
}

#define CALL(p, name, args) failed((p)->api, (p)->api->name(&(args)), #name)

// An event's end, told by the plugin's callback.
struct ended { sem_t done; PJRT_Error *error; };
static void on_end(PJRT_Error *error, void *arg) {
    struct ended *e = arg;
    e->error = error;
    sem_post(&e->done);
}

// Waits for `event` and frees it; the error it ended with, as `what`'s. Sleeps on a semaphore
// the plugin's callback posts, where PJRT_Event_Await spins and yields: a host thread waiting
// for a program took CPU time from the program's own threads.
static char *await_event(LoomPJRT *p, PJRT_Event *event, const char *what) {
    if (!event) return NULL;
    struct ended e = {.error = NULL};
    sem_init(&e.done, 0, 0);
    PJRT_Event_OnReady_Args o = {.struct_size = PJRT_Event_OnReady_Args_STRUCT_SIZE, .event = event, .callback = on_end, .user_arg = &e};
    char *error = CALL(p, PJRT_Event_OnReady, o);
    if (!error) {
        while (sem_wait(&e.done) != 0) {}
        error = failed(p->api, e.error, what);
    }
    sem_destroy(&e.done);
    PJRT_Event_Destroy_Args d = {.struct_size = PJRT_Event_Destroy_Args_STRUCT_SIZE, .event = event};
    p->api->PJRT_Event_Destroy(&d);
    return error;
}

// dlopen, GetPjrtApi and the version check: the API, or a message.
static char *load(const char *path, void **library_out, const PJRT_Api **api_out) {
    void *library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) return message("cannot open the PJRT plugin %s: %s", path, dlerror());
    const PJRT_Api *(*get)(void) = (const PJRT_Api *(*)(void))dlsym(library, "GetPjrtApi");
    if (!get) { dlclose(library); return message("%s is not a PJRT plugin (no GetPjrtApi)", path); }
    const PJRT_Api *api = get();
    if (!api) { dlclose(library); return message("%s: GetPjrtApi returned no API", path); }
    if (api->pjrt_api_version.major_version != PJRT_API_MAJOR)
        return message("%s speaks PJRT API %d.%d; Loom was built on %d.%d (the major versions must match)", path,
                       api->pjrt_api_version.major_version, api->pjrt_api_version.minor_version, PJRT_API_MAJOR, PJRT_API_MINOR);
    *library_out = library;
    *api_out = api;
    return NULL;
}

char *loom_pjrt_open_compiler(const char *path, LoomPJRT **out) {
    *out = NULL;
    void *library;
    const PJRT_Api *api;
    setenv("TF_CPP_MIN_LOG_LEVEL", "1", 0);  // XLA's informational lines off, unless asked for
    char *e = load(path, &library, &api);
    if (e) return e;
    LoomPJRT *p = calloc(1, sizeof *p);
    p->library = library;
    p->api = api;
    PJRT_Plugin_Initialize_Args init = {.struct_size = PJRT_Plugin_Initialize_Args_STRUCT_SIZE};
    if ((e = CALL(p, PJRT_Plugin_Initialize, init))) { free(p); return e; }
    *out = p;
    return NULL;
}

char *loom_pjrt_open(const char *path, LoomPJRT **out) {
    char *e = loom_pjrt_open_compiler(path, out);
    if (e) return e;
    LoomPJRT *p = *out;
    *out = NULL;
    // XLA:CPU's plugin makes 4 devices unless told, and a pool of max(devices, processors)
    // threads: 4 threads on 2 cores ran the mlp step 17% slower. One device per processor
    // this process may use (at least 2, for two data parallel ranks). Other plugins reject
    // the option they do not know: they are created without it.
    cpu_set_t cpus;
    int processors = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 2;
    PJRT_NamedValue devices_option = {.struct_size = PJRT_NamedValue_STRUCT_SIZE, .name = "cpu_device_count", .name_size = 16,
                                      .type = PJRT_NamedValue_kInt64, .int64_value = processors < 2 ? 2 : processors, .value_size = 1};
    PJRT_Client_Create_Args create = {.struct_size = PJRT_Client_Create_Args_STRUCT_SIZE, .create_options = &devices_option,
                                      .num_options = 1};
    if ((e = CALL(p, PJRT_Client_Create, create))) {
        free(e);
        create = (PJRT_Client_Create_Args){.struct_size = PJRT_Client_Create_Args_STRUCT_SIZE};
        if ((e = CALL(p, PJRT_Client_Create, create))) goto fail;
    }
    p->client = create.client;
    PJRT_Client_AddressableDevices_Args devices = {.struct_size = PJRT_Client_AddressableDevices_Args_STRUCT_SIZE, .client = p->client};
    if ((e = CALL(p, PJRT_Client_AddressableDevices, devices))) goto fail;
    p->devices = devices.addressable_devices;
    p->device_count = devices.num_addressable_devices;
    PJRT_Client_PlatformName_Args name = {.struct_size = PJRT_Client_PlatformName_Args_STRUCT_SIZE, .client = p->client};
    if ((e = CALL(p, PJRT_Client_PlatformName, name))) goto fail;
    snprintf(p->platform, sizeof p->platform, "%.*s", (int)name.platform_name_size, name.platform_name);
    *out = p;
    return NULL;
fail:
    loom_pjrt_close(p);
    return e;
}

void loom_pjrt_close(LoomPJRT *p) {
    if (!p) return;
    if (p->client) {
        PJRT_Client_Destroy_Args d = {.struct_size = PJRT_Client_Destroy_Args_STRUCT_SIZE, .client = p->client};
        free(CALL(p, PJRT_Client_Destroy, d));
    }
    // The library stays loaded: plugins keep threads and static state that outlive a client.
    free(p);
}

void loom_pjrt_api_version(const LoomPJRT *p, int *major, int *minor) {
    *major = p->api->pjrt_api_version.major_version;
    *minor = p->api->pjrt_api_version.minor_version;
}

const char *loom_pjrt_platform(const LoomPJRT *p) { return p->platform; }
int loom_pjrt_device_count(const LoomPJRT *p) { return (int)p->device_count; }

// xla.CompileOptionsProto { executable_build_options (3) { num_replicas (4) = 1, num_partitions (5) = 1 },
// compile_portable_executable (4) = true }: empty options abort the CPU plugin (replica_count must
// be positive); a portable executable runs on whichever device `execute` names (data parallel
// ranks share one compilation).
static const char compile_options[] = {0x1a, 0x04, 0x20, 0x01, 0x28, 0x01, 0x20, 0x01};

// A loaded executable's executable (to ask it things), released with `release`.
static char *executable_of(LoomPJRT *p, PJRT_LoadedExecutable *loaded, PJRT_Executable **out) {
    PJRT_LoadedExecutable_GetExecutable_Args g = {.struct_size = PJRT_LoadedExecutable_GetExecutable_Args_STRUCT_SIZE,
                                                  .loaded_executable = loaded};
    char *e = CALL(p, PJRT_LoadedExecutable_GetExecutable, g);
    if (!e) *out = g.executable;
    return e;
}

static void release(LoomPJRT *p, PJRT_Executable *executable) {
    PJRT_Executable_Destroy_Args d = {.struct_size = PJRT_Executable_Destroy_Args_STRUCT_SIZE, .executable = executable};
    free(CALL(p, PJRT_Executable_Destroy, d));
}

// An executable's serialised bytes: their size, and a malloc'd copy when `bytes` is not NULL.
static char *serialized(LoomPJRT *p, PJRT_Executable *executable, char **bytes, size_t *size) {
    PJRT_Executable_Serialize_Args s = {.struct_size = PJRT_Executable_Serialize_Args_STRUCT_SIZE, .executable = executable};
    char *e = CALL(p, PJRT_Executable_Serialize, s);
    if (e) return e;
    *size = s.serialized_bytes_size;
    if (bytes) {
        *bytes = malloc(s.serialized_bytes_size ? s.serialized_bytes_size : 1);
        memcpy(*bytes, s.serialized_bytes, s.serialized_bytes_size);
    }
    if (s.serialized_executable_deleter) s.serialized_executable_deleter(s.serialized_executable);
    return NULL;
}

char *loom_pjrt_compile_for_topology(LoomPJRT *p, const char *topology, const char *code, size_t size, size_t *bytes) {
    PJRT_TopologyDescription_Create_Args t = {.struct_size = PJRT_TopologyDescription_Create_Args_STRUCT_SIZE,
                                              .topology_name = topology, .topology_name_size = strlen(topology)};
    char *e = CALL(p, PJRT_TopologyDescription_Create, t);
    if (e) return e;
    PJRT_Program program = {.struct_size = PJRT_Program_STRUCT_SIZE, .code = (char *)code, .code_size = size,
                            .format = "mlir", .format_size = 4};
    PJRT_Compile_Args c = {.struct_size = PJRT_Compile_Args_STRUCT_SIZE, .topology = t.topology, .program = &program,
                           .compile_options = compile_options, .compile_options_size = sizeof compile_options};
    e = CALL(p, PJRT_Compile, c);
    if (!e) {
        e = serialized(p, c.executable, NULL, bytes);
        release(p, c.executable);
    }
    PJRT_TopologyDescription_Destroy_Args d = {.struct_size = PJRT_TopologyDescription_Destroy_Args_STRUCT_SIZE, .topology = t.topology};
    free(CALL(p, PJRT_TopologyDescription_Destroy, d));
    return e;
}

// The number of results of a loaded executable.
static char *num_outputs(LoomPJRT *p, PJRT_LoadedExecutable *loaded, size_t *outputs) {
    PJRT_Executable *executable;
    char *e = executable_of(p, loaded, &executable);
    if (e) return e;
    PJRT_Executable_NumOutputs_Args n = {.struct_size = PJRT_Executable_NumOutputs_Args_STRUCT_SIZE, .executable = executable};
    e = CALL(p, PJRT_Executable_NumOutputs, n);
    release(p, executable);
    if (!e) *outputs = n.num_outputs;
    return e;
}

char *loom_pjrt_compile(LoomPJRT *p, const char *code, size_t size, void **executable, size_t *outputs) {
    PJRT_Program program = {.struct_size = PJRT_Program_STRUCT_SIZE, .code = (char *)code, .code_size = size,
                            .format = "mlir", .format_size = 4};
    PJRT_Client_Compile_Args c = {.struct_size = PJRT_Client_Compile_Args_STRUCT_SIZE, .client = p->client, .program = &program,
                                  .compile_options = compile_options, .compile_options_size = sizeof compile_options};
    char *e = CALL(p, PJRT_Client_Compile, c);
    if (e) return e;
    if ((e = num_outputs(p, c.executable, outputs))) { loom_pjrt_executable_destroy(p, c.executable); return e; }
    *executable = c.executable;
    return NULL;
}

char *loom_pjrt_serialize(LoomPJRT *p, void *loaded, char **bytes, size_t *size) {
    PJRT_Executable *executable;
    char *e = executable_of(p, loaded, &executable);
    if (e) return e;
    e = serialized(p, executable, bytes, size);
    release(p, executable);
    return e;
}

char *loom_pjrt_deserialize(LoomPJRT *p, const char *bytes, size_t size, void **executable, size_t *outputs) {
    PJRT_Executable_DeserializeAndLoad_Args a = {.struct_size = PJRT_Executable_DeserializeAndLoad_Args_STRUCT_SIZE,
                                                 .client = p->client, .serialized_executable = bytes, .serialized_executable_size = size};
    char *e = CALL(p, PJRT_Executable_DeserializeAndLoad, a);
    if (e) return e;
    if ((e = num_outputs(p, a.loaded_executable, outputs))) { loom_pjrt_executable_destroy(p, a.loaded_executable); return e; }
    *executable = a.loaded_executable;
    return NULL;
}

void loom_pjrt_executable_destroy(LoomPJRT *p, void *executable) {
    PJRT_LoadedExecutable_Destroy_Args d = {.struct_size = PJRT_LoadedExecutable_Destroy_Args_STRUCT_SIZE, .executable = executable};
    free(CALL(p, PJRT_LoadedExecutable_Destroy, d));
}

char *loom_pjrt_execute(LoomPJRT *p, void *executable, int device, void *const *args, size_t nargs,
                        const uint8_t *donated, void **outs, size_t nouts, void **running) {
    if (device < 0 || (size_t)device >= p->device_count)
        return message("execute: device %d of %zu", device, p->device_count);
    int64_t *kept = malloc((nargs + 1) * sizeof *kept);
    size_t nkept = 0;
    for (size_t i = 0; i < nargs; i++) if (!donated || !donated[i]) kept[nkept++] = (int64_t)i;
    PJRT_ExecuteOptions options = {.struct_size = PJRT_ExecuteOptions_STRUCT_SIZE,
                                   .non_donatable_input_indices = kept, .num_non_donatable_input_indices = nkept};
    PJRT_Buffer *const *argList = (PJRT_Buffer *const *)args;
    PJRT_Buffer **outList = (PJRT_Buffer **)outs;
    PJRT_Event *done = NULL;
    PJRT_LoadedExecutable_Execute_Args x = {.struct_size = PJRT_LoadedExecutable_Execute_Args_STRUCT_SIZE,
                                            .executable = executable, .options = &options, .argument_lists = &argList,
                                            .num_devices = 1, .num_args = nargs, .output_lists = &outList,
                                            .device_complete_events = &done, .execute_device = p->devices[device]};
    char *e = CALL(p, PJRT_LoadedExecutable_Execute, x);
    free(kept);
    (void)nouts;
    if (e) return e;
    // A donated argument's handle goes now: the run took its memory when it was enqueued.
    for (size_t i = 0; i < nargs; i++) if (donated && donated[i]) loom_pjrt_buffer_destroy(p, args[i]);
    if (running) { *running = done; return NULL; }
    return await_event(p, done, "execute");
}

char *loom_pjrt_wait(LoomPJRT *p, void *running) { return await_event(p, running, "execute"); }

static PJRT_Buffer_Type buffer_type(int type) {
    switch (type) {
    case LOOM_PJRT_BF16: return PJRT_Buffer_Type_BF16;
    case LOOM_PJRT_S32: return PJRT_Buffer_Type_S32;
    case LOOM_PJRT_F16: return PJRT_Buffer_Type_F16;
    case LOOM_PJRT_U32: return PJRT_Buffer_Type_U32;
    default: return PJRT_Buffer_Type_F32;
    }
}

char *loom_pjrt_buffer_from_host(LoomPJRT *p, int device, const void *data, int type, const int64_t *dims,
                                 size_t rank, void **buffer) {
    if (device < 0 || (size_t)device >= p->device_count)
        return message("upload: device %d of %zu", device, p->device_count);
    PJRT_Client_BufferFromHostBuffer_Args b = {
        .struct_size = PJRT_Client_BufferFromHostBuffer_Args_STRUCT_SIZE, .client = p->client, .data = data,
        .type = buffer_type(type), .dims = dims, .num_dims = rank,
        .host_buffer_semantics = PJRT_HostBufferSemantics_kImmutableOnlyDuringCall, .device = p->devices[device]};
    char *e = CALL(p, PJRT_Client_BufferFromHostBuffer, b);
    if (e) return e;
    if ((e = await_event(p, b.done_with_host_buffer, "upload"))) { loom_pjrt_buffer_destroy(p, b.buffer); return e; }
    *buffer = b.buffer;
    return NULL;
}

char *loom_pjrt_buffer_to_host(LoomPJRT *p, void *buffer, void *dst, size_t bytes) {
    PJRT_Buffer_ToHostBuffer_Args t = {.struct_size = PJRT_Buffer_ToHostBuffer_Args_STRUCT_SIZE, .src = buffer,
                                       .dst = dst, .dst_size = bytes};
    char *e = CALL(p, PJRT_Buffer_ToHostBuffer, t);
    if (e) return e;
    return await_event(p, t.event, "download");
}

void loom_pjrt_buffer_destroy(LoomPJRT *p, void *buffer) {
    if (!buffer) return;
    PJRT_Buffer_Destroy_Args d = {.struct_size = PJRT_Buffer_Destroy_Args_STRUCT_SIZE, .buffer = buffer};
    free(CALL(p, PJRT_Buffer_Destroy, d));
}
