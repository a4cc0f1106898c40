#if canImport(Glibc)
import Glibc
#endif
import TernCore

/// Pub/sub on a sharded pool (RESP2). Confined to the client's worker thread.
///
///     SUBSCRIBE ch ──► the channel is placed like a key: its server gets `SUBSCRIBE ch` on this
///                      client's push connection to that server (opened on first use)
///     PSUBSCRIBE p ──► every server gets it (a pattern may match a channel anywhere)
///     message     ──► whole frames, from whichever push connection, go to the client in order
///                      behind the replies already due
///
/// Confirmations carry the client's own subscription count, as one Redis server would report
/// it; Tern writes them when the command arrives and sends them once every server concerned has
/// confirmed, so a message published after the client saw its confirmation is never missed.
final class RedisSubscriptions {
    /// A subscription and the push connection that carries it: its server's when it was
    /// subscribed, which its unsubscribe reaches too (the placement may have changed since, by
    /// a reload or an ejection). nil: a pattern outside Redis Cluster, on every server.
    struct Entry {
        let name: [UInt8]
        let connection: ServerConnection?
    }
    var channels: [Entry] = []
    var patterns: [Entry] = []
    var shardChannels: [Entry] = []
    /// Shard channels whose SUNSUBSCRIBE is on its way to the connection named, each until an
    /// `sunsubscribe` of that channel comes back there (`shardChannelLeft`): that one is the
    /// answer, not Redis Cluster's unasked notice.
    var unsubscribing: [Entry] = []
    /// Push connections by server position.
    var connections: [Int: ServerConnection] = [:]

    /// The count Redis reports in subscribe/unsubscribe confirmations (RESP2): channels and
    /// patterns; shard channels count apart.
    var count: Int { channels.count + patterns.count }
    var isSubscribed: Bool { count + shardChannels.count > 0 }
}

extension ClientConnection {
    enum SubscriptionKind { case channel, pattern, shard }

