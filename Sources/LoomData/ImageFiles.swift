import CPNG
import CZlib
import Foundation
import LoomCore

/// Image datasets in the formats people hand over, as [N, C, H, W] pixels in [0, 1] (uint8
/// data divided by 255; float data as stored) with integer labels. Every error names the
/// file and what is wrong with it.
public enum ImageFiles {
    // MARK: CIFAR

    /// CIFAR-10 or CIFAR-100's binary version: records of label byte(s) and 3072 pixel
    /// bytes (1024 red, 1024 green, 1024 blue, each row-major 32x32). `path`: a
    /// `data_batch_*.bin`/`train.bin` file, or the directory holding the training batches
    /// (`data_batch_1.bin` … `data_batch_5.bin` for CIFAR-10, `train.bin` for CIFAR-100).
    /// CIFAR-100 records carry a coarse then a fine label; the fine one (100 classes) is used.
    public static func loadCIFAR(_ path: String) throws -> ImageDataset {
        let files = try cifarFiles(path)
        let hundred = files.contains { ($0 as NSString).lastPathComponent.hasPrefix("train") || ($0 as NSString).lastPathComponent.hasPrefix("test.") }
        let labelBytes = hundred ? 2 : 1, record = labelBytes + 3072
        var pixels: [Float] = [], labels: [Int32] = []
        for file in files {
            let bytes = try readFileBytes(file)
            guard !bytes.isEmpty, bytes.count % record == 0 else {
                throw LoomError.io("'\(file)': \(bytes.count) bytes is not a whole number of CIFAR-\(hundred ? 100 : 10) records of \(record) bytes (truncated?)")
            }
            pixels.reserveCapacity(pixels.count + bytes.count / record * 3072)
            for r in 0..<(bytes.count / record) {
                let at = r * record
                let label = Int32(bytes[at + labelBytes - 1])
                guard label < (hundred ? 100 : 10) else {
                    throw LoomError.io("'\(file)': record \(r) has label \(label), outside 0..<\(hundred ? 100 : 10) (not CIFAR-\(hundred ? 100 : 10)?)")
                }
                labels.append(label)
                pixels.append(contentsOf: bytes[(at + labelBytes)..<(at + record)].map { Float($0) / 255 })
            }
        }
        return ImageDataset(pixels: pixels, labels: labels, shape: [3, 32, 32], classes: hundred ? 100 : 10)
    }

