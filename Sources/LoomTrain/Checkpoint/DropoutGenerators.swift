import Foundation
import LoomCore
import LoomNN

/// Where each dropout layer's generator stands (its Philox key and position), by the
/// layer's name in the model: what a resumed run needs to draw the masks the uninterrupted
/// run would have. Pipeline stages each hold some layers; rank 0 merges them.
public struct DropoutGenerators: Equatable, Sendable {
    public struct Position: Codable, Equatable, Sendable {
        public var key: UInt64
        public var position: UInt64
        public init(key: UInt64, position: UInt64) { self.key = key; self.position = position }
    }

    public var byLayer: [String: Position] = [:]

    public init(byLayer: [String: Position] = [:]) { self.byLayer = byLayer }

    /// The generators of a module tree's dropout layers.
    public init(of root: Module) {
        for (name, d) in DropoutGenerators.layers(root) { byLayer[name] = Position(key: d.rng.key, position: d.rng.position) }
    }

    /// Sets each dropout layer of `root` that has a saved generator to it.
    public func restore(into root: Module) {
        for (name, d) in DropoutGenerators.layers(root) {
            if let p = byLayer[name] { d.rng = Philox(seed: p.key, position: p.position) }
        }
    }

    /// Both sets of layers (stages hold distinct ones).
    public func merging(_ other: DropoutGenerators) -> DropoutGenerators {
        DropoutGenerators(byLayer: byLayer.merging(other.byLayer) { a, _ in a })
    }

    static func layers(_ root: Module) -> [(name: String, module: Dropout)] {
        root.descendants().compactMap { name, m in (m as? Dropout).map { (name, $0) } }
    }

    // MARK: In a checkpoint's metadata

    /// JSON with sorted keys: `{"blocks.0.dropout":{"key":1,"position":4096}}`.
    public var serialized: String { JSONOutput.string(byLayer) }

    /// Reads `serialized`, or the `name=key:position;…` form of checkpoints written before
    /// it. `bad(what)` makes the error for a malformed entry.
    public init(serialized text: String, bad: (String) -> Error) throws {
        if text.hasPrefix("{") {
            guard let decoded = try? JSONDecoder().decode([String: Position].self, from: Data(text.utf8)) else {
                throw bad("a JSON object of layer -> {key, position}")
            }
            byLayer = decoded
            return
        }
        for entry in text.split(separator: ";") {
            let parts = entry.split(separator: "=")
            let kv = parts.last?.split(separator: ":") ?? []
            guard parts.count == 2, kv.count == 2, let k = UInt64(kv[0]), let p = UInt64(kv[1]),
                  byLayer.updateValue(Position(key: k, position: p), forKey: String(parts[0])) == nil else {
                throw bad("a list of distinct name=key:position entries (at '\(entry)')")
            }
        }
    }
}
