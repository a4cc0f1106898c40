import CLibev

/// An `ev_io` at a stable address whose `data` points at its (unretained) owner. The `ev_io`
/// lives in the watcher object itself (a `ManagedBuffer`'s one tail element): one allocation
/// per connection, not two.
///
/// unsafe: `pointer` escapes `withUnsafeMutablePointerToElements`. A `ManagedBuffer`'s elements
/// are stored inside the object, which never moves, so the pointer is valid for as long as the
/// watcher lives; libev holds it only while the watcher is started, and every owner stops its
/// watcher (`watch(0)`) before letting it go, or hands it to the worker's retired list, which
/// keeps it alive until the loop pass that might still report it has ended.
///
/// The header is the loop alone: what the watcher watches is read from the `ev_io` itself (its
/// `events` while libev has it started), so the object is 72 bytes, in malloc's 80-byte chunks
/// (with a copy of the events beside the loop it was 80, in 96-byte chunks: 16 bytes more per
/// connection).
final class IOWatcher: ManagedBuffer<IOWatcher.State, ev_io> {
    struct State {
        /// The libev loop of the thread that owns the watcher (lives as long as that thread's worker).
        let loop: OpaquePointer
    }

    static func make(loop: OpaquePointer, descriptor: Int32, owner: AnyObject,
                     callback: @convention(c) (OpaquePointer?, UnsafeMutablePointer<ev_io>?, Int32) -> Void) -> IOWatcher {
        let watcher = unsafeDowncast(create(minimumCapacity: 1) { _ in State(loop: loop) }, to: IOWatcher.self)
        let pointer = watcher.pointer
        pointer.initialize(to: ev_io())
        tern_io_init(pointer, callback, descriptor, 0)
        tern_set_data(pointer, Unmanaged.passUnretained(owner).toOpaque())
        return watcher
    }

    @inline(__always)
    var pointer: UnsafeMutablePointer<ev_io> { withUnsafeMutablePointerToElements { $0 } }

    /// What the watcher watches: read, write or both while it is started, zero when stopped
    /// (by `watch(0)`, or by libev on a descriptor error). libev keeps its own flag in the
    /// `ev_io`'s events, which is masked off.
    var events: Int32 {
        let io = pointer.pointee
        return io.active != 0 ? io.events & (TERN_EV_READ | TERN_EV_WRITE) : 0
    }

    /// Watches for `events` (read, write or both); zero stops watching.
    func watch(_ newEvents: Int32) {
        let events = self.events
        guard newEvents != events else { return }
        let loop = header.loop
        if events != 0 { ev_io_stop(loop, pointer) }
        if newEvents != 0 {
            tern_io_set(pointer, pointer.pointee.fd, newEvents)
            ev_io_start(loop, pointer)
        }
    }
}

/// An `ev_timer` at a stable address.
final class TimerWatcher {
    let pointer = UnsafeMutablePointer<ev_timer>.allocate(capacity: 1)
    /// The libev loop of the thread that owns the timer.
    let loop: OpaquePointer
    private(set) var isActive = false
    private let callback: @convention(c) (OpaquePointer?, UnsafeMutablePointer<ev_timer>?, Int32) -> Void
    private let owner: UnsafeMutableRawPointer

    init(loop: OpaquePointer, owner: AnyObject,
         callback: @convention(c) (OpaquePointer?, UnsafeMutablePointer<ev_timer>?, Int32) -> Void) {
        self.loop = loop
        self.callback = callback
        self.owner = Unmanaged.passUnretained(owner).toOpaque()
    }

    /// Stopped first: libev must never keep a freed timer in its heap.
    deinit {
        stop()
        pointer.deallocate()
    }

    func start(after seconds: Double) {
        stop()
        tern_timer_init(pointer, callback, max(seconds, 0), 0)
        tern_set_data(pointer, owner)
        ev_timer_start(loop, pointer)
        isActive = true
    }

    func stop() {
        if isActive { ev_timer_stop(loop, pointer) }
        isActive = false
    }

    /// Called from the timer callback: libev has already stopped a non-repeating timer.
    func fired() { isActive = false }
}
