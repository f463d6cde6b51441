/// When a job that failed is started again, and how: up to `maxRestarts` times, each
/// attempt told its number and the previous failure's cause. `loom train --max-restarts`
/// (in-process ranks) and `loom launch --max-restarts` (MPI processes) both run through it.
public struct RestartPolicy: Sendable {
    public var maxRestarts: Int

    public init(maxRestarts: Int = 0) { self.maxRestarts = maxRestarts }

    /// A failed attempt that a restart can mend (a rank that died, a collective that timed
    /// out), with its cause; any other error ends the job at once.
    public struct Failure: Error {
        public var cause: String
        /// Rethrown when the restarts are spent.
        public var underlying: Error?
        public init(cause: String, underlying: Error? = nil) { self.cause = cause; self.underlying = underlying }
    }

    /// Runs `attempt(number, previousCause)` (number 0 first; `first` carries on a count
    /// that began in an earlier process, as under `loom launch`) until it succeeds, a
    /// failure is not restartable, or the restarts are spent. `announce` hears each restart
    /// (its number and cause) before it starts.
    public func run<T>(first: (number: Int, cause: String)? = nil,
                       announce: (_ number: Int, _ cause: String) -> Void = { _, _ in },
                       _ attempt: (_ number: Int, _ previousCause: String?) throws -> T) throws -> T {
        var number = first?.number ?? 0, cause = first?.cause
        while true {
            do {
                return try attempt(number, cause)
            } catch let f as Failure where number < maxRestarts {
                number += 1
                cause = f.cause
                announce(number, f.cause)
            } catch let f as Failure {
                throw f.underlying ?? f
            }
        }
    }
}
