#if canImport(Glibc)
import Glibc
#endif

/// The threads Tern starts besides the main one: workers, the control servers, cluster
/// discovery, the Sentinel watcher and the INFO poller. None is joined; each ends with the
/// process (workers are waited for through acknowledgements instead).
enum Threads {
    /// What a new thread runs, passed to it through `pthread_create`'s context pointer.
    private final class Start {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Runs `body` on a new detached thread. Returns `pthread_create`'s error (0: started).
    ///
    /// Unchecked hand-over: `body` and what it captures belong to the new thread from here on.
    /// Invariant: the caller keeps no use of anything non-Sendable that `body` captures (a
    /// worker is built on the main thread and never touched by it again once started).
    @discardableResult
    static func start(_ body: @escaping () -> Void) -> Int32 {
        let context = Unmanaged.passRetained(Start(body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { context in
            Unmanaged<Start>.fromOpaque(context!).takeRetainedValue().body()
            return nil
        }, context)
        guard result == 0 else {
            Unmanaged<Start>.fromOpaque(context).release()
            return result
        }
        pthread_detach(thread)
        return 0
    }
}
