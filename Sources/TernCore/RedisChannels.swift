/// Where a Redis pub/sub channel's messages come from, on a pool of several servers.
///
/// Redis sends keyspace notifications (`notify-keyspace-events`) from the server that holds
/// the key, on that server only (a Redis Cluster node does not pass them to the others):
/// - `__keyspace@<db>__:<key>` comes from the key's server, so it is subscribed where the key
///   is placed, not where the channel's own name would be;
/// - `__keyevent@<db>__:<event>` comes from every server (each for its own keys), so it is
///   subscribed on all of them;
/// - any other channel is placed like a key by its name, as `PUBLISH` places it.
public enum RedisChannelOrigin: Equatable, Sendable {
    /// The channel's own name, placed like a key.
    case name
    /// The key named in the channel (the byte range of `<key>` in the name).
    case key(Range<Int>)
    /// Every server.
    case everyServer

    public init(channel name: UnsafeRawBufferPointer) {
        if let keyStart = Self.afterPrefix(name, "__keyspace@") {
            self = .key(keyStart..<name.count)
        } else if Self.afterPrefix(name, "__keyevent@") != nil {
            self = .everyServer
        } else {
            self = .name
        }
    }

    /// A pattern (`PSUBSCRIBE`) on a Redis Cluster pool, whose nodes pass every `PUBLISH` on but
    /// not their keyspace notifications. A pattern whose literal start is `__key` matches
    /// notification channels only (`__keyspace@…`, `__keyevent@…`, Redis's own example
    /// `__key*__:*`), so it is subscribed on every node; any other pattern on one node, by its
    /// name, where it sees every published message once.
    public init(pattern name: UnsafeRawBufferPointer) {
        let prefix: StaticString = "__key"
        let length = prefix.utf8CodeUnitCount
        self = name.count >= length && UnsafeRawBufferPointer(start: prefix.utf8Start, count: length).elementsEqual(name.prefix(length))
            ? .everyServer : .name
    }

    /// The offset after `<prefix><digits>__:` at the start of `name`, or nil.
    private static func afterPrefix(_ name: UnsafeRawBufferPointer, _ prefix: StaticString) -> Int? {
        let length = prefix.utf8CodeUnitCount
        guard name.count > length, UnsafeRawBufferPointer(start: prefix.utf8Start, count: length).elementsEqual(name.prefix(length)) else { return nil }
        var index = length
        while index < name.count, name[index] >= UInt8(ascii: "0"), name[index] <= UInt8(ascii: "9") { index += 1 }
        guard index > length, index + 3 <= name.count, name[index] == UInt8(ascii: "_"), name[index + 1] == UInt8(ascii: "_"),
              name[index + 2] == UInt8(ascii: ":") else { return nil }
        return index + 3
    }
}
