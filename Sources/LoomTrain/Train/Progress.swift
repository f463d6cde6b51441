import Foundation
import LoomDistributed

/// Progress on the terminal: a live bar redrawn in place when stdout is a terminal,
/// plain lines (one per log interval) when it is a file or a pipe.
public final class Progress {
    public let total: Int
    public let interactive: Bool
    private var lastDraw = 0.0

    /// Interactive on a terminal; not under an MPI launcher, which hands ranks a pty
    /// but forwards their output line by line.
    public init(total: Int, interactive: Bool = isatty(STDOUT_FILENO) == 1 && !MPICommunicator.launchedByMPI) {
        self.total = total
        self.interactive = interactive
    }

    public func update(step: Int, epoch: Double, loss: Float, throughput: Double, unit: String, elapsed: Double, startStep: Int, force: Bool) {
        let done = step - startStep
        let eta = done > 0 ? elapsed / Double(done) * Double(total - step) : 0
        let text = String(format: "step %d/%d | epoch %.2f | loss %.4f | %.0f %@ | ETA %@", step, total, epoch, loss, throughput, unit, clock(eta))
        if interactive {
            let now = Date().timeIntervalSince1970
            guard force || now - lastDraw > 0.1 else { return }
            lastDraw = now
            let width = 24, filled = min(width, width * step / max(total, 1))
            let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
            print("\r\u{1B}[2K\(bar) \(text)", terminator: "")
            fflush(stdout)
        } else if force {
            print(text)
            fflush(stdout)  // a file or pipe is block-buffered: keep `tail -f` live
        }
    }

    /// A long evaluation's progress: on the bar's line on a terminal; into a file or pipe,
    /// a line every 10 s (a short evaluation prints nothing).
    public func evaluating(batch: Int, of total: Int) {
        let now = Date().timeIntervalSince1970
        let text = "evaluating the whole validation split: batch \(batch)/\(total)"
        if interactive {
            guard now - lastDraw > 0.1 || batch == total else { return }
            lastDraw = now
            print("\r\u{1B}[2K" + text, terminator: "")
            fflush(stdout)
        } else {
            if batch == 1 || lastEvaluationLine == 0 { lastEvaluationLine = now }
            guard now - lastEvaluationLine >= 10 else { return }
            lastEvaluationLine = now
            print(text)
            fflush(stdout)
        }
    }
    private var lastEvaluationLine = 0.0

    /// A line that must not be overwritten by the bar (evaluation results, checkpoints).
    public func note(_ line: String) {
        if interactive { print("\r\u{1B}[2K" + line) } else { print(line) }
        fflush(stdout)
    }

    public func finish() { if interactive { print("") } }

    func clock(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }
}
