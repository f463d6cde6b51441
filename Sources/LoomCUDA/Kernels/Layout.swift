extension CUDAKernels {
    /// Permutations, block copies (slices and concatenation), the causal mask.
    static let layout = #"""
    // y = x permuted: for each output axis d, the input stride of the axis it came from.
    struct Permutation { long long shape[8]; long long stride[8]; int rank; };

    extern "C" __global__ void permute_f32(const float* x, float* y, long long n, Permutation p) {
        LOOM_GRID_STRIDE(i, n) {
            long long rem = i, off = 0;
            for (int d = p.rank - 1; d >= 0; --d) {
                off += (rem % p.shape[d]) * p.stride[d];
                rem /= p.shape[d];
            }
            y[i] = x[off];
        }
    }

    // dst[r*dstStride + dstOffset + j] (+)= src[r*srcStride + srcOffset + j], r < rows, j < width.
    extern "C" __global__ void copy_blocks_f32(const float* src, long long srcOffset, long long srcStride, float* dst, long long dstOffset,
                                               long long dstStride, long long rows, long long width, int accumulate) {
        LOOM_GRID_STRIDE(i, rows * width) {
            long long r = i / width, j = i % width;
            float v = src[r * srcStride + srcOffset + j];
            float* d = dst + r * dstStride + dstOffset + j;
            *d = accumulate ? *d + v : v;
        }
    }

    // Entries j > i of each [rows, cols] matrix set to value.
    extern "C" __global__ void mask_upper_f32(float* x, long long rows, long long cols, float value, long long n) {
        LOOM_GRID_STRIDE(k, n) {
            long long inMatrix = k % (rows * cols);
            if (inMatrix % cols > inMatrix / cols) x[k] = value;
        }
    }
    """#
}