    /// SUBSCRIBE family, and PUBSUB.
    func routePubSub(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        if command.isNamed("pubsub") { return pubsubInfo(frame, session, slot) }
        let kind: SubscriptionKind = command.isNamed("psubscribe") || command.isNamed("punsubscribe") ? .pattern
            : command.isNamed("ssubscribe") || command.isNamed("sunsubscribe") ? .shard : .channel
        let subscribing = command.isNamed("subscribe") || command.isNamed("psubscribe") || command.isNamed("ssubscribe")
        let subscriptions = session.subscriptions ?? RedisSubscriptions()
        session.subscriptions = subscriptions
        let wasSubscribed = subscriptions.isSubscribed
        defer {
            if subscriptions.isSubscribed != wasSubscribed { pool.stats.subscribedClients.add(wasSubscribed ? -1 : 1) }
        }
        let arguments = session.arguments
        let limit = pool.config.maxSubscriptions
        var parts: [(connection: ServerConnection, name: [UInt8])] = []
        // The list is out of `subscriptions` while it changes, and back before the slot is
        // answered (answering may close the client over its output limit, and closing reads the
        // lists). A failure answers the whole command: what it changed is undone (nothing sent).
        var list = take(subscriptions, kind)
        let unchanged = list
        var names: [[UInt8]] = (1..<arguments.count).map { index in arguments.withArgument(index, in: frame) { Array($0) } }
        // Redis Cluster takes shard channels as keys: one command's must share a slot.
        if kind == .shard, pool.isCluster, let first = names.first {
            let firstSlot = first.withUnsafeBytes { hashSlot($0) }
            if names.dropFirst().contains(where: { name in name.withUnsafeBytes { hashSlot($0) } != firstSlot }) {
                put(subscriptions, kind, unchanged)
                return slot.complete(with: "-CROSSSLOT Keys in request don't hash to the same slot\r\n" as StaticString)
            }
        }
        if !subscribing, names.isEmpty {
            names = list.map(\.name)
            if names.isEmpty {
                slot.data.appendArrayHeader(3)
                slot.data.appendBulk(command.name)
                slot.data.append("$-1\r\n" as StaticString)
                slot.data.appendInteger(kind == .shard ? subscriptions.shardChannels.count : subscriptions.count)
            }
        }
        // Where a name is in `list`: a search for a few names (a SUBSCRIBE of one channel, the
        // common case, costs a scan and builds nothing), positions by name for many (a search
        // per name, and a removal that moved the rest of the list, made a SUBSCRIBE of 10,000
        // channels take 75 ms of the worker, growing with the square of the count). Entries
        // unsubscribed here are marked, and removed at the end.
        let indexed = names.count > 16
        var positions: [[UInt8]: Int] = [:]
        if indexed {
            positions.reserveCapacity(list.count + (subscribing ? names.count : 0))
            for (position, entry) in list.enumerated() { positions[entry.name] = position }
        }
        var removed: [Bool] = []
        var live = list.count
        for name in names {
            // Reaches the servers only when it changes something there.
            let present = indexed ? positions[name] : list.indices.first { (removed.isEmpty || !removed[$0]) && list[$0].name == name }
            if subscribing, present == nil {
                guard subscriptions.count + subscriptions.shardChannels.count + live < limit else {
                    put(subscriptions, kind, unchanged)
                    slot.data.removeAll()
                    return slot.complete(with: "-ERR too many subscriptions for this client (max_subscriptions)\r\n" as StaticString)
                }
                let origin: RedisChannelOrigin = switch kind {
                case .channel: name.withUnsafeBytes { RedisChannelOrigin(channel: $0) }
                case .pattern: pool.isCluster ? name.withUnsafeBytes { RedisChannelOrigin(pattern: $0) } : .everyServer
                case .shard: .name
                }
                if origin == .everyServer {
                    // A Redis Cluster node passes every PUBLISH to the others, so there one node
                    // (the pattern's slot's, below) sees them all; elsewhere each server has its
                    // own. Keyspace notifications come from every server, cluster or not, so
                    // key-event channels and `__key…` patterns are on all of them.
                    for server in pool.servers.indices { parts.append((pushConnection(subscriptions, server), name)) }
                    list.append(RedisSubscriptions.Entry(name: name, connection: nil))
                    if indexed { positions[name] = list.count - 1 }
                    live += 1
                } else {
                    guard let server = name.withUnsafeBytes({ Self.placement(of: $0, origin, pool) }) else {
                        put(subscriptions, kind, unchanged)
                        slot.data.removeAll()
                        return slot.failNoServer()
                    }
                    let connection = pushConnection(subscriptions, server)
                    parts.append((connection, name))
                    list.append(RedisSubscriptions.Entry(name: name, connection: connection))
                    if indexed { positions[name] = list.count - 1 }
                    live += 1
                }
            } else if !subscribing, let present {
                // To where it was subscribed.
                if let connection = list[present].connection {
                    parts.append((connection, name))
                    if kind == .shard { subscriptions.unsubscribing.append(RedisSubscriptions.Entry(name: name, connection: connection)) }
                } else {
                    for server in pool.servers.indices { parts.append((pushConnection(subscriptions, server), name)) }
                }
                if removed.isEmpty { removed = [Bool](repeating: false, count: list.count) }
                removed[present] = true
                if indexed { positions[name] = nil }
                live -= 1
            }
            slot.data.appendArrayHeader(3)
            slot.data.appendBulk(command.name)
            name.withUnsafeBytes { slot.data.appendBulk($0) }
            let others = kind == .shard ? 0 : kind == .pattern ? subscriptions.channels.count : subscriptions.patterns.count
            slot.data.appendInteger(others + live)
        }
        if !removed.isEmpty {
            list = list.indices.filter { !removed[$0] }.map { list[$0] }
            removed = []
        }
        put(subscriptions, kind, list)
        pool.stats.subscriptionChanges.add(parts.count)
        // The confirmations are written already: the parts only have to succeed.
        var split = ReplySplit(slot, mergedBy: .prepared(PreparedReply()))
        // One command per name: a server answers a command it refuses (`-BUSY`, `-NOPERM`) with
        // one error whatever the names, so each answer must stand for one request. (A message
        // that comes between two of a request's confirmations stays behind them:
        // `ServerConnection.lastAnsweredSlot`.)
        for (connection, name) in parts {
            let output = connection.requestBuffer()
            RespEncoder.arrayHeader(2, into: output)
            RespEncoder.bulk(command.name, into: output)
            name.withUnsafeBytes { RespEncoder.bulk($0, into: output) }
            connection.enqueue(slot: slot, part: split.server(Int32(connection.serverRuntime.index)), framing: .line)
        }
        pingPushConnections(subscriptions, except: parts, slot, &split)
        split.close()
    }

