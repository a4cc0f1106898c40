import TernCore

/// Failed authentications in a row after which a client is closed.
let maxAuthFailures = 10

/// Failed authentications, for both protocols. Runs on the client's worker thread.
extension ClientConnection {
    /// Counts a failed authentication, logs it (at most a line a second per pool and worker,
    /// with the peer's address and never the user name or password) and closes the client,
    /// once its replies are out, at its `maxAuthFailures`th failure in a row.
    func authenticationFailed(failures: Int) {
        pool.stats.authFailures.add()
        let closing = failures >= maxAuthFailures
        if closing { closeWhenDrained = true }
        if let suppressed = pool.authLog.admit(now: worker.now) {
            worker.logger.warning("pool \(pool.config.name): failed authentication from \(peerAddress)\(closing ? ", \(maxAuthFailures) in a row: closing the client" : "") (\(suppressed) more since the last line)")
        }
    }
}
