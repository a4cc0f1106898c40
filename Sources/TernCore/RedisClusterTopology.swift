// Redis Cluster backends (`distribution: redis_cluster`): the slot map a `CLUSTER SLOTS` reply
// describes, and the `-MOVED`/`-ASK` redirections a node answers with. Pure: bytes in, facts
// out. The map is read off the request path (see TernServer's `ClusterDiscovery`); redirect
// errors are classified on a backend connection only when a reply is an error.

/// A RESP2 value decoded whole. For Tern's own control-plane exchanges (a `CLUSTER SLOTS`
/// reply), never for client traffic, which is framed in place by `RespReplyParser`.
public indirect enum RespValue: Sendable, Equatable {
    case simple(String)
    case error(String)
    case integer(Int)
    case bulk([UInt8]?)
    case array([RespValue]?)

    /// The value at the start of `bytes` and its length; nil while incomplete or when invalid
    /// (nesting deeper than `maxDepth`, a bad length).
    public static func decode(_ bytes: [UInt8], maxDepth: Int = 16) -> (value: RespValue, length: Int)? {
        var position = 0
        guard let value = decode(bytes, &position, depth: maxDepth) else { return nil }
        return (value, position)
    }

    private static func decode(_ bytes: [UInt8], _ position: inout Int, depth: Int) -> RespValue? {
        guard depth > 0, position < bytes.count else { return nil }
        let kind = bytes[position]
        guard let line = readLine(bytes, &position) else { return nil }
        switch kind {
        case UInt8(ascii: "+"): return .simple(line)
        case UInt8(ascii: "-"): return .error(line)
        case UInt8(ascii: ":"): return Int(line).map { .integer($0) }
        case UInt8(ascii: "$"):
            guard let length = Int(line), length >= -1 else { return nil }
            if length == -1 { return .bulk(nil) }
            guard position + length + 2 <= bytes.count else { return nil }
            let value = Array(bytes[position..<(position + length)])
            position += length + 2
            return .bulk(value)
        case UInt8(ascii: "*"):
            guard let count = Int(line), count >= -1, count <= 1 << 20 else { return nil }
            if count == -1 { return .array(nil) }
            var elements: [RespValue] = []
            elements.reserveCapacity(count)
            for _ in 0..<count {
                guard let element = decode(bytes, &position, depth: depth - 1) else { return nil }
                elements.append(element)
            }
            return .array(elements)
        default:
            return nil
        }
    }

    /// The text after the type byte up to CRLF; `position` moves past the CRLF.
    private static func readLine(_ bytes: [UInt8], _ position: inout Int) -> String? {
        var end = position + 1
        while end + 1 < bytes.count, !(bytes[end] == 0x0d && bytes[end + 1] == 0x0a) { end += 1 }
        guard end + 1 < bytes.count else { return nil }
        let text = String(decoding: bytes[(position + 1)..<end], as: UTF8.self)
        position = end + 2
        return text
    }

    /// A bulk or simple string's text.
    public var text: String? {
        switch self {
        case let .bulk(bytes?): return String(decoding: bytes, as: UTF8.self)
        case let .simple(text): return text
        default: return nil
        }
    }

    public var integer: Int? {
        if case let .integer(value) = self { return value }
        return nil
    }
}

/// One node of a cluster as `CLUSTER SLOTS` names it.
public struct ClusterNode: Sendable, Equatable, Hashable {
    public var host: String
    public var port: Int
    public var id: String

    public init(host: String, port: Int, id: String = "") {
        self.host = host
        self.port = port
        self.id = id
    }

    /// `host:port` as Redis writes it in `-MOVED`/`-ASK` (an IPv6 host unbracketed): also the
    /// node's server name in the pool, so a redirect's target is found by name.
    public var name: String { "\(host):\(port)" }
}

/// Which master serves each of the 16384 slots, and the replicas of each master.
public struct ClusterSlotMap: Sendable, Equatable {
    /// Masters that serve at least one slot, and those `addingSlotlessMasters` adds, ordered by name.
    public var masters: [ClusterNode]
    /// The replicas of each master (same order as `masters`).
    public var replicas: [[ClusterNode]]
    /// The master (a position in `masters`) of every slot; -1 for a slot no node serves.
    public var slotMasters: [Int32]

    public init(masters: [ClusterNode], replicas: [[ClusterNode]], slotMasters: [Int32]) {
        self.masters = masters
        self.replicas = replicas
        self.slotMasters = slotMasters
    }

    /// Slots some master serves.
    public var assignedSlots: Int { slotMasters.reduce(0) { $0 + ($1 >= 0 ? 1 : 0) } }

    /// Masters and replicas.
    public var nodeCount: Int { masters.count + replicas.reduce(0) { $0 + $1.count } }

