import CDNNL

// Convolutions on oneDNN's direct kernels (what PyTorch uses on the CPU): for each
// geometry, forward, backward-data and backward-weights primitives in the layouts oneDNN
// picks for this processor (blocked, e.g. nChw16c with AVX-512), with reorders from and
// to Loom's NCHW/OIHW tensors around them. Primitives are built once per geometry (their
// JIT code is generated then) and kept.

/// One geometry's primitives and the blocked buffers between them. Under bf16 precision the
/// operands (x, the weights, dY) are bf16 tensors and the primitives read bf16 (oneDNN's
/// AVX512-BF16 and AMX kernels), accumulating in float32 into float32 y, dX, dW and db.
public final class OneDNNConvolution {
    private let engine: dnnl_engine_t
    private let stream: dnnl_stream_t
    private var forward: dnnl_primitive_t?
    private var backwardData: dnnl_primitive_t?
    private var backwardWeights: dnnl_primitive_t?
    /// Loom's layouts.
    private var srcUser = dnnl_memory_desc_t(), weightsUser = dnnl_memory_desc_t(), dstUser = dnnl_memory_desc_t()
    private var diffSrcUser = dnnl_memory_desc_t(), diffWeightsUser = dnnl_memory_desc_t()
    private var biasDesc = dnnl_memory_desc_t()
    /// Memory objects over the primitives' layouts (allocated by oneDNN), and over Loom's
    /// tensors (their data handles set per call).
    private var buffers: [String: dnnl_memory_t] = [:]
    private var userMemory: [String: dnnl_memory_t] = [:]
    /// Whether backward-data and backward-weights read dY in the same layout: then one
    /// reorder of dY serves both.
    private var diffDstShared = false
    /// Reorder primitives by (from, to) memory object.
    private var reorders: [[UInt]: dnnl_primitive_t] = [:]

    /// Whether oneDNN multiplies bf16 here (AVX512-BF16 or AMX): bf16 convolutions then run
    /// on its bf16 kernels; a geometry it builds no bf16 primitive for is widened to float32.
    static let hasBF16Kernels: Bool = {
        let isa = dnnl_get_effective_cpu_isa().rawValue
        return isa & dnnl_cpu_isa_avx512_core_bf16.rawValue == dnnl_cpu_isa_avx512_core_bf16.rawValue
    }()

    /// What `loom bench --precision bf16` prints for convolutions.
    public static var bf16Description: String {
        hasBF16Kernels && CPUBackend.useOneDNN ? "onednn (\(OneDNNMatmul.isaName))" : "float32 (no bf16 kernels here)"
    }

    /// nil when oneDNN cannot build a primitive for the geometry (then im2col serves it).
    let hasBias: Bool
    /// DNNL_MEMORY_ALLOCATE, ((void *)(size_t)-1): a macro Swift does not import.
    private static let allocate = UnsafeMutableRawPointer(bitPattern: UInt.max)

