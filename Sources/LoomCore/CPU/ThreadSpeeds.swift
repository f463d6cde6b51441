/// How fast each of a backend's threads has run its share of recent work of each kind,
/// relative to the others, and splits of the next such work in those proportions.
///
/// On a shared machine one core is often slowed by another tenant for a while, tens of
/// milliseconds to seconds, while the other runs at full speed, and a product split evenly
/// waits for the slow core's half. Measured on a 2-core Zen 4 VM, the mlp's bf16 step at 2
/// threads over 100 steps, each thread's time in each product: the second thread took 5–10%
/// longer than the first in quiet spells and 30–85% longer in spells of several steps, and
/// the step took 1.33 ms in the first kind of spell against 1.7–2.4 ms in the second.
///
/// Each split reports each thread's work and seconds (`record`). A thread's speed is its
/// rate over the mean rate of that piece of work, averaged over recent work of the same
/// shape (weight `smoothing` for the newest), and `ranges` deals the next work of that shape
/// in proportion to the speeds. By shape, because some products are uneven of themselves:
/// the thread that ran the serial work before one has its operand in its cache (one average
/// over all products overloaded the first thread of the mlp's first product by 10–17% of
/// its time, step after step).
///
/// Only for work whose floats do not depend on where the ranges fall: Loom's bf16 kernel
/// computes every row and column of C alike whatever its piece, and attention computes each
/// head alike whatever its thread. A product split along k (its partial sums would change)
/// and float32's products split evenly: OpenBLAS picks kernels by a piece's size, and oneDNN's
/// sgemm, though its rows came out the same split 1:1 and 1:2 at the ten shapes tried, is
/// not Loom's to prove.
///
/// Worked example, 2 threads, 2048 rows in multiples of 8: speeds 1 and 1 give 1024 and
/// 1024 rows. After the second thread has run at 0.6 of the first's rate for a while, the
/// speeds approach 1.25 and 0.75 (each rate over their mean, 0.8) and the split approaches
/// 1280 and 768 rows, which the two finish together.
public final class ThreadSpeeds: @unchecked Sendable {
    /// The newest product's weight in the average.
    public static let smoothing = 0.2
    /// Speeds all within this of 1 split evenly: a quiet machine's timings differ by a few
    /// percent from one product to the next, and following them would only move rows to and fro.
    public static let deadband = 0.04
    /// Work whose pieces take less than this on average is not measured (its timing is
    /// mostly noise). On average, not each: a thread dealt a small piece because it was slow
    /// must still be measured when it is fast again.
    public static let shortest = 20e-6
    /// No thread gets less than this fraction of an even share.
    public static let floor = 0.25
    /// Shapes remembered at most (a model's products are a few dozen; a process that runs
    /// ever new shapes, generation over prompts of every length, starts afresh past this).
    public static let capacity = 4096

    /// What kind of work, as the caller names it (a product's m, n, k, transposes, ...).
    public typealias Shape = [Int]

    private var speeds: [Shape: [Double]] = [:]
    private let threads: Int
    private let lock = SpinLock()

    public init(threads: Int) { self.threads = max(1, threads) }

    /// Each thread's speed at products of `shape` relative to the mean (1: as fast as the others).
    public func current(_ shape: Shape) -> [Double] {
        lock.withLock { speeds[shape] ?? [Double](repeating: 1, count: threads) }
    }

    /// `total` items of a product of `shape` in `pieces` contiguous ranges, in proportion to
    /// the first `pieces` threads' speeds, each a multiple of `multiple` items but the last.
    public func ranges(_ total: Int, pieces: Int, multiple: Int, shape: Shape) -> [(start: Int, count: Int)] {
        let weights = Array(current(shape).prefix(max(1, pieces)))
        let chunk = max(1, (total + weights.count * multiple - 1) / (weights.count * multiple) * multiple)
        let even = stride(from: 0, to: total, by: chunk).map { (start: $0, count: min(chunk, total - $0)) }
        if weights.allSatisfy({ abs($0 - 1) < Self.deadband }) { return even }
        // Each thread's share of the items, none under the floor; the ranges end where the
        // running sum of the shares does, rounded to a multiple.
        let sum = weights.reduce(0, +)
        let floored = weights.map { max(Self.floor / Double(weights.count), $0 / sum) }
        let shares = floored.map { $0 / floored.reduce(0, +) }
        var out: [(start: Int, count: Int)] = [], start = 0, cumulative = 0.0
        for (i, share) in shares.enumerated() {
            cumulative += share
            let end = i == shares.count - 1 ? total
                : min(total, Int((cumulative * Double(total) / Double(multiple)).rounded()) * multiple)
            guard end > start else { return even }  // too few items to deal unevenly
            out.append((start, end - start))
            start = end
        }
        return out
    }

    /// One split product of `shape`: `work[i]` (any unit, the same for all) took `seconds[i]` on thread i.
    public func record(work: [Double], seconds: [Double], shape: Shape) {
        guard work.count > 1, work.count <= threads, work.count == seconds.count, seconds.allSatisfy({ $0 > 0 }),
              seconds.reduce(0, +) / Double(seconds.count) >= Self.shortest, work.allSatisfy({ $0 > 0 }) else { return }
        let rates = zip(work, seconds).map { $0 / $1 }
        let mean = rates.reduce(0, +) / Double(rates.count)
        lock.withLock {
            if speeds[shape] == nil && speeds.count >= Self.capacity { speeds.removeAll() }
            var s = speeds[shape] ?? [Double](repeating: 1, count: threads)
            // A rate past 4× or under a quarter of the mean (a thread descheduled mid-piece) counts as that.
            for (i, r) in rates.enumerated() { s[i] += Self.smoothing * (min(4, max(0.25, r / mean)) - s[i]) }
            speeds[shape] = s
        }
    }
}
