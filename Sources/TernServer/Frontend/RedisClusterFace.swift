#if canImport(Glibc)
import Glibc
#endif
import TernCore

/// Cluster-aware clients (redis-py `RedisCluster`, Jedis/Lettuce cluster mode, go-redis
/// `ClusterClient`) refuse a server whose cluster mode is off. To them every Redis pool is a
/// one-node cluster that owns all 16384 slots at Tern's own address (or `announce:`), so an
/// application moves between a real cluster and Tern without a code change; the pool still
/// spreads keys over its servers behind that one node.
extension ClientConnection {
    /// The address cluster clients are told to connect to: `announce`, else the listen address
    /// (a wildcard host is announced as 127.0.0.1; set `announce` where clients connect from
    /// elsewhere).
    var announcedAddress: (host: String, port: Int) {
        if let announce = pool.config.announce { return announce }
        switch pool.config.listen {
        case let .tcp(host, port):
            return (host == "0.0.0.0" || host == "::" || host == "*" ? "127.0.0.1" : host, port)
        case .unix:
            return ("127.0.0.1", 0)
        }
    }

    /// A stable 40-hex-digit node id for this pool's node.
    var clusterNodeID: String {
        let address = announcedAddress
        let digest = MD5.digest(Array("tern:\(pool.config.name):\(address.host):\(address.port)".utf8))
        let words = [digest.a, digest.b, digest.c, digest.d, digest.a ^ digest.c]
        return words.map { word in
            let hex = String(word, radix: 16)
            return String(repeating: "0", count: 8 - hex.count) + hex
        }.joined()
    }

    func cluster(_ arguments: RespArguments, _ frame: UnsafeRawBufferPointer, _ slot: ReplySlot) {
        let (host, port) = announcedAddress
        let id = clusterNodeID
        let reply = slot.data
        func subcommand(_ word: StaticString) -> Bool { arguments.argument(1, in: frame, equals: word) }
        if subcommand("slots") {
            reply.appendArrayHeader(1)
            reply.appendArrayHeader(3)
            reply.appendInteger(0)
            reply.appendInteger(16383)
            reply.appendArrayHeader(4)
            reply.appendBulk(host)
            reply.appendInteger(port)
            reply.appendBulk(id)
            reply.appendArrayHeader(0)
        } else if subcommand("shards") {
            reply.appendArrayHeader(1)
            reply.appendArrayHeader(4)
            reply.appendBulk("slots")
            reply.appendArrayHeader(2)
            reply.appendInteger(0)
            reply.appendInteger(16383)
            reply.appendBulk("nodes")
            reply.appendArrayHeader(1)
            reply.appendArrayHeader(14)
            reply.appendBulk("id"); reply.appendBulk(id)
            reply.appendBulk("port"); reply.appendInteger(port)
            reply.appendBulk("ip"); reply.appendBulk(host)
            reply.appendBulk("endpoint"); reply.appendBulk(host)
            reply.appendBulk("role"); reply.appendBulk("master")
            reply.appendBulk("replication-offset"); reply.appendInteger(0)
            reply.appendBulk("health"); reply.appendBulk("online")
        } else if subcommand("nodes") {
            reply.appendBulk("\(id) \(host):\(port)@\(port + 10000) myself,master - 0 0 1 connected 0-16383\n")
        } else if subcommand("info") {
            reply.appendBulk("cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\ncluster_slots_pfail:0\r\n"
                + "cluster_slots_fail:0\r\ncluster_known_nodes:1\r\ncluster_size:1\r\ncluster_current_epoch:1\r\ncluster_my_epoch:1\r\n"
                + "cluster_stats_messages_sent:0\r\ncluster_stats_messages_received:0\r\ntotal_cluster_links_buffer_limit_exceeded:0\r\n")
        } else if subcommand("myid") {
            reply.appendBulk(id)
        } else if subcommand("keyslot"), arguments.count == 3 {
            reply.appendInteger(arguments.withArgument(2, in: frame) { hashSlot($0) })
        } else {
            return refuseSubcommand("cluster", arguments, frame, slot)
        }
        slot.complete(with: "" as StaticString)
    }
}
