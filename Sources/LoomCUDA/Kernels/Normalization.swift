extension CUDAKernels {
    /// Softmax, layer norm and batch-norm statistics: one block per row (or channel).
    static let normalization = #"""
    // ---- Softmax over the last axis of [rows, cols]; log-softmax when `logarithm`.
    extern "C" __global__ void softmax_f32(const float* x, float* y, long long rows, long long cols, int logarithm) {
        __shared__ float scratch[32];
        for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
            const float* xr = x + row * cols;
            float* yr = y + row * cols;
            float m, s;
            rowMaxAndSum(xr, cols, scratch, &m, &s);
            if (m == negativeInfinity()) {  // a fully masked row
                for (long long j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = logarithm ? negativeInfinity() : 0.0f;
                continue;
            }
            if (logarithm) {
                float shift = m + logf(s);
                for (long long j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = xr[j] - shift;
            } else {
                float inv = 1.0f / s;
                for (long long j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = expf(xr[j] - m) * inv;
            }
        }
    }

    // softmax: gx = y (g - <g, y>); log-softmax (y = log p): gx = g - p sum(g).
    extern "C" __global__ void softmax_backward_f32(const float* y, const float* g, float* gx, long long rows, long long cols, int logarithm) {
        __shared__ float scratch[32];
        for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
            const float* yr = y + row * cols;
            const float* gr = g + row * cols;
            float* out = gx + row * cols;
            float s = 0.0f;
            for (long long j = threadIdx.x; j < cols; j += blockDim.x) s += logarithm ? gr[j] : gr[j] * yr[j];
            s = blockSum(s, scratch);
            for (long long j = threadIdx.x; j < cols; j += blockDim.x)
                out[j] = logarithm ? gr[j] - expf(yr[j]) * s : yr[j] * (gr[j] - s);
        }
    }

    // ---- Layer norm over the last axis: two passes (the variance of x - mean, not E[x^2] - mean^2).
    extern "C" __global__ void layer_norm_f32(const float* x, const float* gamma, const float* beta, float eps, long long rows, long long cols,
                                              float* y, float* mean, float* rstd) {
        __shared__ float scratch[32];
        for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
            const float* xr = x + row * cols;
            float* yr = y + row * cols;
            float s = 0.0f;
            for (long long j = threadIdx.x; j < cols; j += blockDim.x) s += xr[j];
            float mu = blockSum(s, scratch) / (float)cols;
            float v = 0.0f;
            for (long long j = threadIdx.x; j < cols; j += blockDim.x) { float d = xr[j] - mu; v += d * d; }
            float rs = 1.0f / sqrtf(blockSum(v, scratch) / (float)cols + eps);
            for (long long j = threadIdx.x; j < cols; j += blockDim.x) yr[j] = (xr[j] - mu) * rs * gamma[j] + beta[j];
            if (threadIdx.x == 0) { mean[row] = mu; rstd[row] = rs; }
        }
    }

    // dxhat = g gamma; gx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)).
    extern "C" __global__ void layer_norm_backward_input_f32(const float* x, const float* gamma, const float* mean, const float* rstd,
                                                             const float* g, float* gx, long long rows, long long cols) {
        __shared__ float scratch[32];
        for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
            const float* xr = x + row * cols;
            const float* gr = g + row * cols;
            float mu = mean[row], rs = rstd[row];
            float s1 = 0.0f, s2 = 0.0f;
            for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
                float dxh = gr[j] * gamma[j];
                s1 += dxh;
                s2 += dxh * (xr[j] - mu) * rs;
            }
            float m1 = blockSum(s1, scratch) / (float)cols;
            float m2 = blockSum(s2, scratch) / (float)cols;
            for (long long j = threadIdx.x; j < cols; j += blockDim.x)
                gx[row * cols + j] = rs * (gr[j] * gamma[j] - m1 - (xr[j] - mu) * rs * m2);
        }
    }

    // dgamma[c] = sum over rows of g xhat, dbeta[c] = sum of g, tiled as reduce_columns_tiled_f32
    // is: 32 columns x 8 row lanes a block, the rows cut into runs, each run's sums written to
    // [run][c] of partialGamma and partialBeta (reduce_runs_f32 adds the runs up in order).
    extern "C" __global__ void layer_norm_backward_params_f32(const float* x, const float* mean, const float* rstd, const float* g,
                                                              float* partialGamma, float* partialBeta, long long rows, long long cols,
                                                              long long rowsPerRun) {
        __shared__ float gammaScratch[8][33];
        __shared__ float betaScratch[8][33];
        long long tiles = (cols + 31) / 32, run = blockIdx.x / tiles;
        int column = threadIdx.x % 32, lane = threadIdx.x / 32;
        long long c = (blockIdx.x % tiles) * 32 + column;
        long long begin = run * rowsPerRun, end = min(rows, begin + rowsPerRun);
        float sg = 0.0f, sb = 0.0f;
        if (c < cols)
            for (long long r = begin + lane; r < end; r += 8) {
                float gv = g[r * cols + c];
                sg += gv * (x[r * cols + c] - mean[r]) * rstd[r];
                sb += gv;
            }
        gammaScratch[lane][column] = sg;
        betaScratch[lane][column] = sb;
        __syncthreads();
        if (lane == 0 && c < cols) {
            for (int k = 1; k < 8; ++k) { sg += gammaScratch[k][column]; sb += betaScratch[k][column]; }
            partialGamma[run * cols + c] = sg;
            partialBeta[run * cols + c] = sb;
        }
    }

    // ---- Batch-norm statistics over x viewed as [n, channels, inner]: one block per channel.
    extern "C" __global__ void channel_moments_f32(const float* x, long long n, long long channels, long long inner, float* mean, float* variance) {
        __shared__ float scratch[32];
        for (long long c = blockIdx.x; c < channels; c += gridDim.x) {
            float s = 0.0f;
            for (long long k = threadIdx.x; k < n * inner; k += blockDim.x) s += x[((k / inner) * channels + c) * inner + k % inner];
            float mu = blockSum(s, scratch) / (float)(n * inner);
            float v = 0.0f;
            for (long long k = threadIdx.x; k < n * inner; k += blockDim.x) {
                float d = x[((k / inner) * channels + c) * inner + k % inner] - mu;
                v += d * d;
            }
            v = blockSum(v, scratch);
            if (threadIdx.x == 0) { mean[c] = mu; variance[c] = v / (float)(n * inner); }
        }
    }

    // y = (x - mean[c]) scale[c] + shift[c].
    extern "C" __global__ void channel_affine_f32(const float* x, const float* mean, const float* scale, const float* shift, float* y,
                                                  long long channels, long long inner, long long total) {
        LOOM_GRID_STRIDE(i, total) {
            long long c = (i / inner) % channels;
            y[i] = (x[i] - mean[c]) * scale[c] + shift[c];
        }
    }

    // y = a[c] g + b[c] x + d[c]: batch norm's input gradient in one pass.
    extern "C" __global__ void channel_combine_f32(const float* g, const float* x, const float* a, const float* b, const float* d, float* y,
                                                   long long channels, long long inner, long long total) {
        LOOM_GRID_STRIDE(i, total) {
            long long c = (i / inner) % channels;
            y[i] = g[i] * a[c] + x[i] * b[c] + d[c];
        }
    }

    // Per channel: sum(g) and sum(g (x - mean)). With x = NULL-like flag `withX` 0, only sum(g).
    extern "C" __global__ void channel_grad_sums_f32(const float* x, const float* mean, const float* g, long long n, long long channels,
                                                     long long inner, float* sumGrad, float* sumGradXmu, int withX) {
        __shared__ float scratch[32];
        for (long long c = blockIdx.x; c < channels; c += gridDim.x) {
            float s1 = 0.0f, s2 = 0.0f;
            float mu = withX ? mean[c] : 0.0f;
            for (long long k = threadIdx.x; k < n * inner; k += blockDim.x) {
                long long at = ((k / inner) * channels + c) * inner + k % inner;
                s1 += g[at];
                if (withX) s2 += g[at] * (x[at] - mu);
            }
            s1 = blockSum(s1, scratch);
            s2 = blockSum(s2, scratch);
            if (threadIdx.x == 0) {
                sumGrad[c] = s1;
                if (withX) sumGradXmu[c] = s2;
            }
        }
    }
    """#
}
