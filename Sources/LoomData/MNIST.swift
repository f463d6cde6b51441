import LoomCore

/// MNIST-style digit data: CSV (784 pixel values then the label, the label in the last
/// column; optionally gzipped) or IDX (LeCun's format: an images file and a labels file).
public enum MNIST {
    /// Pixel normalisation used by the examples (the MNIST training set's mean and std).
    public static let mean: Float = 0.1307, std: Float = 0.3081

    /// Loads a CSV file: every line has `features` pixel values (0-255) and then the label.
    /// A header line (non-numeric first field) is skipped.
    public static func loadCSV(_ path: String, features: Int = 784, classes: Int = 10) throws -> ImageDataset {
        let bytes = try readFileBytes(path)
        var pixels: [Float] = [], labels: [Int32] = []
        pixels.reserveCapacity(bytes.count / 2)
        var line = 1, field: [Float] = []
        field.reserveCapacity(features + 1)
        var value = 0, digits = 0, sawNonDigit = false
        func endField() throws {
            guard digits > 0 && !sawNonDigit else {
                if line == 1 && labels.isEmpty && pixels.isEmpty { sawNonDigit = true; return }  // header
                throw LoomError.io("'\(path)' line \(line): field \(field.count + 1) is not a non-negative integer")
            }
            // Pixels are bytes; a value past 255 (or too long to hold) is a broken file.
            if field.count < features && value > 255 {
                throw LoomError.io("'\(path)' line \(line): pixel \(field.count + 1) is \(digits > 9 ? "a \(digits)-digit number" : String(value)), outside 0...255")
            }
            field.append(Float(value)); value = 0; digits = 0
        }
        var header = false
        for b in bytes {
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                // Saturates instead of overflowing: any field this long is rejected in endField.
                value = min(value, 1 << 40) * 10 + Int(b - 48); digits += 1
            case UInt8(ascii: ","):
                if header { continue }
                try endField()
                if sawNonDigit && field.isEmpty { header = true }
            case UInt8(ascii: "\n"):
                // (A header's digits, as in "p1,p2", must not leak into the first pixel.)
                defer { line += 1; field.removeAll(keepingCapacity: true); header = false; sawNonDigit = false; value = 0; digits = 0 }
                if header { continue }
                if digits == 0 && field.isEmpty { continue }  // blank line
                try endField()
                guard field.count == features + 1 else {
                    throw LoomError.io("'\(path)' line \(line): expected \(features + 1) values (\(features) pixels + label), got \(field.count)")
                }
                let label = Int(field[features])
                guard label < classes else {
                    throw LoomError.io("'\(path)' line \(line): label \(label) outside 0..<\(classes)")
                }
                for v in field[0..<features] { pixels.append((v / 255 - mean) / std) }
                labels.append(Int32(label))
            case UInt8(ascii: "\r"), UInt8(ascii: " "):
                continue
            default:
                if header { continue }
                sawNonDigit = true
            }
        }
        if digits > 0 || !field.isEmpty {
            throw LoomError.io("'\(path)' line \(line): file ends in the middle of a record (truncated?)")
        }
        guard !labels.isEmpty else { throw LoomError.io("'\(path)': no records") }
        return ImageDataset(pixels: pixels, labels: labels, features: features, classes: classes)
    }

    /// Loads an IDX images file (magic 0x803) and labels file (magic 0x801).
    public static func loadIDX(images: String, labels: String, classes: Int = 10) throws -> ImageDataset {
        let img = try readFileBytes(images), lab = try readFileBytes(labels)
        func u32(_ b: [UInt8], _ at: Int) -> Int { Int(b[at]) << 24 | Int(b[at + 1]) << 16 | Int(b[at + 2]) << 8 | Int(b[at + 3]) }
        guard img.count >= 16, u32(img, 0) == 0x803 else { throw LoomError.io("'\(images)': not an IDX images file (magic 0x00000803)") }
        guard lab.count >= 8, u32(lab, 0) == 0x801 else { throw LoomError.io("'\(labels)': not an IDX labels file (magic 0x00000801)") }
        let (n, rows, cols) = (u32(img, 4), u32(img, 8), u32(img, 12))
        // Up to 2^32 each: the product can overflow; a header that does not fit the file is refused.
        let (pixelsPerImage, o1) = rows.multipliedReportingOverflow(by: cols)
        let (total, o2) = n.multipliedReportingOverflow(by: pixelsPerImage)
        guard !o1, !o2, img.count - 16 == total else {
            throw LoomError.io("'\(images)': header says \(n) images of \(rows)x\(cols) (\(o1 || o2 ? "more than 2^63" : String(16 + total)) bytes), file has \(img.count)")
        }
        guard u32(lab, 4) == n, lab.count == 8 + n else {
            throw LoomError.io("'\(labels)': \(u32(lab, 4)) labels (\(lab.count) bytes) for \(n) images")
        }
        let pixels = img[16...].map { (Float($0) / 255 - mean) / std }
        let ls = lab[8...].map { Int32($0) }
        if let bad = ls.first(where: { $0 >= classes }) { throw LoomError.io("'\(labels)': label \(bad) outside 0..<\(classes)") }
        return ImageDataset(pixels: pixels, labels: ls, features: rows * cols, classes: classes)
    }
}
