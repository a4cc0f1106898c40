#if canImport(Glibc)
import Glibc
#endif

/// A value behind a pthread mutex, for the few places threads share state (worker inboxes, the
/// current plans, the log descriptor).
///
/// Not `Synchronization.Mutex`: on Linux its lock and unlock run in the standard library, which
/// ThreadSanitizer does not instrument, so TSan saw no ordering between two threads' accesses
/// under the same Mutex and reported the worker inbox as racing once workers began handing
/// clients to each other. TSan intercepts `pthread_mutex_lock`, so it sees this lock.
///
/// The unchecked conformance is scoped to this type: `value` is reached only between lock and
/// unlock, and it is itself Sendable.
final class Locked<Value: Sendable>: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var value: Value

    init(_ value: Value) {
        self.value = value
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
