#if canImport(Glibc)
import Glibc
#endif
import CZlib
import LoomCore

/// Reads a whole file, gunzipping it when it is gzip-compressed (zlib's gzread passes
/// plain files through unchanged). Errors name the path.
public func readFileBytes(_ path: String) throws -> [UInt8] {
    guard let f = gzopen(path, "rb") else {
        throw LoomError.io("cannot open '\(path)': \(String(cString: strerror(errno)))")
    }
    defer { gzclose(f) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = chunk.withUnsafeMutableBytes { gzread(f, $0.baseAddress, UInt32($0.count)) }
        if n < 0 {
            var code: Int32 = 0
            let msg = gzerror(f, &code).map { String(cString: $0) } ?? "read error"
            throw LoomError.io("cannot read '\(path)': \(msg) (truncated or corrupt gzip?)")
        }
        if n == 0 { break }
        out.append(contentsOf: chunk[0..<Int(n)])
    }
    return out
}
