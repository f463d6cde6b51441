import Foundation
import LoomCore

/// Point-to-point transfer of a list of named tensors whose names, shapes and dtypes the
/// receiver does not know in advance, with string metadata: a length, a header (UTF-8
/// bytes, one per int32 element), then each tensor. Pipeline stages send their parts of
/// a checkpoint to the stage that writes it this way.
extension Communicator {
    public func send(named tensors: [(name: String, tensor: Tensor)], metadata: [String: String] = [:], to peer: Int, tag: Int) throws {
        var header = metadata.sorted { $0.key < $1.key }.map { "#\(escape($0.key))\t\(escape($0.value))" }
        header += tensors.map { "\($0.name)\t\($0.tensor.dtype.rawValue)\t\($0.tensor.shape.map(String.init).joined(separator: ","))" }
        let bytes = Array(header.joined(separator: "\n").utf8).map(Int32.init)
        try send(Tensor(indices: [Int32(bytes.count)], shape: [1]), to: peer, tag: tag)
        try send(Tensor(indices: bytes, shape: [bytes.count]), to: peer, tag: tag)
        for (_, t) in tensors { try send(t, to: peer, tag: tag) }
    }

    public func receiveNamed(from peer: Int, tag: Int, on backend: any Backend = DefaultBackend.current) throws
        -> (tensors: [(name: String, tensor: Tensor)], metadata: [String: String]) {
        let length = try Tensor(uninitialized: [1], dtype: .int32)
        try receive(into: length, from: peer, tag: tag)
        let header = try Tensor(uninitialized: [Int(length.ints[0])], dtype: .int32)
        try receive(into: header, from: peer, tag: tag)
        let text = String(decoding: header.ints.map { UInt8(truncatingIfNeeded: $0) }, as: UTF8.self)
        var metadata: [String: String] = [:], tensors: [(String, Tensor)] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            if line.hasPrefix("#") {
                metadata[unescape(String(fields[0].dropFirst()))] = fields.count > 1 ? unescape(fields[1]) : ""
                continue
            }
            guard fields.count == 3 else { throw CommError("named tensors from rank \(peer): bad header line '\(line)'") }
            let shape = fields[2].split(separator: ",").compactMap { Int($0) }
            let t = try Tensor(uninitialized: shape, dtype: fields[1] == "i32" ? .int32 : .float32, on: backend)
            try receive(into: t, from: peer, tag: tag)
            tensors.append((fields[0], t))
        }
        return (tensors, metadata)
    }
}

/// Header fields are tab-separated lines: metadata escapes its backslashes, tabs and newlines.
private func escape(_ s: String) -> String {
    s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\t", with: "\\t").replacingOccurrences(of: "\n", with: "\\n")
}

private func unescape(_ s: String) -> String {
    var out = "", escaped = false
    for ch in s {
        if escaped {
            out.append(ch == "t" ? "\t" : ch == "n" ? "\n" : ch)
            escaped = false
        } else if ch == "\\" {
            escaped = true
        } else {
            out.append(ch)
        }
    }
    return out
}