    /// Every node, masters serving slots first, masters serving none (`addingSlotlessMasters`)
    /// last: where the next discovery asks (a new node's view of the slots settles last).
    public var allNodes: [ClusterNode] {
        var serving = [Bool](repeating: false, count: masters.count)
        for master in slotMasters where master >= 0 { serving[Int(master)] = true }
        return masters.indices.filter { serving[$0] }.map { masters[$0] } + replicas.flatMap { $0 }
            + masters.indices.filter { !serving[$0] }.map { masters[$0] }
    }

    /// The map from a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, …], [replica …]…]…]`.
    /// An empty host means "the address you asked" (`askedHost`). nil when the reply is an error
    /// or not shaped like one; a cluster serving no slot gives nil too (nothing to route to).
    public static func parse(clusterSlots reply: RespValue, askedHost: String) -> ClusterSlotMap? {
        guard case let .array(ranges?) = reply else { return nil }
        var masterIndex: [String: Int] = [:]
        var masters: [ClusterNode] = []
        var replicas: [[ClusterNode]] = []
        var ranges32: [(Int, Int, Int)] = []
        func node(_ value: RespValue) -> ClusterNode? {
            guard case let .array(fields?) = value, fields.count >= 2, var host = fields[0].text,
                  let port = fields[1].integer, (1...65535).contains(port) else { return nil }
            if host.isEmpty || host == "?" { host = askedHost }
            let id = fields.count >= 3 ? fields[2].text ?? "" : ""
            return ClusterNode(host: host, port: port, id: id)
        }
        for range in ranges {
            guard case let .array(fields?) = range, fields.count >= 3, let first = fields[0].integer, let last = fields[1].integer,
                  first >= 0, last < hashSlotCount, first <= last, let master = node(fields[2]) else { return nil }
            let index: Int
            if let known = masterIndex[master.name] {
                index = known
            } else {
                index = masters.count
                masterIndex[master.name] = index
                masters.append(master)
                replicas.append([])
            }
            for field in fields.dropFirst(3) {
                if let replica = node(field), !replicas[index].contains(where: { $0.name == replica.name }) { replicas[index].append(replica) }
            }
            ranges32.append((first, last, index))
        }
        guard !masters.isEmpty else { return nil }
        // Ordered by name, so that the same cluster always gives the same map.
        let order = masters.indices.sorted { masters[$0].name < masters[$1].name }
        var position = [Int](repeating: 0, count: masters.count)
        for (new, old) in order.enumerated() { position[old] = new }
        var slotMasters = [Int32](repeating: -1, count: hashSlotCount)
        for (first, last, index) in ranges32 {
            for slot in first...last { slotMasters[slot] = Int32(position[index]) }
        }
        return ClusterSlotMap(masters: order.map { masters[$0] }, replicas: order.map { replicas[$0].sorted { $0.name < $1.name } },
                              slotMasters: slotMasters)
    }