    init?(_ g: ConvGeometry, outChannels oc: Int, bias: Bool, operands: DType) {
        hasBias = bias
        var e: dnnl_engine_t?, s: dnnl_stream_t?
        guard dnnl_engine_create(&e, dnnl_cpu, 0) == dnnl_success, let e,
              dnnl_stream_create(&s, e, UInt32(dnnl_stream_default_flags.rawValue)) == dnnl_success, let s else { return nil }
        engine = e; stream = s
        var src = [Int64(g.batch), Int64(g.channels), Int64(g.height), Int64(g.width)]
        var wts = [Int64(oc), Int64(g.channels), Int64(g.kernelH), Int64(g.kernelW)]
        var dst = [Int64(g.batch), Int64(oc), Int64(g.outH), Int64(g.outW)]
        var biasDims = [Int64(oc)]
        var strides = [Int64(g.stride), Int64(g.stride)], padding = [Int64(g.padding), Int64(g.padding)]
        // Operands (x, weights, dY) in `operands`; results (y, dX, dW, db) float32.
        guard operands == .float32 || operands == .bfloat16 else { return nil }
        let op = operands == .bfloat16 ? dnnl_bf16 : dnnl_f32
        var srcAny = dnnl_memory_desc_t(), wtsAny = dnnl_memory_desc_t(), dstAny = dnnl_memory_desc_t()
        var diffDstAny = dnnl_memory_desc_t(), diffSrcAny = dnnl_memory_desc_t(), diffWtsAny = dnnl_memory_desc_t()
        var diffDstUser = dnnl_memory_desc_t()
        guard dnnl_memory_desc_init_by_tag(&srcUser, 4, &src, op, dnnl_nchw) == dnnl_success,
              dnnl_memory_desc_init_by_tag(&weightsUser, 4, &wts, op, dnnl_oihw) == dnnl_success,
              dnnl_memory_desc_init_by_tag(&dstUser, 4, &dst, dnnl_f32, dnnl_nchw) == dnnl_success,
              dnnl_memory_desc_init_by_tag(&diffDstUser, 4, &dst, op, dnnl_nchw) == dnnl_success,
              dnnl_memory_desc_init_by_tag(&diffSrcUser, 4, &src, dnnl_f32, dnnl_nchw) == dnnl_success,
              dnnl_memory_desc_init_by_tag(&diffWeightsUser, 4, &wts, dnnl_f32, dnnl_oihw) == dnnl_success,
              dnnl_memory_desc_init_by_tag(&biasDesc, 1, &biasDims, dnnl_f32, dnnl_x) == dnnl_success,
              dnnl_memory_desc_init_by_tag(&srcAny, 4, &src, op, dnnl_format_tag_any) == dnnl_success,
              dnnl_memory_desc_init_by_tag(&wtsAny, 4, &wts, op, dnnl_format_tag_any) == dnnl_success,
              dnnl_memory_desc_init_by_tag(&dstAny, 4, &dst, dnnl_f32, dnnl_format_tag_any) == dnnl_success,
              dnnl_memory_desc_init_by_tag(&diffDstAny, 4, &dst, op, dnnl_format_tag_any) == dnnl_success,
              dnnl_memory_desc_init_by_tag(&diffSrcAny, 4, &src, dnnl_f32, dnnl_format_tag_any) == dnnl_success,
              dnnl_memory_desc_init_by_tag(&diffWtsAny, 4, &wts, dnnl_f32, dnnl_format_tag_any) == dnnl_success else { return nil }
        var fd = dnnl_convolution_desc_t(), bd = dnnl_convolution_desc_t(), wd = dnnl_convolution_desc_t()
        let forwardStatus = bias
            ? dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct, &srcAny, &wtsAny, &biasDesc, &dstAny,
                                                 &strides, &padding, &padding)
            : dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct, &srcAny, &wtsAny, nil, &dstAny,
                                                 &strides, &padding, &padding)
        guard forwardStatus == dnnl_success,
              dnnl_convolution_backward_data_desc_init(&bd, dnnl_convolution_direct, &diffSrcAny, &wtsAny, &diffDstAny,
                                                       &strides, &padding, &padding) == dnnl_success,
              dnnl_convolution_backward_weights_desc_init(&wd, dnnl_convolution_direct, &srcAny, &diffWtsAny, &biasDesc, &diffDstAny,
                                                          &strides, &padding, &padding) == dnnl_success else { return nil }
        var fpd: dnnl_primitive_desc_t?, bpd: dnnl_primitive_desc_t?, wpd: dnnl_primitive_desc_t?
        guard dnnl_primitive_desc_create(&fpd, &fd, nil, e, nil) == dnnl_success, let fpd,
              dnnl_primitive_desc_create(&bpd, &bd, nil, e, fpd) == dnnl_success, let bpd,
              dnnl_primitive_desc_create(&wpd, &wd, nil, e, fpd) == dnnl_success, let wpd else { return nil }
        defer { dnnl_primitive_desc_destroy(fpd); dnnl_primitive_desc_destroy(bpd); dnnl_primitive_desc_destroy(wpd) }
        guard dnnl_primitive_create(&forward, fpd) == dnnl_success, dnnl_primitive_create(&backwardData, bpd) == dnnl_success,
              dnnl_primitive_create(&backwardWeights, wpd) == dnnl_success else { return nil }
        // The layouts each primitive wants; one buffer per distinct role.
        let wanted: [(String, dnnl_primitive_desc_t, dnnl_query_t)] = [
            ("src", fpd, dnnl_query_src_md), ("weights", fpd, dnnl_query_weights_md), ("dst", fpd, dnnl_query_dst_md),
            ("diff_src", bpd, dnnl_query_diff_src_md), ("bwd_weights", bpd, dnnl_query_weights_md), ("bwd_diff_dst", bpd, dnnl_query_diff_dst_md),
            ("wgt_src", wpd, dnnl_query_src_md), ("diff_weights", wpd, dnnl_query_diff_weights_md), ("wgt_diff_dst", wpd, dnnl_query_diff_dst_md),
        ]
        for (role, pd, query) in wanted {
            guard let md = dnnl_primitive_desc_query_md(pd, query, 0) else { return nil }
            var m: dnnl_memory_t?
            guard dnnl_memory_create(&m, md, e, OneDNNConvolution.allocate) == dnnl_success, let m else { return nil }
            buffers[role] = m
        }
        var dataDiffDst: UnsafePointer<dnnl_memory_desc_t>?, weightsDiffDst: UnsafePointer<dnnl_memory_desc_t>?
        dnnl_memory_get_memory_desc(buffers["bwd_diff_dst"], &dataDiffDst)
        dnnl_memory_get_memory_desc(buffers["wgt_diff_dst"], &weightsDiffDst)
        if let dataDiffDst, let weightsDiffDst { diffDstShared = dnnl_memory_desc_equal(dataDiffDst, weightsDiffDst) != 0 }
        for (role, md) in [("src", srcUser), ("weights", weightsUser), ("dst", dstUser), ("diff_dst", diffDstUser),
                           ("diff_src", diffSrcUser), ("diff_weights", diffWeightsUser), ("bias", biasDesc), ("bias2", biasDesc)] {
            var d = md, m: dnnl_memory_t?
            guard dnnl_memory_create(&m, &d, e, nil) == dnnl_success, let m else { return nil }
            userMemory[role] = m
        }
    }

    deinit {
        for p in [forward, backwardData, backwardWeights] { if let p { dnnl_primitive_destroy(p) } }
        for p in reorders.values { dnnl_primitive_destroy(p) }
        for m in buffers.values { dnnl_memory_destroy(m) }
        for m in userMemory.values { dnnl_memory_destroy(m) }
        dnnl_stream_destroy(stream)
        dnnl_engine_destroy(engine)
    }

    /// A Loom tensor (`role`'s user memory pointed at `pointer`).
    private func user(_ role: String, _ pointer: UnsafeMutableRawPointer) -> dnnl_memory_t {
        let m = userMemory[role]!
        dnnl_memory_set_data_handle_v2(m, pointer, stream)
        return m
    }

    /// dst = src in dst's layout (a copy in another memory order; the primitive is built
    /// once per pair of memory objects, which keep their layouts).
    private func reorder(_ from: dnnl_memory_t, _ to: dnnl_memory_t) {
        let key = [UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(from))), UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(to)))]
        if reorders[key] == nil {
            var fromMD: UnsafePointer<dnnl_memory_desc_t>?, toMD: UnsafePointer<dnnl_memory_desc_t>?
            dnnl_memory_get_memory_desc(from, &fromMD)
            dnnl_memory_get_memory_desc(to, &toMD)
            var pd: dnnl_primitive_desc_t?, p: dnnl_primitive_t?
            precondition(dnnl_reorder_primitive_desc_create(&pd, fromMD, engine, toMD, engine, nil) == dnnl_success, "oneDNN reorder")
            defer { dnnl_primitive_desc_destroy(pd) }
            precondition(dnnl_primitive_create(&p, pd) == dnnl_success, "oneDNN reorder")
            reorders[key] = p
        }
        var args = [dnnl_exec_arg_t(arg: DNNL_ARG_FROM, memory: from), dnnl_exec_arg_t(arg: DNNL_ARG_TO, memory: to)]
        dnnl_primitive_execute(reorders[key]!, stream, 2, &args)
    }

    private func run(_ p: dnnl_primitive_t?, _ args: [(Int32, dnnl_memory_t)]) {
        var list = args.map { dnnl_exec_arg_t(arg: $0.0, memory: $0.1) }
        precondition(dnnl_primitive_execute(p, stream, Int32(list.count), &list) == dnnl_success, "oneDNN convolution failed")
    }

    /// x and weight: operands (float32 or bf16, as built); bias and y float32.
    func forward(x: UnsafeMutableRawPointer, weight: UnsafeMutableRawPointer, bias: UnsafeMutablePointer<Float>?, y: UnsafeMutablePointer<Float>) {
        reorder(user("src", x), buffers["src"]!)
        reorder(user("weights", weight), buffers["weights"]!)
        var args = [(DNNL_ARG_SRC, buffers["src"]!), (DNNL_ARG_WEIGHTS, buffers["weights"]!), (DNNL_ARG_DST, buffers["dst"]!)]
        if let bias { args.append((DNNL_ARG_BIAS, user("bias", bias))) }
        run(forward, args)
        reorder(buffers["dst"]!, user("dst", y))
        dnnl_stream_wait(stream)
    }

    /// x, weight and gy: operands (float32 or bf16, as built); gx, gw and gb float32.
    func backward(x: UnsafeMutableRawPointer, weight: UnsafeMutableRawPointer, gy: UnsafeMutableRawPointer,
                  gx: UnsafeMutablePointer<Float>?, gw: UnsafeMutablePointer<Float>?, gb: UnsafeMutablePointer<Float>?) {
        var reorderedGy: dnnl_memory_t?  // dY in backward-data's layout, once reordered
        if let gx {
            reorder(user("weights", weight), buffers["bwd_weights"]!)
            reorder(user("diff_dst", gy), buffers["bwd_diff_dst"]!)
            reorderedGy = buffers["bwd_diff_dst"]
            run(backwardData, [(DNNL_ARG_DIFF_DST, buffers["bwd_diff_dst"]!), (DNNL_ARG_WEIGHTS, buffers["bwd_weights"]!),
                               (DNNL_ARG_DIFF_SRC, buffers["diff_src"]!)])
            reorder(buffers["diff_src"]!, user("diff_src", gx))
        }
        if gw != nil || gb != nil {
            let biasScratch = UnsafeMutablePointer<Float>.allocate(capacity: Int(biasDesc.dims.0))
            defer { biasScratch.deallocate() }
            reorder(user("src", x), buffers["wgt_src"]!)
            let diffDst: dnnl_memory_t
            if diffDstShared, let reorderedGy {
                diffDst = reorderedGy
            } else {
                diffDst = buffers["wgt_diff_dst"]!
                reorder(user("diff_dst", gy), diffDst)
            }
            run(backwardWeights, [(DNNL_ARG_SRC, buffers["wgt_src"]!), (DNNL_ARG_DIFF_DST, diffDst),
                                  (DNNL_ARG_DIFF_WEIGHTS, buffers["diff_weights"]!), (DNNL_ARG_DIFF_BIAS, user("bias2", gb ?? biasScratch))])
            if let gw { reorder(buffers["diff_weights"]!, user("diff_weights", gw)) }
        }
        dnnl_stream_wait(stream)
    }
}
