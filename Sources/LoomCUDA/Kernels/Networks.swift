extension CUDAKernels {
    /// Convolution's im2col/col2im, pooling, embedding, cross-entropy and dropout masks.
    static let networks = #"""
    // ---- Convolution: cols [C*KH*KW, N*OH*OW] (row: (c, kh, kw); column: (n, oh, ow)), then a GEMM.
    struct Conv { int n, c, h, w, kh, kw, stride, pad, oh, ow; };

    // One thread per (c, b, oh, ow): its KH*KW entries of column (b, oh, ow); adjacent threads
    // write adjacent columns.
    extern "C" __global__ void im2col_f32(const float* x, float* cols, Conv g) {
        long long positions = (long long)g.n * g.oh * g.ow;
        LOOM_GRID_STRIDE(i, (long long)g.c * positions) {
            long long col = i % positions;
            int c = (int)(i / positions);
            int ow = (int)(col % g.ow), oh = (int)((col / g.ow) % g.oh), b = (int)(col / ((long long)g.ow * g.oh));
            int h0 = oh * g.stride - g.pad, w0 = ow * g.stride - g.pad;
            const float* plane = x + ((long long)b * g.c + c) * g.h * g.w;
            float* out = cols + (long long)c * g.kh * g.kw * positions + col;
            for (int kh = 0; kh < g.kh; ++kh) {
                int ih = h0 + kh;
                for (int kw = 0; kw < g.kw; ++kw) {
                    int iw = w0 + kw;
                    *out = ih >= 0 && ih < g.h && iw >= 0 && iw < g.w ? plane[ih * g.w + iw] : 0.0f;
                    out += positions;
                }
            }
        }
    }

    // gx[b, c, ih, iw] = the sum of the columns that read it (a gather: no atomics, deterministic).
    extern "C" __global__ void col2im_f32(const float* cols, float* gx, Conv g) {
        long long positions = (long long)g.n * g.oh * g.ow;
        LOOM_GRID_STRIDE(i, (long long)g.n * g.c * g.h * g.w) {
            int iw = (int)(i % g.w), ih = (int)((i / g.w) % g.h), c = (int)((i / ((long long)g.w * g.h)) % g.c);
            int b = (int)(i / ((long long)g.w * g.h * g.c));
            float s = 0.0f;
            for (int kh = 0; kh < g.kh; ++kh) {
                int th = ih + g.pad - kh;
                if (th < 0 || th % g.stride != 0 || th / g.stride >= g.oh) continue;
                for (int kw = 0; kw < g.kw; ++kw) {
                    int tw = iw + g.pad - kw;
                    if (tw < 0 || tw % g.stride != 0 || tw / g.stride >= g.ow) continue;
                    long long row = ((long long)c * g.kh + kh) * g.kw + kw;
                    long long col = ((long long)b * g.oh + th / g.stride) * g.ow + tw / g.stride;
                    s += cols[row * positions + col];
                }
            }
            gx[i] = s;
        }
    }

    // y[b, o, p] += bias[o] over [n, channels, inner].
    extern "C" __global__ void add_channel_bias_f32(float* y, const float* bias, long long channels, long long inner, long long total) {
        LOOM_GRID_STRIDE(i, total) y[i] += bias[(i / inner) % channels];
    }

    // ---- Max pooling over NCHW (square window, stride); indices are offsets within the plane.
    // The window clipped to the image: padding never wins (as the CPU backend).
    extern "C" __global__ void max_pool_f32(const float* x, float* y, int* indices, long long planes, int h, int w, int k, int stride, int oh, int ow,
                                            int pad) {
        LOOM_GRID_STRIDE(i, planes * oh * ow) {
            long long plane = i / ((long long)oh * ow);
            int q = (int)(i % ((long long)oh * ow)), r = q / ow, c = q % ow;
            const float* p = x + plane * h * w;
            int h0 = r * stride - pad, w0 = c * stride - pad;
            int ha = max(h0, 0), hb = min(h0 + k, h), wa = max(w0, 0), wb = min(w0 + k, w);
            float best = negativeInfinity();
            int at = ha * w + wa;
            for (int a = ha; a < hb; ++a)
                for (int b = wa; b < wb; ++b) {
                    int off = a * w + b;
                    if (p[off] > best) { best = p[off]; at = off; }
                }
            y[i] = best;
            indices[i] = at;
        }
    }

    // gx (zeroed by the caller) += gy at each saved offset; overlapping windows add atomically.
    extern "C" __global__ void max_pool_backward_f32(const float* gy, const int* indices, float* gx, long long planes, int h, int w, int outputs) {
        LOOM_GRID_STRIDE(i, planes * outputs) {
            long long plane = i / outputs;
            atomicAdd(gx + plane * h * w + indices[i], gy[i]);
        }
    }

    // ---- Embedding: out[i, :] = table[index[i], :]; backward adds rows (indices repeat: atomics).
    // An index outside the table (check_indices_i32 has recorded it for the host) gives NaN
    // and adds nothing: never a read or write outside the table.
    extern "C" __global__ void embedding_f32(const float* table, const int* index, float* out, long long count, long long width, long long rows) {
        LOOM_GRID_STRIDE(i, count * width) {
            long long k = index[i / width];
            out[i] = k >= 0 && k < rows ? table[k * width + i % width] : __int_as_float(0x7fc00000);
        }
    }

    extern "C" __global__ void embedding_backward_f32(const float* src, const int* index, float* grad, long long count, long long width, long long rows) {
        LOOM_GRID_STRIDE(i, count * width) {
            long long k = index[i / width];
            if (k >= 0 && k < rows) atomicAdd(grad + k * width + i % width, src[i]);
        }
    }

    // ---- Cross-entropy: one block per row; log-softmax and the loss in one pass over the logits.
    extern "C" __global__ void cross_entropy_f32(const float* logits, const int* targets, long long rows, long long classes, int ignore,
                                                 float* losses, float* weights, float* probabilities) {
        __shared__ float scratch[32];
        for (long long row = blockIdx.x; row < rows; row += gridDim.x) {
            const float* x = logits + row * classes;
            float* p = probabilities + row * classes;
            float m, s;
            rowMaxAndSum(x, classes, scratch, &m, &s);
            float inv = 1.0f / s;
            for (long long j = threadIdx.x; j < classes; j += blockDim.x) p[j] = expf(x[j] - m) * inv;
            if (threadIdx.x == 0) {
                int t = targets[row];
                bool inside = t >= 0 && t < classes;  // outside: recorded by check_indices_i32, the loss NaN
                losses[row] = t == ignore ? 0.0f : inside ? (m + logf(s)) - x[t] : __int_as_float(0x7fc00000);
                weights[row] = t == ignore ? 0.0f : 1.0f;
            }
        }
    }

    // gx = (p - onehot(t)) scale[0]; zero on ignored rows.
    extern "C" __global__ void cross_entropy_backward_f32(const float* p, const int* targets, const float* scale, float* gx, long long rows,
                                                          long long classes, int ignore) {
        LOOM_GRID_STRIDE(i, rows * classes) {
            long long row = i / classes;
            int t = targets[row];
            float s = scale[0];
            gx[i] = t == ignore ? 0.0f : p[i] * s - ((long long)t == i % classes ? s : 0.0f);
        }
    }

    // ---- Dropout masks: Philox4x32-10, block b of the stream gives elements 4b..4b+3 (the CPU's stream).
    __device__ void philox(unsigned long long key, unsigned long long counter, unsigned* out) {
        unsigned c0 = (unsigned)counter, c1 = (unsigned)(counter >> 32), c2 = 0u, c3 = 0u;
        unsigned k0 = (unsigned)key, k1 = (unsigned)(key >> 32);
        for (int round = 0; round < 10; ++round) {
            unsigned long long p0 = 0xD2511F53ull * c0, p1 = 0xCD9E8D57ull * c2;
            unsigned hi0 = (unsigned)(p0 >> 32), lo0 = (unsigned)p0, hi1 = (unsigned)(p1 >> 32), lo1 = (unsigned)p1;
            unsigned n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
            c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
    }

    extern "C" __global__ void dropout_mask_f32(float* mask, long long n, float p, unsigned long long seed, unsigned long long counter) {
        float keep = 1.0f / (1.0f - p);
        LOOM_GRID_STRIDE(b, (n + 3) / 4) {
            unsigned u[4];
            philox(seed, counter + (unsigned long long)b, u);
            for (int lane = 0; lane < 4; ++lane)
                if (b * 4 + lane < n) mask[b * 4 + lane] = (float)(u[lane] >> 8) * (1.0f / 16777216.0f) < p ? 0.0f : keep;
        }
    }
    """#

    /// Optimizer updates over many parameters in one launch (PyTorch's multi-tensor
    /// fused optimizers, with its formulas as the CPU backend): the parameters' addresses
    /// travel in the kernel's parameter block, up to LOOM_TENSORS_PER_LAUNCH at a time.
    static let optimizers = #"""
    #define LOOM_TENSORS_PER_LAUNCH 96
    // Element i of the list is element i - start[j] of tensor j, start[j] <= i < start[j + 1].
    // state0/state1: SGD's momentum buffer (or null); Adam's first and second moments.
    struct TensorList {
        float* param[LOOM_TENSORS_PER_LAUNCH];
        const float* grad[LOOM_TENSORS_PER_LAUNCH];
        float* state0[LOOM_TENSORS_PER_LAUNCH];
        float* state1[LOOM_TENSORS_PER_LAUNCH];
        long long start[LOOM_TENSORS_PER_LAUNCH + 1];
        int count;
    };

    __device__ int tensorOf(const TensorList& t, long long i) {
        int lo = 0, hi = t.count - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (t.start[mid] <= i) lo = mid; else hi = mid - 1;
        }
        return lo;
    }

    extern "C" __global__ void sgd_f32(TensorList t, int hasMomentum, float lr, float mu, float damp, float wd, int nesterov) {
        LOOM_GRID_STRIDE(i, t.start[t.count]) {
            int j = tensorOf(t, i);
            long long e = i - t.start[j];
            float* param = t.param[j];
            float p = param[e], g = t.grad[j][e] + wd * p;
            if (!hasMomentum) { param[e] = p - lr * g; continue; }
            float* momentum = t.state0[j];
            float b = mu * momentum[e] + damp * g;  // damp = 1 - dampening
            momentum[e] = b;
            param[e] = p - lr * (nesterov ? g + mu * b : b);
        }
    }

    // stepSize = lr / (1 - beta1^t), bc2Sqrt = sqrt(1 - beta2^t), decay = 1 - lr wd (decoupled) or 1.
    extern "C" __global__ void adam_f32(TensorList t, float beta1, float beta2, float eps, float wd, int decoupled, float stepSize,
                                        float bc2Sqrt, float decay) {
        LOOM_GRID_STRIDE(i, t.start[t.count]) {
            int j = tensorOf(t, i);
            long long e = i - t.start[j];
            float* param = t.param[j];
            float* m = t.state0[j];
            float* v = t.state1[j];
            float g = t.grad[j][e];
            if (!decoupled) g += wd * param[e];
            float p = param[e] * decay;
            float mi = beta1 * m[e] + (1.0f - beta1) * g;
            float vi = beta2 * v[e] + (1.0f - beta2) * g * g;
            m[e] = mi;
            v[e] = vi;
            param[e] = p - stepSize * mi / (sqrtf(vi) / bc2Sqrt + eps);
        }
    }
    """#
}
