import CLibev

/// An `ev_io` at a stable address whose `data` points at its (unretained) owner.
final class IOWatcher {
    let pointer = UnsafeMutablePointer<ev_io>.allocate(capacity: 1)
    private(set) var events: Int32 = 0
    /// The libev loop of the thread that owns the watcher (lives as long as that thread's worker).
    let loop: OpaquePointer

    init(loop: OpaquePointer, descriptor: Int32, owner: AnyObject,
         callback: @convention(c) (OpaquePointer?, UnsafeMutablePointer<ev_io>?, Int32) -> Void) {
        self.loop = loop
        tern_io_init(pointer, callback, descriptor, 0)
        tern_set_data(pointer, Unmanaged.passUnretained(owner).toOpaque())
    }

    deinit { pointer.deallocate() }

    /// Watches for `events` (read, write or both); zero stops watching.
    func watch(_ newEvents: Int32) {
        guard newEvents != events else { return }
        if events != 0 { ev_io_stop(loop, pointer) }
        events = newEvents
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

    deinit { pointer.deallocate() }

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