    /// A PING through each of the client's push connections that the request does not use
    /// otherwise, as a part of `split`: the request is answered once every push connection has
    /// answered something sent after it, so every message those connections carried before
    /// leaves ahead of the answer (`ReplyOwner.pushMessage`), as from one Redis. Without it a
    /// PING answered by Tern, or a confirmation from another server, overtook messages already
    /// published (redis-py's `listen()` then ended at the last unsubscribe before yielding a
    /// message published ahead of it).
    private func pingPushConnections(_ subscriptions: RedisSubscriptions, except parts: [(connection: ServerConnection, name: [UInt8])],
                                     _ slot: ReplySlot, _ split: inout ReplySplit) {
        for connection in subscriptions.connections.values where !parts.contains(where: { $0.connection === connection }) {
            RespEncoder.command("PING", into: connection.requestBuffer())
            // Its answer and failure are not the reply (`ReplyPart.isBarrier`: a busy server's
            // `-BUSY` would have been, for a subscription made elsewhere), and it has no
            // deadline: a push connection that timed out would close its subscriber.
            connection.enqueue(slot: slot, part: split.barrier(Int32(connection.serverRuntime.index)), framing: .line, blockFor: nil)
        }
    }

    /// The server a channel (or a shard channel, or a cluster pool's pattern) is subscribed on:
    /// placed by its name, or by the key a keyspace notification channel names.
    private static func placement(of name: UnsafeRawBufferPointer, _ origin: RedisChannelOrigin, _ pool: PoolRuntime) -> Int? {
        if case let .key(range) = origin { return pool.serverIndex(forKey: UnsafeRawBufferPointer(rebasing: name[range])) }
        return pool.serverIndex(forKey: name)
    }

    /// The list of `kind`, taken out of `subscriptions` while it changes (no copy on write):
    /// `put` gives it back.
    private func take(_ subscriptions: RedisSubscriptions, _ kind: SubscriptionKind) -> [RedisSubscriptions.Entry] {
        var list: [RedisSubscriptions.Entry] = []
        switch kind {
        case .channel: swap(&list, &subscriptions.channels)
        case .pattern: swap(&list, &subscriptions.patterns)
        case .shard: swap(&list, &subscriptions.shardChannels)
        }
        return list
    }

    private func put(_ subscriptions: RedisSubscriptions, _ kind: SubscriptionKind, _ list: [RedisSubscriptions.Entry]) {
        switch kind {
        case .channel: subscriptions.channels = list
        case .pattern: subscriptions.patterns = list
        case .shard: subscriptions.shardChannels = list
        }
    }

    private func pushConnection(_ subscriptions: RedisSubscriptions, _ server: Int) -> ServerConnection {
        if let connection = subscriptions.connections[server] { return connection }
        let connection = pool.servers[server].openPushConnection(for: self)
        subscriptions.connections[server] = connection
        return connection
    }

