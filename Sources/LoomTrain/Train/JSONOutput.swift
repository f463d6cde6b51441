import Foundation

/// JSON as Loom writes it (metrics lines, summaries, benchmark results): `Encodable`
/// values, keys sorted (the same bytes for the same values), one line unless `pretty`.
public enum JSONOutput {
    public static func string<T: Encodable>(_ value: T, pretty: Bool = false) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        // Encoding plain structs of numbers and strings cannot fail.
        return String(decoding: try! encoder.encode(value), as: UTF8.self)
    }
}

/// `x` rounded to `digits` decimals (a measured time or rate, written without noise digits).
func rounded(_ x: Double, _ digits: Int) -> Double {
    let p = pow(10, Double(digits))
    return (x * p).rounded() / p
}
