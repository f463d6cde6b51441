extension CUDAKernels {
    /// Fill, cast, unary and binary maps, scalar maps. Op codes are `CUDABackend`'s
    /// (`UnaryOp`, `BinaryOp`, `ScalarOp` in declaration order).
    static let elementwise = #"""
    // ---- Memory: fill and cast.
    extern "C" __global__ void fill_f32(float* y, float v, long long n) { LOOM_GRID_STRIDE(i, n) y[i] = v; }
    extern "C" __global__ void fill_u16(unsigned short* y, unsigned short v, long long n) { LOOM_GRID_STRIDE(i, n) y[i] = v; }
    extern "C" __global__ void fill_i32(int* y, int v, long long n) { LOOM_GRID_STRIDE(i, n) y[i] = v; }
    extern "C" __global__ void cast_f32_bf16(const float* x, unsigned short* y, long long n) { LOOM_GRID_STRIDE(i, n) y[i] = floatToBF16(x[i]); }
    extern "C" __global__ void cast_bf16_f32(const unsigned short* x, float* y, long long n) { LOOM_GRID_STRIDE(i, n) y[i] = bf16ToFloat(x[i]); }
    extern "C" __global__ void cast_f32_f16(const float* x, unsigned short* y, long long n) { LOOM_GRID_STRIDE(i, n) y[i] = floatToHalf(x[i]); }
    extern "C" __global__ void cast_f16_f32(const unsigned short* x, float* y, long long n) { LOOM_GRID_STRIDE(i, n) y[i] = halfToFloat(x[i]); }
    extern "C" __global__ void cast_bf16_f16(const unsigned short* x, unsigned short* y, long long n) {
        LOOM_GRID_STRIDE(i, n) y[i] = floatToHalf(bf16ToFloat(x[i]));
    }
    extern "C" __global__ void cast_f16_bf16(const unsigned short* x, unsigned short* y, long long n) {
        LOOM_GRID_STRIDE(i, n) y[i] = floatToBF16(halfToFloat(x[i]));
    }

    // ---- Unary maps and their derivatives. GELU is the tanh approximation (GPT-2's).
    __device__ float geluF(float x) {
        float t = tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x));
        return 0.5f * x * (1.0f + t);
    }

    // d/dx 0.5 x (1 + tanh u), u = c (x + a x^3): 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2)
    __device__ float geluGradF(float x) {
        float x2 = x * x;
        float t = tanhf(0.7978845608028654f * (x + 0.044715f * x2 * x));
        float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * x2);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
    }

    __device__ float unaryF(int op, float x) {
        switch (op) {
        case 0: return -x;
        case 1: return expf(x);
        case 2: return logf(x);
        case 3: return tanhf(x);
        case 4: return x > 0.0f ? x : 0.0f;
        case 5: return geluF(x);
        case 6: return sqrtf(x);
        case 7: return 1.0f / (1.0f + expf(-x));
        case 8: return x * x;
        default: return 1.0f / x;
        }
    }

    extern "C" __global__ void unary_f32(int op, const float* x, float* y, long long n) { LOOM_GRID_STRIDE(i, n) y[i] = unaryF(op, x[i]); }

    // gx = g * op'(x), from x or the saved output y.
    extern "C" __global__ void unary_backward_f32(int op, const float* x, const float* y, const float* g, float* gx, long long n) {
        LOOM_GRID_STRIDE(i, n) {
            float r;
            switch (op) {
            case 0: r = -g[i]; break;
            case 1: r = g[i] * y[i]; break;
            case 2: r = g[i] / x[i]; break;
            case 3: r = g[i] * (1.0f - y[i] * y[i]); break;
            case 4: r = x[i] > 0.0f ? g[i] : 0.0f; break;
            case 5: r = g[i] * geluGradF(x[i]); break;
            case 6: r = g[i] * 0.5f / y[i]; break;
            case 7: r = g[i] * y[i] * (1.0f - y[i]); break;
            case 8: r = g[i] * 2.0f * x[i]; break;
            default: r = -g[i] * y[i] * y[i];
            }
            gx[i] = r;
        }
    }

    // ---- Binary maps, with numpy broadcasting by strides (0 on broadcast axes).
    struct Broadcast { long long shape[8]; long long a[8]; long long b[8]; int rank; };

    __device__ float binaryF(int op, float a, float b) {
        switch (op) {
        case 0: return a + b;
        case 1: return a - b;
        case 2: return a * b;
        default: return a / b;
        }
    }

    extern "C" __global__ void binary_f32(int op, const float* a, const float* b, float* out, long long n) {
        LOOM_GRID_STRIDE(i, n) out[i] = binaryF(op, a[i], b[i]);
    }

    extern "C" __global__ void binary_broadcast_f32(int op, const float* a, const float* b, float* out, long long n, Broadcast s) {
        LOOM_GRID_STRIDE(i, n) {
            long long rem = i, oa = 0, ob = 0;
            for (int d = s.rank - 1; d >= 0; --d) {
                long long k = rem % s.shape[d];
                rem /= s.shape[d];
                oa += k * s.a[d];
                ob += k * s.b[d];
            }
            out[i] = binaryF(op, a[oa], b[ob]);
        }
    }

    // y = x op s: add, mul, pow, maximum.
    extern "C" __global__ void scalar_f32(int op, const float* x, float s, float* y, long long n) {
        LOOM_GRID_STRIDE(i, n) {
            float v = x[i];
            y[i] = op == 0 ? v + s : op == 1 ? v * s : op == 2 ? powf(v, s) : fmaxf(v, s);
        }
    }
    """#
}