    /// In subscribed mode (RESP2), only these commands are allowed, as in Redis.
    func refuseWhileSubscribed(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) -> Bool {
        guard let subscriptions = session.subscriptions, subscriptions.isSubscribed else { return false }
        if command.routing == .pubsub, !command.isNamed("pubsub") { return false }
        if command.isNamed("quit") || command.isNamed("reset") { return false }
        if command.isNamed("ping") {
            // (Redis's arity error, as outside subscribed mode: `PING a b` was answered `pong a`.)
            guard session.arguments.count <= 2 else {
                slot.complete(with: "-ERR wrong number of arguments for 'ping' command\r\n" as StaticString)
                return true
            }
            // PING answers as a message-shaped array while subscribed, once the push
            // connections have passed on the messages sent before it.
            slot.data.appendArrayHeader(2)
            slot.data.appendBulk("pong")
            if session.arguments.count > 1 {
                session.arguments.withArgument(1, in: frame) { slot.data.appendBulk($0) }
            } else {
                slot.data.appendBulk("")
            }
            var split = ReplySplit(slot, mergedBy: .prepared(PreparedReply()))
            pingPushConnections(subscriptions, except: [], slot, &split)
            split.close()
            return true
        }
        // A subcommand Redis does not know is refused as such, as Redis looks it up first.
        if let unknown = RedisErrorText.unknownSubcommandError(command.name, session.arguments, in: frame) {
            unknown.withUnsafeBytes { slot.data.append($0) }
            slot.complete(with: "" as StaticString)
            return true
        }
        slot.complete(with: "-ERR Can't execute '\(RedisErrorText.fullName(command.name, session.arguments, in: frame))': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n")
        return true
    }

    /// PUBSUB CHANNELS|SHARDCHANNELS [pattern] (union over servers), NUMSUB|SHARDNUMSUB ch…
    /// (summed by channel; the largest count for a key-event channel, on every server), NUMPAT
    /// (one server's: every pattern subscription is on every server; a Redis Cluster pool sums
    /// its nodes, one pattern each, but a `__key…` pattern once per node).
    private func pubsubInfo(_ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        let arguments = session.arguments
        if arguments.argument(1, in: frame, equals: "channels") || arguments.argument(1, in: frame, equals: "shardchannels") {
            toEveryServer(frame, session, slot, sink: .union(RespUnion()))
        } else if arguments.argument(1, in: frame, equals: "numsub") || arguments.argument(1, in: frame, equals: "shardnumsub") {
            toEveryServer(frame, session, slot, sink: .pairSum(RespPairSum()))
        } else if arguments.argument(1, in: frame, equals: "numpat") {
            // (A cluster pool puts each pattern on one node: the counts are summed.)
            toEveryServer(frame, session, slot, sink: pool.isCluster ? .sum(IntegerSum()) : .first(FirstReply()))
        } else if let unknown = RedisErrorText.unknownSubcommandError("pubsub", arguments, in: frame) {
            // Redis's own text, which a client probing for a feature reads (pub/sub sweep 33).
            unknown.withUnsafeBytes { slot.data.append($0) }
            slot.complete(with: "" as StaticString)
        } else if arguments.argument(1, in: frame, equals: "help") {
            // The servers' own help text (every server gives the same).
            toEveryServer(frame, session, slot, sink: .first(FirstReply()))
        } else {
            slot.complete(with: "-ERR wrong number of arguments for 'pubsub' command\r\n" as StaticString)
        }
    }

