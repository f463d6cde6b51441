/// The CUDA C source of every kernel of `CUDABackend`, one module compiled once per
/// process (NVRTC on a GPU; the host compiler under the emulator) and cached on disk.
///
/// The source is written to compile both ways: header-free for NVRTC (no `cuda_fp16.h`,
/// no `INFINITY`), and with the emulator's kernel runtime on the host. Conventions:
/// elementwise kernels are grid-stride loops over `long long` sizes; row kernels take one
/// block per row, with `blockDim.x` a multiple of 32 (block reductions use warp shuffles
/// and a 32-float shared scratch); every barrier is reached by every thread of a block.
public enum CUDAKernels {
    /// The module's name in compiler messages and the kernel cache.
    public static let moduleName = "loom_kernels.cu"

    /// The whole module.
    public static let source = [common, elementwise, reductions, layout, normalization, networks, optimizers].joined(separator: "\n")

    /// Every `__global__` function of the module (the launcher table and the compile test use it).
    public static var kernelNames: [String] {
        var names: [String] = []
        var rest = Substring(source)
        while let g = rest.range(of: "__global__ void ") {
            rest = rest[g.upperBound...]
            names.append(String(rest.prefix { $0 != "(" }))
        }
        return names
    }

    static let common = #"""
    // ---- Shared helpers.
    #define LOOM_GRID_STRIDE(i, n) \
        for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)blockDim.x * gridDim.x)

    __device__ float negativeInfinity() { return __uint_as_float(0xff800000u); }

    __device__ float warpSum(float v) {
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        return v;
    }

    __device__ float warpMax(float v) {
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        return v;
    }

    // Sum over the block; every thread gets it. scratch: 32 floats of shared memory.
    __device__ float blockSum(float v, float* scratch) {
        v = warpSum(v);
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        __syncthreads();  // scratch may still be read by a previous reduction
        if (lane == 0) scratch[warp] = v;
        __syncthreads();
        v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : 0.0f;
        return warpSum(v);
    }

    __device__ float blockMax(float v, float* scratch) {
        v = warpMax(v);
        int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        __syncthreads();
        if (lane == 0) scratch[warp] = v;
        __syncthreads();
        v = lane < (int)(blockDim.x >> 5) ? scratch[lane] : negativeInfinity();
        return warpMax(v);
    }

    // The maximum of a row and the sum of exp(x - max) over it (softmax's and cross-entropy's
    // first two passes); every thread of the block gets both.
    __device__ void rowMaxAndSum(const float* x, long long cols, float* scratch, float* maxOut, float* sumOut) {
        float m = negativeInfinity();
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, x[j]);
        m = blockMax(m, scratch);
        float s = 0.0f;
        if (m != negativeInfinity())
            for (long long j = threadIdx.x; j < cols; j += blockDim.x) s += expf(x[j] - m);
        *maxOut = m;
        *sumOut = blockSum(s, scratch);
    }

    // float32 -> bfloat16 bits, to nearest even; NaN stays a quiet NaN with its sign.
    __device__ unsigned short floatToBF16(float f) {
        unsigned u = __float_as_uint(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
        return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }

    __device__ float bf16ToFloat(unsigned short b) { return __uint_as_float((unsigned)b << 16); }

    // float32 -> IEEE half bits, to nearest even; overflow to infinity, subnormals kept.
    __device__ unsigned short floatToHalf(float f) {
        unsigned x = __float_as_uint(f);
        unsigned sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
        if (a >= 0x7f800000u) return (unsigned short)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
        if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds past 65504
        if (a < 0x38800000u) {                                          // below 2^-14: subnormal or zero
            if (a <= 0x33000000u) return (unsigned short)sign;           // at most half the smallest subnormal
            unsigned mant = (a & 0x7fffffu) | 0x800000u;
            int shift = 126 - (int)(a >> 23);
            unsigned r = mant >> shift, rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
            if (rem > half || (rem == half && (r & 1u))) r += 1u;
            return (unsigned short)(sign | r);
        }
        unsigned r = a - 0x38000000u;  // exponent bias 127 -> 15
        r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
        return (unsigned short)(sign | r);
    }

    __device__ float halfToFloat(unsigned short h) {
        unsigned sign = ((unsigned)h & 0x8000u) << 16, e = ((unsigned)h >> 10) & 0x1fu, m = (unsigned)h & 0x3ffu;
        if (e == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (m << 13));
        if (e == 0u) {
            float v = (float)m * 5.9604644775390625e-08f;  // m * 2^-24
            return sign ? -v : v;
        }
        return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
    }
    """#
}
