/// Whether operations record the graph, per thread (in-process ranks are threads, and
/// each has its own mode). Enabled unless inside `withoutGrad`.
public enum GradMode {
    private static let disabled = ThreadFlag()

    public static var isEnabled: Bool { !disabled.isOn }

    /// Runs `body` without recording the graph (evaluation, optimizer updates).
    public static func withoutGrad<T>(_ body: () throws -> T) rethrows -> T {
        try disabled.with(true, body)
    }
}

/// Runs `body` without recording the graph.
public func withoutGrad<T>(_ body: () throws -> T) rethrows -> T { try GradMode.withoutGrad(body) }
