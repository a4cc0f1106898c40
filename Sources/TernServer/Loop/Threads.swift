#if canImport(Glibc)
import Glibc
#endif
import CLibev

/// The threads Tern starts besides the main one: workers, the control servers, cluster
/// discovery, the Sentinel watcher and the INFO poller. None is joined; each ends with the
/// process (workers are waited for through acknowledgements instead).
enum Threads {
    /// What a new thread runs, passed to it through `pthread_create`'s context pointer.
    private final class Start {
        let name: String
        let body: () -> Void
        init(_ name: String, _ body: @escaping () -> Void) {
            self.name = name
            self.body = body
        }
    }

    /// Runs `body` on a new detached thread named `name` (at most 15 bytes: what `top -H`,
    /// `ps -L` and debuggers show; `bench/allocations.sh` counts the workers' allocations by
    /// it). Returns `pthread_create`'s error (0: started).
    ///
    /// Unchecked hand-over: `body` and what it captures belong to the new thread from here on.
    /// Invariant: the caller keeps no use of anything non-Sendable that `body` captures (a
    /// worker is built on the main thread and never touched by it again once started).
    @discardableResult
    static func start(_ name: String, _ body: @escaping () -> Void) -> Int32 {
        let context = Unmanaged.passRetained(Start(name, body)).toOpaque()
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { context in
            let start = Unmanaged<Start>.fromOpaque(context!).takeRetainedValue()
            tern_set_thread_name(start.name)
            start.body()
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