    static func cifarFiles(_ path: String) throws -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { throw LoomError.io("cannot open '\(path)': no such file or directory") }
        guard isDirectory.boolValue else { return [path] }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        let batches = names.filter { $0.hasPrefix("data_batch_") && $0.hasSuffix(".bin") }.sorted()
        if !batches.isEmpty { return batches.map { path + "/" + $0 } }
        if names.contains("train.bin") { return [path + "/train.bin"] }
        throw LoomError.io("'\(path)': no data_batch_*.bin (CIFAR-10) or train.bin (CIFAR-100) in the directory")
    }

    // MARK: NumPy

    /// A NumPy array: its shape and values as floats (integers converted exactly).
    public struct Array: Equatable {
        public var shape: [Int]
        public var values: [Float]
        /// Whether the stored type was an integer type (labels must be).
        public var isInteger: Bool
        /// Whether it was uint8 (pixels then scale by 1/255).
        public var isBytes: Bool
    }

    /// Images and labels from `.npy` files (images at `path`, labels at `labels`) or one
    /// `.npz` holding both (arrays named `x`/`y`, `images`/`labels` or
    /// `x_train`/`y_train`). Images: uint8 (scaled to [0, 1]) or float32/float64, shaped
    /// [N, H, W]; [N, C, H, W] when the second axis is 1 or 3 (PyTorch's order); else
    /// [N, H, W, C] when the last is 1, 3 or 4 (channels last, as Keras and most image
    /// tools save them). Labels: integers [N].
    public static func loadNumPy(_ path: String, labels labelsPath: String = "") throws -> ImageDataset {
        let images: Array, labels: Array, where_: String
        if path.hasSuffix(".npz") {
            let arrays = try readNPZ(path)
            let pairs = [("x", "y"), ("images", "labels"), ("x_train", "y_train")]
            guard let (xk, yk) = pairs.first(where: { arrays[$0.0] != nil && arrays[$0.1] != nil }) else {
                throw LoomError.io("'\(path)': holds \(arrays.keys.sorted().joined(separator: ", ")); want images and labels named x and y, images and labels, or x_train and y_train")
            }
            images = arrays[xk]!; labels = arrays[yk]!; where_ = "'\(path)' [\(xk), \(yk)]"
        } else {
            guard !labelsPath.isEmpty else { throw LoomError.config("'\(path)': a .npy of images needs data.labels, the .npy of its labels") }
            images = try readNPY(readFileBytes(path), path: path); labels = try readNPY(readFileBytes(labelsPath), path: labelsPath)
            where_ = "'\(path)' and '\(labelsPath)'"
        }
        guard labels.isInteger, labels.shape.count == 1 else {
            throw LoomError.io("\(where_): labels must be a 1-D integer array, got \(labels.isInteger ? "" : "floating ")shape \(describe(labels.shape))")
        }
        let n = labels.shape[0]
        guard images.shape.first == n, (3...4).contains(images.shape.count) else {
            throw LoomError.io("\(where_): images \(describe(images.shape)) for \(n) labels; want [N, H, W], [N, H, W, C] or [N, C, H, W] with N = \(n)")
        }
        var shape: [Int], pixels = images.values
        if images.isBytes { pixels = pixels.map { $0 / 255 } }
        if images.shape.count == 3 {
            shape = [1, images.shape[1], images.shape[2]]
        } else if ![1, 3].contains(images.shape[1]) && [1, 3, 4].contains(images.shape[3]) {  // channels last: to [N, C, H, W]
            let (h, w, c) = (images.shape[1], images.shape[2], images.shape[3])
            var out = [Float](repeating: 0, count: pixels.count)
            for i in 0..<n { for y in 0..<h { for x in 0..<w { for k in 0..<c {
                out[((i * c + k) * h + y) * w + x] = pixels[((i * h + y) * w + x) * c + k]
            } } } }
            pixels = out
            shape = [c, h, w]
        } else {
            shape = Swift.Array(images.shape.dropFirst())
        }
        guard n > 0, images.shape.dropFirst().allSatisfy({ $0 > 0 }) else {
            throw LoomError.io("\(where_): images \(describe(images.shape)) hold no pixels")
        }
        if let i = labels.values.firstIndex(where: { !($0 >= 0 && $0 < Float(maxClasses)) }) {
            throw LoomError.io("\(where_): label \(String(format: "%.0f", labels.values[i])) (example \(i)) is outside 0..<\(maxClasses)")
        }
        let ls = labels.values.map { Int32($0) }
        return ImageDataset(pixels: pixels, labels: ls, shape: shape, classes: Int(ls.max() ?? 0) + 1)
    }

    /// The most classes a label may name (a corrupt label must not size a classifier
    /// of billions of outputs).
    public static let maxClasses = 1 << 20

    /// One `.npy` array (format versions 1–3, C order, little-endian or byte types).
    public static func readNPY(_ bytes: [UInt8], path: String) throws -> Array {
        func bad(_ why: String) -> LoomError { LoomError.io("'\(path)': \(why)") }
        guard bytes.count >= 10, bytes[0..<6].elementsEqual([0x93] + Swift.Array("NUMPY".utf8)) else { throw bad("not a .npy file (no \\x93NUMPY magic)") }
        let major = bytes[6]
        let headerLength: Int, start: Int
        if major == 1 { headerLength = Int(bytes[8]) | Int(bytes[9]) << 8; start = 10 } else {
            guard bytes.count >= 12 else { throw bad("truncated header") }
            headerLength = (0..<4).reduce(0) { $0 | Int(bytes[8 + $1]) << (8 * $1) }; start = 12
        }
        guard start + headerLength <= bytes.count, let header = String(bytes: bytes[start..<(start + headerLength)], encoding: .utf8) else {
            throw bad("truncated header")
        }
        func field(_ key: String) -> Substring? {
            guard let r = header.range(of: "'\(key)':") else { return nil }
            return header[r.upperBound...].drop { $0 == " " }
        }
        guard let descrField = field("descr"), descrField.first == "'", let descrEnd = descrField.dropFirst().firstIndex(of: "'") else {
            throw bad("header has no descr")
        }
        let descr = String(descrField[descrField.index(after: descrField.startIndex)..<descrEnd])
        if let fortran = field("fortran_order"), fortran.hasPrefix("True") { throw bad("Fortran-ordered arrays are not read; save with np.ascontiguousarray") }
        guard let shapeField = field("shape"), shapeField.first == "(", let close = shapeField.firstIndex(of: ")") else { throw bad("header has no shape") }
        let dims = shapeField[shapeField.index(after: shapeField.startIndex)..<close].split(separator: ",")
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let shape = try dims.map { d -> Int in
            guard let n = Int(d), n >= 0 else { throw bad("shape (\(dims.joined(separator: ", "))) has \(d.prefix(24)), not a size") }
            return n
        }
        guard descr.count >= 2 else { throw bad("dtype '\(descr)' is not read; want uint8, integers, float32 or float64") }
        let order = descr.first!, kind = descr.dropFirst().first!, size = Int(descr.dropFirst(2)) ?? 0
        if kind == "O" { throw bad("dtype \(descr) holds Python objects (pickled), which Loom does not read; save a numeric array") }
        guard ["f", "i", "u", "b"].contains(kind), [1, 2, 4, 8].contains(size), !(kind == "f" && size < 4), !(kind == "b" && size != 1) else {
            throw bad("dtype \(descr) is not read; want uint8, integers, float32 or float64")
        }
        guard "<|=".contains(order) || size == 1 else { throw bad("big-endian dtype \(descr) is not read; save with .astype('<\(descr.dropFirst())')") }
        // The element count and byte size, without overflow: a corrupt shape must be an
        // error, not a trap or an allocation of the product.
        let body = bytes[(start + headerLength)...]
        var count = 1, overflow = false
        for d in shape where !overflow { (count, overflow) = count.multipliedReportingOverflow(by: d) }
        let (needed, tooMany) = count.multipliedReportingOverflow(by: size)
        guard !overflow, !tooMany else { throw bad("shape \(describe(shape)) of \(descr) has more elements than any file holds (a corrupt shape?)") }
        guard body.count >= needed else { throw bad("shape \(describe(shape)) of \(descr) needs \(needed) bytes, the file has \(body.count) (truncated?)") }
        var values = [Float](repeating: 0, count: count)
        body.withUnsafeBytes { raw in
            for i in 0..<count {
                let p = raw.baseAddress! + i * size
                switch (kind, size) {
                case ("f", 4): values[i] = p.loadUnaligned(as: Float.self)
                case ("f", 8): values[i] = Float(p.loadUnaligned(as: Double.self))
                case ("u", 1), ("b", 1): values[i] = Float(p.load(as: UInt8.self))
                case ("i", 1): values[i] = Float(p.load(as: Int8.self))
                case ("u", 2): values[i] = Float(p.loadUnaligned(as: UInt16.self))
                case ("i", 2): values[i] = Float(p.loadUnaligned(as: Int16.self))
                case ("u", 4): values[i] = Float(p.loadUnaligned(as: UInt32.self))
                case ("i", 4): values[i] = Float(p.loadUnaligned(as: Int32.self))
                case ("u", 8): values[i] = Float(p.loadUnaligned(as: UInt64.self))
                default: values[i] = Float(p.loadUnaligned(as: Int64.self))
                }
            }
        }
        return Array(shape: shape, values: values, isInteger: kind != "f", isBytes: kind == "u" && size == 1)
    }

    /// The arrays of an `.npz` (a zip of `.npy` files, stored or deflated).
    public static func readNPZ(_ path: String) throws -> [String: Array] {
        let zip = try readFileBytes(path)
        func u16(_ at: Int) -> Int { Int(zip[at]) | Int(zip[at + 1]) << 8 }
        func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
        var out: [String: Array] = [:], at = 0
        while at + 30 <= zip.count, u32(at) == 0x04034b50 {  // local file headers
            let method = u16(at + 8), flags = u16(at + 6)
            var compressed = u32(at + 18), size = u32(at + 22)
            let nameLength = u16(at + 26), extra = u16(at + 28)
            if compressed == 0xFFFF_FFFF || size == 0xFFFF_FFFF {  // zip64 (numpy writes it): sizes in extra field 1
                var e = at + 30 + nameLength
                while e + 4 <= at + 30 + nameLength + extra, e + 4 <= zip.count {
                    let id = u16(e), length = u16(e + 2)
                    if id == 1, length >= 16, e + 20 <= zip.count {
                        size = u32(e + 4) | u32(e + 8) << 32
                        compressed = u32(e + 12) | u32(e + 16) << 32
                        break
                    }
                    e += 4 + length
                }
            }
            // Sizes from the file are checked before any arithmetic or allocation uses them
            // (zip64 fields are 64-bit; deflate expands at most 1032:1).
            guard flags & 0x08 == 0, compressed >= 0, compressed <= zip.count - (at + 30 + nameLength + extra),
                  size >= 0, size <= compressed * 1032 + 64 else {
                throw LoomError.io("'\(path)': the zip entry at byte \(at) is truncated, has impossible sizes (\(compressed) compressed, \(size) inflated) or uses a data descriptor (not written by numpy.savez?)")
            }
            let name = String(decoding: zip[(at + 30)..<(at + 30 + nameLength)], as: UTF8.self)
            let data = Swift.Array(zip[(at + 30 + nameLength + extra)..<(at + 30 + nameLength + extra + compressed)])
            let npy: [UInt8]
            switch method {
            case 0: npy = data
            case 8: npy = try inflate(data, size: size, what: "'\(path)' [\(name)]")
            default: throw LoomError.io("'\(path)' [\(name)]: zip compression method \(method) is not read (stored or deflate only)")
            }
            out[name.hasSuffix(".npy") ? String(name.dropLast(4)) : name] = try readNPY(npy, path: "\(path) [\(name)]")
            at += 30 + nameLength + extra + compressed
        }
        guard !out.isEmpty else { throw LoomError.io("'\(path)': not an .npz (zip) file") }
        return out
    }

    /// Raw deflate (zip's method 8) of a known size.
    static func inflate(_ data: [UInt8], size: Int, what: String) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: size)
        var stream = z_stream()
        guard inflateInit2_(&stream, -15, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { throw LoomError.io("\(what): zlib failed to start") }
        defer { inflateEnd(&stream) }
        var input = data
        let status = input.withUnsafeMutableBufferPointer { inp in
            out.withUnsafeMutableBufferPointer { outp in
                stream.next_in = inp.baseAddress; stream.avail_in = UInt32(inp.count)
                stream.next_out = outp.baseAddress; stream.avail_out = UInt32(outp.count)
                return CZlib.inflate(&stream, Z_FINISH)
            }
        }
        guard status == Z_STREAM_END, Int(stream.total_out) == size else { throw LoomError.io("\(what): corrupt deflate data") }
        return out
    }

    // MARK: PNG folders

    /// A folder of class folders of PNG images (`root/cat/1.png`, `root/dog/7.png`):
    /// classes in sorted order of their names; every image the same size; grey images
    /// one channel, colour ones three (alpha dropped, palettes expanded).
    public static func loadPNGFolder(_ root: String) throws -> (ImageDataset, classNames: [String]) {
        let fm = FileManager.default
        let classes = ((try? fm.contentsOfDirectory(atPath: root)) ?? []).filter { name in
            var dir: ObjCBool = false
            return !name.hasPrefix(".") && fm.fileExists(atPath: root + "/" + name, isDirectory: &dir) && dir.boolValue
        }.sorted()
        guard !classes.isEmpty else { throw LoomError.io("'\(root)': no class folders (want root/CLASS/IMAGE.png)") }
        var pixels: [Float] = [], labels: [Int32] = [], shape: [Int]?, firstFile = ""
        for (label, name) in classes.enumerated() {
            let files = ((try? fm.contentsOfDirectory(atPath: root + "/" + name)) ?? []).filter { $0.lowercased().hasSuffix(".png") }.sorted()
            for file in files {
                let path = root + "/" + name + "/" + file
                let (values, s) = try decodePNG(path)
                if let shape, shape != s {
                    throw LoomError.io("'\(path)': \(describe(s)) (channels, height, width), but '\(firstFile)' is \(describe(shape)): images must share a size")
                }
                if shape == nil { shape = s; firstFile = path }
                pixels += values
                labels.append(Int32(label))
            }
        }
        guard let shape else { throw LoomError.io("'\(root)': no .png files in its class folders") }
        return (ImageDataset(pixels: pixels, labels: labels, shape: shape, classes: classes.count), classes)
    }

    /// One PNG as [C, H, W] values in [0, 1] (libpng's simplified API). Both libpng calls
    /// run inside one `withUnsafeBytes`: libpng's memory reader keeps the pointer it is
    /// given at `begin_read` and reads through it again in `finish_read`, so the file's
    /// bytes must stay alive and in place across both.
    static func decodePNG(_ path: String) throws -> ([Float], [Int]) {
        let bytes = try readFileBytes(path)
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        let message = { (image: png_image) -> String in
            withUnsafeBytes(of: image.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        return try bytes.withUnsafeBytes { file -> ([Float], [Int]) in
            guard png_image_begin_read_from_memory(&image, file.baseAddress, file.count) != 0 else {
                throw LoomError.io("'\(path)': not a readable PNG (\(message(image)))")
            }
            let colour = image.format & 0x02 != 0  // PNG_FORMAT_FLAG_COLOR
            image.format = colour ? 0x02 : 0        // PNG_FORMAT_RGB, PNG_FORMAT_GRAY (macros Swift does not import)
            let channels = colour ? 3 : 1, (h, w) = (Int(image.height), Int(image.width))
            guard h * w * channels <= maxImageBytes else {
                png_image_free(&image)
                throw LoomError.io("'\(path)': a \(w)x\(h) PNG is larger than Loom reads (\(maxImageBytes >> 20) MiB of pixels per image)")
            }
            var raw = [UInt8](repeating: 0, count: channels * h * w)
            guard raw.withUnsafeMutableBytes({ png_image_finish_read(&image, nil, $0.baseAddress, 0, nil) }) != 0 else {
                png_image_free(&image)
                throw LoomError.io("'\(path)': corrupt PNG (\(message(image)))")
            }
            var out = [Float](repeating: 0, count: raw.count)
            for y in 0..<h { for x in 0..<w { for c in 0..<channels { out[(c * h + y) * w + x] = Float(raw[(y * w + x) * channels + c]) / 255 } } }
            return (out, [channels, h, w])
        }
    }

    /// The most pixel bytes one image may declare (a corrupt header must not make Loom
    /// allocate gigabytes): 256 MiB, an 8192 x 8192 RGBA image.
    static let maxImageBytes = 1 << 28
}