    /// The map with the masters named in `wanted` (`host:port`, as redirects name nodes) that
    /// `CLUSTER NODES` (its reply's text) lists as serving no slot: a node added to the cluster
    /// while its first slot migrates to it, which the migrating node names in `-ASK`. In the
    /// map it is a server with no slot, so the redirect is followed at once (a node outside the
    /// map can only be waited for). Only nodes a redirect named join: a node that is an empty
    /// master for a moment on its way to becoming a replica (`--cluster add-node
    /// --cluster-slave`, a failed master coming back) never receives a request. A node is named
    /// as `CLUSTER SLOTS` names the others: by its host name when the cluster announces those
    /// (`cluster-preferred-endpoint-type hostname`), else by its address (an empty one is
    /// `askedHost`). Masters stay ordered by name.
    ///
    /// `settled`: the names of `wanted` that no longer need a look, because `CLUSTER NODES`
    /// lists them otherwise (serving slots: in the map already; a replica, failed, handshaking,
    /// address-less or disconnected node). A name it does not list stays wanted (the node asked
    /// may not know the new one yet); `unlisted` holds those names, for the caller to give up
    /// on one that answers keep leaving out (a node that left the cluster).
    public func addingSlotlessMasters(clusterNodes text: String, askedHost: String,
                                      wanted: Set<String>) -> (map: ClusterSlotMap, settled: Set<String>, unlisted: Set<String>) {
        guard !wanted.isEmpty else { return (self, [], []) }
        struct Listed {
            var id: String
            var ip: String
            var hostname: String
            var port: Int
            var isSlotlessMaster: Bool
        }
        var listed: [Listed] = []
        for line in text.split(whereSeparator: \.isNewline) {
            // <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>…
            let fields = line.split(separator: " ")
            guard fields.count >= 8 else { continue }
            let address = fields[1].split(separator: ",", maxSplits: 1, omittingEmptySubsequences: false)
            let hostPort = address[0].split(separator: "@", maxSplits: 1, omittingEmptySubsequences: false)[0]
            guard let colon = hostPort.lastIndex(of: ":"), let port = Int(hostPort[hostPort.index(after: colon)...]),
                  (1...65535).contains(port) else { continue }
            var ip = String(hostPort[..<colon])
            if ip.isEmpty || ip == "?" { ip = askedHost }
            let flags = fields[2].split(separator: ",")
            let isSlotlessMaster = flags.contains("master") && !flags.contains("fail") && !flags.contains("fail?")
                && !flags.contains("handshake") && !flags.contains("noaddr") && fields[7] == "connected"
                && !fields.dropFirst(8).contains(where: { !$0.hasPrefix("[") })
            listed.append(Listed(id: String(fields[0]), ip: ip, hostname: address.count > 1 ? String(address[1]) : "",
                                 port: port, isSlotlessMaster: isSlotlessMaster))
        }
        let byID = Dictionary(listed.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        let usesHostnames = masters.contains { master in
            guard let node = byID[master.id] else { return false }
            return !node.hostname.isEmpty && node.hostname == master.host && node.ip != master.host
        }
        let known = Set(allNodes.map(\.name))
        var added: [ClusterNode] = []
        var settled: Set<String> = []
        var unlisted = wanted
        for node in listed {
            let named = ClusterNode(host: usesHostnames && !node.hostname.isEmpty ? node.hostname : node.ip, port: node.port, id: node.id)
            guard wanted.contains(named.name) else { continue }
            unlisted.remove(named.name)
            if node.isSlotlessMaster, !known.contains(named.name) {
                added.append(named)
            } else if !node.isSlotlessMaster {
                settled.insert(named.name)
            }
        }
        guard !added.isEmpty else { return (self, settled, unlisted) }
        let all = masters + added
        let allReplicas = replicas + added.map { _ in [ClusterNode]() }
        let order = all.indices.sorted { all[$0].name < all[$1].name }
        var position = [Int32](repeating: 0, count: all.count)
        for (new, old) in order.enumerated() { position[old] = Int32(new) }
        return (ClusterSlotMap(masters: order.map { all[$0] }, replicas: order.map { allReplicas[$0] },
                               slotMasters: slotMasters.map { $0 < 0 ? -1 : position[Int($0)] }), settled, unlisted)
    }

    /// The pool as workers route it: the masters are its servers (named `host:port`, weight 1),
    /// the slot map its `slotServers`, and with `read_from` the replicas its `replicaServers`.
    /// The seeds stay in the config file's pool.
    public func applied(to pool: PoolConfig) -> PoolConfig {
        var routed = pool
        routed.servers = masters.map { master in
            ServerConfig(address: .tcp(host: master.host, port: master.port), weight: 1, name: master.name, hasExplicitName: false, line: pool.line)
        }
        routed.slotServers = slotMasters
        if pool.readFrom != .master {
            routed.replicaServers = replicas.map { nodes in
                nodes.map { ServerConfig(address: .tcp(host: $0.host, port: $0.port), weight: 1, name: $0.name, hasExplicitName: false, line: pool.line) }
            }
        }
        return routed
    }
}

/// A `-MOVED slot host:port` or `-ASK slot host:port` error reply.
public struct ClusterRedirect: Sendable, Equatable {
    public var isAsk: Bool
    public var slot: Int
    /// `host:port`, as the node wrote it (see `ClusterNode.name`).
    public var target: String

    public init(isAsk: Bool, slot: Int, target: String) {
        self.isAsk = isAsk
        self.slot = slot
        self.target = target
    }

    /// `-TRYAGAIN …`: a multi-key request whose keys a slot migration has split between two
    /// nodes; the same request may succeed a moment later (`RespReply.tryAgain`).
    public static func isTryAgain(_ reply: UnsafeRawBufferPointer) -> Bool {
        RespReply.classify(reply) == .tryAgain
    }

    /// The redirect an error reply (bytes from `-` to CRLF included) names; nil for any other
    /// reply (`RespReply.moved` / `.ask`, with the address made a String).
    public static func parse(_ reply: UnsafeRawBufferPointer) -> ClusterRedirect? {
        switch RespReply.classify(reply) {
        case let .moved(slot, address):
            return ClusterRedirect(isAsk: false, slot: slot, target: String(decoding: UnsafeRawBufferPointer(rebasing: reply[address]), as: UTF8.self))
        case let .ask(slot, address):
            return ClusterRedirect(isAsk: true, slot: slot, target: String(decoding: UnsafeRawBufferPointer(rebasing: reply[address]), as: UTF8.self))
        default:
            return nil
        }
    }
}
