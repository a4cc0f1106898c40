#if canImport(Glibc)
import Glibc
#endif
import CLibev
import Synchronization

/// What the main thread (or, for a client hand-over, another worker) asks of a worker.
enum WorkerCommand: Sendable {
    /// Serve these pools from now on (a reload).
    case apply([PoolPlan], Acknowledgement)
    /// Stop accepting, finish what is in flight, then end the loop.
    case drain(stoppedListening: Acknowledgement, finished: Acknowledgement)
    /// Another worker accepted this client of the pool (identified by what outlives reloads)
    /// and gave it to this, less loaded, worker.
    case adoptClient(descriptor: Int32, pool: PoolShared)
    /// A busy worker moved one of its idle clients here (elastic workers).
    case adoptMovedClient(descriptor: Int32, pool: PoolShared, state: MovedClient)
}

/// Counts workers down to zero; the main thread waits on it.
final class Acknowledgement: Sendable {
    private let remaining: Atomic<Int>
    init(count: Int) { remaining = Atomic(count) }
    func done() { remaining.subtract(1, ordering: .releasing) }
    var isComplete: Bool { remaining.load(ordering: .acquiring) <= 0 }

    /// Waits until every worker has answered or `seconds` have passed; true when all answered.
    func wait(seconds: Double) -> Bool {
        var waited = 0.0
        while !isComplete {
            if waited >= seconds { return false }
            usleep(2000)
            waited += 0.002
        }
        return true
    }
}

/// The libev handle that wakes a worker's loop. `ev_async_send` is the one libev call that may be
/// made from another thread, and it is the only thing done with these pointers off the worker
/// thread; hence this narrowly scoped unchecked conformance.
struct LoopWakeup: @unchecked Sendable {
    let loop: OpaquePointer
    let watcher: UnsafeMutablePointer<ev_async>
    func send() { ev_async_send(loop, watcher) }
}

/// A worker's mailbox: commands under a mutex, and the loop's async watcher to wake it.
final class WorkerInbox: Sendable {
    private let commands = Locked<[WorkerCommand]>([])
    private let wakeup: LoopWakeup

    init(wakeup: LoopWakeup) { self.wakeup = wakeup }

    func post(_ command: WorkerCommand) {
        commands.withLock { $0.append(command) }
        wakeup.send()
    }

    func take() -> [WorkerCommand] {
        commands.withLock { list in
            let taken = list
            list.removeAll()
            return taken
        }
    }
}
