import LoomCore

/// The keys and values a GPT has computed for the positions it has seen, per block, so
/// that generating a token costs one position's work, not a pass over the window.
///
/// Rows of a batch are left-padded to a common length: row b's first `padding[b]` slots
/// hold no token; their keys get a large negative bias, and the row's positions count
/// from its first real token (as Hugging Face's position ids do under an attention mask).
public final class KVCache {
    /// Slots per row (the model's context length).
    public let capacity: Int
    /// Slots filled so far (padding included).
    public internal(set) var length = 0
    /// Padded slots at the start of each row.
    public let padding: [Int]
    /// Per block: keys and values [B, capacity, C] (this rank's heads side by side).
    let keys: [Tensor], values: [Tensor]
    /// [B, capacity]: 0, or a large negative value on padded slots; nil without padding.
    let keyBias: Tensor?

    /// An empty cache for `model` and a batch whose rows start with `padding` empty slots.
    public init(for model: GPT, padding: [Int]) throws {
        let backend = model.backend
        let width = model.blocks.first.map { $0.attention.qkv.weight.shape[0] / 3 } ?? model.config.dModel
        let capacity = model.config.contextLength
        self.capacity = capacity
        self.padding = padding
        guard padding.allSatisfy({ $0 >= 0 && $0 < capacity }) else {
            throw LoomError.invalidArgument("kv cache: padding \(padding) must leave each row at least one of \(capacity) slots")
        }
        keys = try model.blocks.map { _ in try Tensor.zeros([padding.count, capacity, width], on: backend) }
        values = try model.blocks.map { _ in try Tensor.zeros([padding.count, capacity, width], on: backend) }
        if padding.contains(where: { $0 > 0 }) {
            // Finite, not -inf: a padded query then still has keys to attend to (its own
            // padded slots), so no row of the softmax is all -inf and no NaN reaches V.
            let bias = padding.flatMap { p in (0..<capacity).map { $0 < p ? Float(-1e9) : 0 } }
            keyBias = Tensor(bias, shape: [padding.count, capacity], on: backend)
        } else {
            keyBias = nil
        }
    }

    public var batch: Int { padding.count }

    /// Position ids [B, T] of the next `count` slots: each row counts from its first real
    /// token (padded slots get 0).
    func positions(count: Int, on backend: any Backend) -> Tensor {
        let ids = padding.flatMap { p in (length..<(length + count)).map { Int32(Swift.max(0, $0 - p)) } }
        return Tensor(indices: ids, shape: [batch, count], on: backend)
    }

    /// One block's view of the cache for the positions being added.
    struct Layer {
        let keys: Tensor, values: Tensor, keyBias: Tensor?, start: Int
    }

    func layer(_ index: Int) -> Layer { Layer(keys: keys[index], values: values[index], keyBias: keyBias, start: length) }
}
