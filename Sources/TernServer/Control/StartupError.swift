/// Why Tern could not start (or a reload could not apply): a listener, a file, the control
/// endpoint.
public struct StartupError: Error, CustomStringConvertible {
    public var description: String
}
