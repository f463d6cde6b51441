import Foundation

/// loss.svg: training loss (logged steps) and validation loss (evaluations) against step.
public enum LossPlot {
    public static func svg(train: [(Int, Double)], validation: [(Int, Double)], title: String) -> String {
        let (w, h, left, right, top, bottom) = (720.0, 420.0, 64.0, 20.0, 36.0, 48.0)
        let all = train + validation
        guard let maxStep = all.map(\.0).max(), let lo0 = all.map(\.1).min(), let hi0 = all.map(\.1).max() else {
            return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\"><text x=\"20\" y=\"40\">no data</text></svg>\n"
        }
        let lo = max(0, lo0 - 0.05 * (hi0 - lo0)), hi = hi0 + 0.05 * (hi0 - lo0) + 1e-9
        func x(_ s: Int) -> Double { left + (w - left - right) * Double(s) / Double(max(maxStep, 1)) }
        func y(_ v: Double) -> Double { top + (h - top - bottom) * (1 - (v - lo) / (hi - lo)) }
        func path(_ pts: [(Int, Double)]) -> String { pts.map { String(format: "%.1f,%.1f", x($0.0), y($0.1)) }.joined(separator: " ") }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<text x=\"\(Int(w / 2))\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">\(title)</text>\n"
        for i in 0...4 {  // horizontal grid with loss labels
            let v = lo + (hi - lo) * Double(i) / 4
            s += String(format: "<line x1=\"%.0f\" x2=\"%.0f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", left, w - right, y(v), y(v))
            s += String(format: "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.3f</text>\n", left - 6, y(v) + 4, v)
        }
        for i in 0...4 {  // step labels
            let st = maxStep * i / 4
            s += String(format: "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%d</text>\n", x(st), h - bottom + 18, st)
        }
        s += "<text x=\"\(Int((left + w - right) / 2))\" y=\"\(Int(h - 8))\" text-anchor=\"middle\">step</text>\n"
        s += "<text transform=\"translate(16,\(Int(h / 2))) rotate(-90)\" text-anchor=\"middle\">loss (nats)</text>\n"
        s += "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"\(path(train))\"/>\n"
        if !validation.isEmpty {
            s += "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"\(path(validation))\"/>\n"
            for p in validation { s += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#d62728\"/>\n", x(p.0), y(p.1)) }
        }
        s += "<rect x=\"\(Int(w - right - 150))\" y=\"\(Int(top + 4))\" width=\"12\" height=\"3\" fill=\"#1f77b4\"/><text x=\"\(Int(w - right - 132))\" y=\"\(Int(top + 10))\">train</text>\n"
        s += "<rect x=\"\(Int(w - right - 80))\" y=\"\(Int(top + 4))\" width=\"12\" height=\"3\" fill=\"#d62728\"/><text x=\"\(Int(w - right - 62))\" y=\"\(Int(top + 10))\">validation</text>\n"
        return s + "</svg>\n"
    }
}