    /// The placement changed (a reload, or a server ejected or back: `PoolRuntime.update`,
    /// `RoutingLoop.placementChanged`). The push connections are filed under their servers'
    /// new positions (subscribers of a removed server were closed with its push connections
    /// already). If a channel is now placed on another server than the one it was subscribed
    /// on, or a pattern is not subscribed on some server (one just added), messages would be
    /// missed silently: the client is closed instead, as when a push connection fails, and
    /// subscribes again when it reconnects. A Redis Cluster pool's subscribers are re-filed and
    /// closed only for keyspace notification channels (nodes do not pass those on): the cluster
    /// passes every PUBLISH to all its nodes, and tells a shard channel's subscribers itself
    /// when its slot moves (`shardChannelLeft`); a `random` pool places nothing. Returns whether
    /// it closed the client.
    func followPlacement() -> Bool {
        guard !isClosed, let subscriptions = redisExtras?.subscriptions else { return false }
        var byPosition: [Int: ServerConnection] = [:]
        for connection in subscriptions.connections.values { byPosition[connection.serverRuntime.index] = connection }
        subscriptions.connections = byPosition
        func moved(_ channel: RedisSubscriptions.Entry, _ kind: SubscriptionKind) -> Bool {
            guard let connection = channel.connection else { return false }
            return channel.name.withUnsafeBytes { name in
                let origin = kind == .channel ? RedisChannelOrigin(channel: name) : .name
                let key = if case let .key(range) = origin { UnsafeRawBufferPointer(rebasing: name[range]) } else { name }
                return pool.serverIndexUncounted(forKey: key).map { pool.servers[$0] } !== connection.serverRuntime
            }
        }
        let everyServer = pool.servers.indices.allSatisfy { byPosition[$0] != nil }
        if pool.isCluster {
            // Keyspace notifications stay on their node: a key's channel whose slot moved, or a
            // key-event channel or `__key…` pattern missing a node, would miss them.
            let keyspaceMissed = subscriptions.channels.contains { channel in
                channel.connection == nil ? !everyServer : channel.name.withUnsafeBytes { RedisChannelOrigin(channel: $0) } != .name && moved(channel, .channel)
            } || !everyServer && subscriptions.patterns.contains { $0.connection == nil }
            if keyspaceMissed { close() }
            return keyspaceMissed
        }
        // Patterns and key-event channels (subscribed with no one connection) are on every server.
        let needsEveryServer = !subscriptions.patterns.isEmpty || subscriptions.channels.contains { $0.connection == nil }
        let patternsEverywhere = !needsEveryServer || everyServer
        let channelMoved = pool.config.distribution != .random
            && (subscriptions.channels.contains { moved($0, .channel) } || subscriptions.shardChannels.contains { moved($0, .shard) })
        guard patternsEverywhere, !channelMoved else {
            close()
            return true
        }
        return false
    }

    /// Redis Cluster tells a shard channel's subscribers when the channel's slot leaves the node
    /// (`sunsubscribe <channel> <count>`, unasked). An `sunsubscribe` frame on push connection
    /// `connection` is:
    /// - the answer to the client's own SUNSUBSCRIBE while one of that channel is on its way
    ///   there (`unsubscribing`; the reply path pairs it with its request);
    /// - else that notice, when the client has the channel subscribed on `connection`: the
    ///   channel is forgotten, and the client gets the notice with its own count, as one Redis
    ///   would send it (clients such as redis-py subscribe again, which reaches the slot's new
    ///   master);
    /// - else a stray: a notice that crossed the client's own SUNSUBSCRIBE of the channel, whose
    ///   answer Redis sends as well. Dropped (true), never paired with another request.
    func shardChannelLeft(_ frame: UnsafeRawBufferPointer, on connection: ObjectIdentifier) -> Bool {
        guard let subscriptions = redis?.subscriptions, let name = Self.channel(in: frame, after: "*3\r\n$12\r\nsunsubscribe\r\n") else { return false }
        let named = { (entry: RedisSubscriptions.Entry) in Self.entry(entry, is: name, on: connection) }
        if let asked = subscriptions.unsubscribing.firstIndex(where: named) {
            subscriptions.unsubscribing.remove(at: asked)
            return false
        }
        guard let index = subscriptions.shardChannels.firstIndex(where: named) else { return true }
        subscriptions.shardChannels.remove(at: index)
        if !subscriptions.isSubscribed { pool.stats.subscribedClients.add(-1) }
        let slot = newSlot()
        slot.data.appendArrayHeader(3)
        slot.data.appendBulk("sunsubscribe")
        slot.data.appendBulk(name)
        slot.data.appendInteger(subscriptions.shardChannels.count)
        slot.complete(with: "" as StaticString)
        return true
    }

