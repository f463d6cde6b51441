extension CUDAKernels {
    /// Sums and maxima over the middle axis of [outer, n, inner], argmax, gathers and
    /// scatters along an axis, local indices, and sums of squares (gradient norms).
    static let reductions = #"""
    // ---- Reductions over the middle axis of x viewed as [outer, n, inner] (op 0 sum, 1 max).
    // Long contiguous rows: one block per output.
    extern "C" __global__ void reduce_rows_f32(int op, const float* x, float* y, long long rows, long long n) {
        __shared__ float scratch[32];
        for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
            const float* r = x + row * n;
            float acc = op == 0 ? 0.0f : negativeInfinity();
            for (long long j = threadIdx.x; j < n; j += blockDim.x) acc = op == 0 ? acc + r[j] : fmaxf(acc, r[j]);
            acc = op == 0 ? blockSum(acc, scratch) : blockMax(acc, scratch);
            if (threadIdx.x == 0) y[row] = acc;
        }
    }

    // Columns of [outer, n, inner] with inner >= 32 and many rows (bias gradients): blocks of
    // 32 adjacent columns x 8 row lanes (256 threads; a warp reads 32 adjacent floats). The
    // n rows are cut into runs of `rowsPerRun`, one block per (outer index, column tile,
    // run), so that a few hundred columns still fill the device; each block writes its run's
    // result to partial[run][out], and reduce_runs_f32 combines the runs in order (no
    // atomics: the same sums every time). With one run, partial is y.
    extern "C" __global__ void reduce_columns_tiled_f32(int op, const float* x, float* partial, long long outer, long long n, long long inner,
                                                        long long rowsPerRun) {
        __shared__ float scratch[8][33];
        long long columnTiles = (inner + 31) / 32, tiles = outer * columnTiles;
        long long tile = blockIdx.x % tiles, run = blockIdx.x / tiles;
        int column = threadIdx.x % 32, lane = threadIdx.x / 32;
        long long o = tile / columnTiles, c = (tile % columnTiles) * 32 + column;
        long long begin = run * rowsPerRun, end = min(n, begin + rowsPerRun);
        float acc = op == 0 ? 0.0f : negativeInfinity();
        if (c < inner)
            for (long long j = begin + lane; j < end; j += 8) {
                float v = x[(o * n + j) * inner + c];
                acc = op == 0 ? acc + v : fmaxf(acc, v);
            }
        scratch[lane][column] = acc;
        __syncthreads();
        if (lane == 0 && c < inner) {
            for (int k = 1; k < 8; ++k) acc = op == 0 ? acc + scratch[k][column] : fmaxf(acc, scratch[k][column]);
            partial[run * outer * inner + o * inner + c] = acc;
        }
    }

    // y[i] = the runs' partial[r][i] combined in order.
    extern "C" __global__ void reduce_runs_f32(int op, const float* partial, float* y, long long count, long long runs) {
        LOOM_GRID_STRIDE(i, count) {
            float acc = partial[i];
            for (long long r = 1; r < runs; ++r) acc = op == 0 ? acc + partial[r * count + i] : fmaxf(acc, partial[r * count + i]);
            y[i] = acc;
        }
    }

    // Otherwise: one thread per output, walking the reduced axis (adjacent threads read adjacent columns).
    extern "C" __global__ void reduce_columns_f32(int op, const float* x, float* y, long long outer, long long n, long long inner) {
        LOOM_GRID_STRIDE(out, outer * inner) {
            long long o = out / inner, c = out % inner;
            const float* p = x + o * n * inner + c;
            float acc = op == 0 ? 0.0f : negativeInfinity();
            for (long long j = 0; j < n; ++j) acc = op == 0 ? acc + p[j * inner] : fmaxf(acc, p[j * inner]);
            y[out] = acc;
        }
    }

    // Index of the first maximum over the middle axis.
    extern "C" __global__ void argmax_f32(const float* x, int* indices, long long outer, long long n, long long inner) {
        LOOM_GRID_STRIDE(out, outer * inner) {
            long long o = out / inner, c = out % inner;
            const float* p = x + o * n * inner + c;
            float best = negativeInfinity();
            long long at = 0;
            for (long long j = 0; j < n; ++j)
                if (p[j * inner] > best) { best = p[j * inner]; at = j; }
            indices[out] = (int)at;
        }
    }

    // y[o, c] = x[o, index[o, c], c]; an index outside 0..<n reads 0.
    extern "C" __global__ void gather_axis_f32(const float* x, const int* index, float* y, long long outer, long long n, long long inner) {
        LOOM_GRID_STRIDE(out, outer * inner) {
            long long o = out / inner, c = out % inner;
            int j = index[out];
            y[out] = j >= 0 && j < n ? x[(o * n + j) * inner + c] : 0.0f;
        }
    }

    // y[o, index[o, c], c] += src[o, c]; out-of-range indices skipped. Each (o, c) owns its target.
    extern "C" __global__ void scatter_axis_f32(const float* src, const int* index, float* y, long long outer, long long n, long long inner) {
        LOOM_GRID_STRIDE(out, outer * inner) {
            long long o = out / inner, c = out % inner;
            int j = index[out];
            if (j >= 0 && j < n) y[(o * n + j) * inner + c] += src[out];
        }
    }

    extern "C" __global__ void local_indices_i32(const int* index, int* local, float* mask, int lower, int upper, long long n) {
        LOOM_GRID_STRIDE(i, n) {
            bool inside = index[i] >= lower && index[i] < upper;
            local[i] = inside ? index[i] - lower : 0;
            mask[i] = inside ? 1.0f : 0.0f;
        }
    }

    // partial[blockIdx.x] = the sum of squares of this block's share of x.
    extern "C" __global__ void sum_squares_f32(const float* x, long long n, float* partial) {
        __shared__ float scratch[32];
        float acc = 0.0f;
        LOOM_GRID_STRIDE(i, n) acc += x[i] * x[i];
        acc = blockSum(acc, scratch);
        if (threadIdx.x == 0) partial[blockIdx.x] = acc;
    }

    // Records in fault = {what, position, index, upper} the first index found outside
    // lower..<upper (and not `ignore`), if fault holds none yet; `what` names the check.
    // The host reads the record when it next waits for the stream anyway.
    extern "C" __global__ void check_indices_i32(const int* index, long long n, int lower, int upper, int ignore, int what, int* fault) {
        LOOM_GRID_STRIDE(i, n) {
            int v = index[i];
            if (v != ignore && (v < lower || v >= upper) && atomicCAS(fault, 0, what) == 0) {
                fault[1] = (int)i;
                fault[2] = v;
                fault[3] = upper;
            }
        }
    }
    """#
}
