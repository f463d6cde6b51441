// The emulated NVRTC: a kernel file is compiled by the host C++ compiler after the kernel
// runtime (KernelRuntime.inc: CUDA threads as fibers), with a launcher and a parameter-size
// function per `__global__` function, and the shared object is returned as the "CUBIN".
#include "Internal.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace emu {
const char* const runtimeSource =
#include "KernelRuntime.inc"
    ;
const char imageMagic[8] = {'L', 'O', 'O', 'M', 'E', 'M', 'U', '2'};
}  // namespace emu

using namespace emu;

namespace {
std::string temporaryDirectory() {
    const char* t = getenv("TMPDIR");
    return t && *t ? t : "/tmp";
}
}  // namespace

extern "C" {


struct EmulatedProgram {
    std::string source, name, log;
    std::vector<char> image;
};

int nvrtcCreateProgram(EmulatedProgram** program, const char* source, const char* name, int, const char* const*, const char* const*) {
    *program = new EmulatedProgram{source, name ? name : "kernel", "", {}};
    return 0;
}
int nvrtcDestroyProgram(EmulatedProgram** program) { delete *program; *program = nullptr; return 0; }

const char* nvrtcGetErrorString(int status) {
    switch (status) {
    case 0: return "NVRTC_SUCCESS";
    case 6: return "NVRTC_ERROR_COMPILATION";
    case 7: return "NVRTC_ERROR_BUILTIN_OPERATION_FAILURE";
    default: return "NVRTC_ERROR_INTERNAL_ERROR";
    }
}

}  // extern "C"

namespace {

// The names of the `__global__ void NAME(` functions of a CUDA source.
std::vector<std::string> kernelNames(const std::string& source) {
    std::vector<std::string> names;
    size_t at = 0;
    while ((at = source.find("__global__", at)) != std::string::npos) {
        at += 10;
        size_t v = source.find("void", at);
        if (v == std::string::npos) break;
        size_t open = source.find('(', v);
        std::string name = source.substr(v + 4, open - v - 4);
        name.erase(0, name.find_first_not_of(" \t\n"));
        name.erase(name.find_last_not_of(" \t\n") + 1);
        names.push_back(name);
    }
    return names;
}

std::string hostCompiler() {
    if (const char* c = getenv("LOOM_CUDA_EMULATOR_CXX"); c && *c) return c;
    for (const char* candidate : {"c++", "clang++", "g++"}) {
        std::string probe = std::string("command -v ") + candidate + " >/dev/null 2>&1";
        if (system(probe.c_str()) == 0) return candidate;
    }
    return "c++";
}

std::string readFile(const std::string& path) {
    std::string out;
    if (FILE* f = fopen(path.c_str(), "rb")) {
        char buffer[65536];
        size_t n;
        while ((n = fread(buffer, 1, sizeof buffer, f)) > 0) out.append(buffer, n);
        fclose(f);
    }
    return out;
}

bool writeFile(const std::string& path, const std::string& text) {
    FILE* f = fopen(path.c_str(), "wb");
    if (!f) return false;
    bool ok = fwrite(text.data(), 1, text.size(), f) == text.size();
    return fclose(f) == 0 && ok;
}

}  // namespace

extern "C" {

int nvrtcCompileProgram(EmulatedProgram* p, int, const char* const*) {
    char dirTemplate[4096];
    snprintf(dirTemplate, sizeof dirTemplate, "%s/loom-emu-nvrtc-XXXXXX", temporaryDirectory().c_str());
    if (!mkdtemp(dirTemplate)) { p->log = "cannot make a temporary directory"; return 7; }
    std::string dir = dirTemplate;
    std::string file = "#line 1 \"loom-cuda-emulator-runtime\"\n" + std::string(runtimeSource) + "\n#line 1 \"" + p->name + "\"\n" + p->source + "\n";
    for (const std::string& k : kernelNames(p->source))
        file += "extern \"C\" int loom_emu_launch_" + k + "(void** p, const unsigned* d, unsigned s, unsigned long long r, char* e, size_t n) "
                "{ return loom_emu::launch(&" + k + ", p, d, s, r, e, n); }\n"
                "extern \"C\" int loom_emu_parameters_" + k + "(size_t* s, int n) { return loom_emu::parameterSizes(&" + k + ", s, n); }\n";
    std::string cpp = dir + "/module.cpp", so = dir + "/module.so", log = dir + "/log.txt";
    int status = 6;
    if (writeFile(cpp, file)) {
        std::string command = hostCompiler() + " -std=c++17 -O2 -fPIC -shared -w -o " + so + " " + cpp + " > " + log + " 2>&1";
        int rc = system(command.c_str());
        p->log = readFile(log);
        if (rc == 0) {
            std::string binary = readFile(so);
            uint64_t size = binary.size();
            p->image.assign(imageMagic, imageMagic + 8);
            p->image.insert(p->image.end(), reinterpret_cast<char*>(&size), reinterpret_cast<char*>(&size) + 8);
            p->image.insert(p->image.end(), binary.begin(), binary.end());
            status = 0;
        } else if (p->log.empty()) {
            p->log = "the host compiler failed: " + command;
        }
    }
    for (const std::string& f : {cpp, so, log}) unlink(f.c_str());
    rmdir(dir.c_str());
    return status;
}
int nvrtcGetProgramLogSize(EmulatedProgram* p, size_t* n) { *n = p->log.size() + 1; return 0; }
int nvrtcGetProgramLog(EmulatedProgram* p, char* out) { memcpy(out, p->log.c_str(), p->log.size() + 1); return 0; }
int nvrtcGetCUBINSize(EmulatedProgram* p, size_t* n) { *n = p->image.size(); return 0; }
int nvrtcGetCUBIN(EmulatedProgram* p, char* out) { memcpy(out, p->image.data(), p->image.size()); return 0; }


}  // extern "C"