    /// `SSUBSCRIBE ch` answered `-MOVED slot node` (the channel's slot moved after Tern placed
    /// it; push connections send one channel per request): the channel is subscribed on this
    /// client's push connection to the node named instead, and the confirmation waits for that
    /// node, so that the client never sees the redirect and the subscription is where messages
    /// arrive. A node this worker does not know yet (its map is being refreshed), a channel
    /// redirected too often, or an `-ASK`/`-TRYAGAIN` (`redirect` nil) gets the error, and the
    /// channel is forgotten: the client was told it is not subscribed (before, it stayed listed
    /// on the node that refused it).
    ///
    /// `SUNSUBSCRIBE ch` answered with a redirect: the slot left that node, which dropped the
    /// subscription itself (its notice crossed the request). The client is not subscribed, as
    /// it asked: it gets its confirmation, and the unsubscribe is no longer awaited.
    func shardSubscribeMoved(_ request: UnsafeRawBufferPointer, to redirect: ClusterRedirect?, follow: Bool, redirects: UInt8, deadline: Double,
                             slot: ReplySlot, part: Int32, on connection: ObjectIdentifier) -> Bool {
        guard let subscriptions = redis?.subscriptions else { return false }
        let subscribed = Self.channel(in: request, after: "*2\r\n$10\r\nssubscribe\r\n")
        guard let name = subscribed ?? Self.channel(in: request, after: "*2\r\n$12\r\nsunsubscribe\r\n") else { return false }
        let named = { (entry: RedisSubscriptions.Entry) in Self.entry(entry, is: name, on: connection) }
        if subscribed == nil {
            guard let asked = subscriptions.unsubscribing.firstIndex(where: named) else { return false }
            subscriptions.unsubscribing.remove(at: asked)
            // Any reply that is not an error completes the part with the written confirmation.
            _ = slot.deliver(part: part, reply: UnsafeRawBufferPointer(start: nil, count: 0), isError: false)
            return true
        }
        guard let index = subscriptions.shardChannels.firstIndex(where: named) else { return false }
        guard follow, deadline > worker.now, let redirect, let server = pool.serverIndex(named: redirect.target) else {
            subscriptions.shardChannels.remove(at: index)
            if !subscriptions.isSubscribed { pool.stats.subscribedClients.add(-1) }
            return false
        }
        let target = pushConnection(subscriptions, server)
        subscriptions.shardChannels[index] = RedisSubscriptions.Entry(name: subscriptions.shardChannels[index].name, connection: target)
        target.resend(RedirectedRequest(bytes: Array(request), error: [], slot: slot, part: part, redirects: redirects, clientIndex: self.index,
                                        deadline: deadline), asking: false)
        return true
    }

    /// The channel of a frame that starts with `head` (a command or a notice with its name,
    /// `*N\r\n$n\r\nname\r\n`), followed by the channel as a bulk string; nil otherwise.
    private static func channel(in frame: UnsafeRawBufferPointer, after head: StaticString) -> UnsafeRawBufferPointer? {
        let count = head.utf8CodeUnitCount
        guard frame.count > count, memcmp(frame.baseAddress!, head.utf8Start, count) == 0,
              case let .bulk(range) = RespReply.classify(UnsafeRawBufferPointer(rebasing: frame[count...])) else { return nil }
        return UnsafeRawBufferPointer(rebasing: frame[(count + range.lowerBound)..<(count + range.upperBound)])
    }

    /// Whether `entry` is channel `name` subscribed on push connection `connection`.
    private static func entry(_ entry: RedisSubscriptions.Entry, is name: UnsafeRawBufferPointer, on connection: ObjectIdentifier) -> Bool {
        entry.connection.map(ObjectIdentifier.init) == connection && entry.name.elementsEqual(name)
    }

    /// The client left, or RESET: its push connections close (Redis drops its subscriptions).
    func endSubscriptions() {
        guard let session = redis, let subscriptions = session.subscriptions else { return }
        session.subscriptions = nil
        if subscriptions.isSubscribed { pool.stats.subscribedClients.add(-1) }
        // A push connection's server is alive while the connection is: a server that leaves
        // closes its push connections (and their clients) first.
        for connection in subscriptions.connections.values { connection.serverRuntime.closePushConnection(connection) }
    }
}
