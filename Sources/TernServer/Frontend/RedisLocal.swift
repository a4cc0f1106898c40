#if canImport(Glibc)
import Glibc
#endif
import TernCore

/// Redis commands Tern answers itself, without a backend.
extension ClientConnection {
    func answerLocally(_ command: RedisCommand, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        let arguments = session.arguments
        let count = arguments.count
        func text(_ index: Int) -> String { arguments.argumentString(index, in: frame) }
        func bulk(_ index: Int) {
            arguments.withArgument(index, in: frame) { slot.data.appendBulk($0) }
            slot.complete(with: "" as StaticString)
        }
        switch command.name {
        case "ping":
            if count == 1 { slot.complete(with: "+PONG\r\n" as StaticString) } else if count == 2 { bulk(1) } else { wrongArity(command, slot) }
        case "echo":
            bulk(1)
        case "quit":
            slot.complete(with: "+OK\r\n" as StaticString)
            closeWhenDrained = true
        case "select":
            // (A canonical integer, as Redis reads it: `+0` and `00` are not database 0.)
            let database = arguments.withArgument(1, in: frame) { RedisAuthRequest.canonicalInteger($0) }
            if database == pool.config.redisDatabase {
                slot.complete(with: "+OK\r\n" as StaticString)
            } else if database == nil || database! < 0 {
                // Redis's errors for what no server would take (Redis commands sweep 31).
                slot.complete(with: database == nil ? "-ERR value is not an integer or out of range\r\n" as StaticString : "-ERR DB index is out of range\r\n")
            } else {
                slot.complete(with: "-ERR SELECT is not allowed: this pool serves database \(pool.config.redisDatabase)\r\n")
            }
        case "auth":
            // Redis's checks first (more than three arguments: a syntax error), then the password.
            let request = RedisAuthRequest.auth(arguments)
            guard case let .authenticate(user, password, _, _) = request else {
                if case let .error(text) = request { slot.complete(with: text + "\r\n") }
                return
            }
            guard pool.requiresAuth else {
                // As a Redis without a password: its `default` user takes any password when
                // named (`redis://default:pw@…` works), another user does not exist.
                guard let user else {
                    return slot.complete(with: "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n" as StaticString)
                }
                return slot.complete(with: Self.namesDefaultUser(arguments, user, frame) ? "+OK\r\n" as StaticString
                                     : "-WRONGPASS invalid username-password pair or user is disabled.\r\n")
            }
            if authenticate(user: user, password: password, arguments, frame, session) {
                slot.complete(with: "+OK\r\n" as StaticString)
            } else {
                slot.complete(with: "-WRONGPASS invalid username-password pair or user is disabled.\r\n" as StaticString)
            }
        case "hello":
            hello(arguments, frame, session, slot)
        case "client":
            client(arguments, frame, session, slot)
        case "command":
            commandInfo(arguments, frame, slot)
        case "role":
            // As `INFO replication` says: a master, with no replicas (libraries that check the
            // role of the node they were given ask this).
            slot.complete(with: "*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n" as StaticString)
        case "info":
            slot.data.appendBulk(infoText(sections: (1..<count).map { text($0).lowercased() }))
            slot.complete(with: "" as StaticString)
        case "slowlog":
            slowlog(arguments, frame, slot)
        case "script":
            if arguments.argument(1, in: frame, equals: "load") {
                toEveryServer(frame, session, slot, sink: .first(FirstReply()))
            } else if arguments.argument(1, in: frame, equals: "flush") {
                toEveryServer(frame, session, slot, sink: .allOK(AllOK(dialect: .resp)))
            } else if arguments.argument(1, in: frame, equals: "exists") {
                // Held where every server holds it (EVAL caches a script on one server only).
                toEveryServer(frame, session, slot, sink: .everyServerHas(EveryServerHas()))
            } else if arguments.argument(1, in: frame, equals: "kill"), count == 2 {
                killOnEveryServer(frame, session, slot)
            } else {
                refuseSubcommand("script", arguments, frame, slot)
            }
        case "keys":
            // Every server's keys (each key lives on one).
            toEveryServer(frame, session, slot, sink: .union(RespUnion(keepsRepeats: true)))
        case "scan":
            scan(arguments, frame, session, slot)
        case "function":
            // As SCRIPT: what changes functions reaches every server, so any server can list them.
            if arguments.argument(1, in: frame, equals: "load") {
                toEveryServer(frame, session, slot, sink: .first(FirstReply()))
            } else if arguments.argument(1, in: frame, equals: "delete") || arguments.argument(1, in: frame, equals: "flush")
                        || arguments.argument(1, in: frame, equals: "restore") {
                toEveryServer(frame, session, slot, sink: .allOK(AllOK(dialect: .resp)))
            } else if arguments.argument(1, in: frame, equals: "list") || arguments.argument(1, in: frame, equals: "dump") {
                forwardRedis(frame, session, slot, to: firstLiveServer())
            } else if arguments.argument(1, in: frame, equals: "kill"), count == 2 {
                killOnEveryServer(frame, session, slot)
            } else {
                refuseSubcommand("function", arguments, frame, slot)
            }
        case "cluster":
            cluster(arguments, frame, slot)
        case "acl":
            // ACL WHOAMI: the session's user (`default` on a pool without users).
            if arguments.argument(1, in: frame, equals: "whoami"), count == 2 {
                slot.data.appendBulk(session.user?.name ?? "default")
                slot.complete(with: "" as StaticString)
            } else {
                refuseSubcommand("acl", arguments, frame, slot)
            }
        case "readonly", "readwrite", "asking":
            // A cluster client's connection setup: a one-node cluster has nothing to change.
            slot.complete(with: "+OK\r\n" as StaticString)
        default:
            slot.complete(with: "-ERR unsupported command '\(command.name)'\r\n")
        }
    }

    /// SCRIPT KILL / FUNCTION KILL: to every live server, each on a dedicated connection of its
    /// own, returned once answered. The shared connections cannot carry it: a server runs a
    /// connection's requests in order, and the request running the script is ahead of it there
    /// (Redis answers everyone else `-BUSY … You can only call SCRIPT KILL`, which a client
    /// could not send through Tern before). A server whose dedicated connections are all leased
    /// answers that as its error.
    private func killOnEveryServer(_ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        guard pool.servers.contains(where: { !$0.isEjected }) else { return slot.failNoServer() }
        var split = ReplySplit(slot, mergedBy: .kill(KillReply()))
        for server in pool.servers where !server.isEjected {
            let part = split.server(Int32(server.index))
            guard let connection = server.leaseDedicated() else {
                slot.fail(part: part, reason: "all dedicated_connections to this server are in use")
                continue
            }
            // Set before the buffer opens the socket: no SELECT, never reused (`isScratch`).
            connection.isScratch = true
            writeRequest(frame, session.arguments, into: connection.requestBuffer())
            connection.enqueue(slot: slot, part: part, framing: .line)
            connection.returnWhenIdle = true
        }
        split.close()
    }

    /// SCAN cursor [MATCH p] [COUNT n] [TYPE t] over the pool's servers one after the other
    /// (`ScanCursor`): the cursor names the server and that server's cursor; the options go to
    /// the server unchanged.
    private func scan(_ arguments: RespArguments, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        let servers = pool.servers.count
        guard servers > 0, let decoded = arguments.withArgument(1, in: frame, { ScanCursor.decode($0, servers: servers) }) else {
            return slot.complete(with: "-ERR invalid cursor\r\n" as StaticString)
        }
        var server = decoded.server
        let (cursor, bits) = (decoded.cursor, decoded.bits)
        // A server not started yet is passed over while ejected (its keys are unreachable, as
        // for every other command); one ejected in the middle of its scan answers its error.
        if cursor == 0 {
            while server < servers, pool.servers[server].isEjected { server += 1 }
            if server == servers { return slot.complete(with: "*2\r\n$1\r\n0\r\n*0\r\n" as StaticString) }
        }
        var split = ReplySplit(slot, mergedBy: .scanCursor(ScanCursor(server: Int32(server), servers: Int32(servers), bits: Int32(bits))))
        let part = split.server(Int32(server))
        pool.withConnection(toServer: server, client: index) { connection in
            let output = connection.requestBuffer()
            RespEncoder.arrayHeader(arguments.count, into: output)
            RespEncoder.bulk("SCAN" as StaticString, into: output)
            RespEncoder.bulk(String(cursor), into: output)
            for argument in 2..<arguments.count { arguments.withArgument(argument, in: frame) { RespEncoder.bulk($0, into: output) } }
            connection.enqueue(slot: slot, part: part, framing: .line)
        }
        split.close()
    }

    private func wrongArity(_ command: RedisCommand, _ slot: ReplySlot) {
        slot.complete(with: "-ERR wrong number of arguments for '\(command.name)' command\r\n")
    }

    /// A subcommand of `container` Tern does not serve: Redis's own error when Redis does not
    /// know it either (clients probing for a feature match on it), else Tern's refusal.
    func refuseSubcommand(_ container: String, _ arguments: RespArguments, _ frame: UnsafeRawBufferPointer, _ slot: ReplySlot) {
        arguments.withArgument(1, in: frame) { subcommand in
            if RedisErrorText.isKnownSubcommand(container, subcommand) {
                slot.complete(with: "-ERR unsupported command '\(container) \(sanitizedWord(String(decoding: subcommand, as: UTF8.self)))'\r\n")
            } else {
                RedisErrorText.unknownSubcommand(container, subcommand).withUnsafeBytes { slot.data.append($0) }
                slot.complete(with: "" as StaticString)
            }
        }
    }

    private func sanitizedWord(_ text: String, keepingCase: Bool = false) -> String {
        String(text.prefix(64).map { $0.isASCII && ($0.isLetter || $0 == "-") ? (keepingCase ? $0 : Character($0.lowercased())) : "?" })
    }

    /// Checks a user name (argument `user`, or `default` when nil) and password against the
    /// pool's users: the password's SHA-256 compared in constant time with the user's, and a
    /// hash compared even for an unknown user. On success the session takes the user; on
    /// failure the failure is counted, logged (rate-limited, without names or passwords) and,
    /// at `maxAuthFailures` in a row, the client is closed once the reply is out.
    func authenticate(user: Int?, password: Int, _ arguments: RespArguments, _ frame: UnsafeRawBufferPointer, _ session: RedisSession) -> Bool {
        let found = arguments.withArgument(password, in: frame) { password in
            guard let user else { return pool.verify(user: nil, password: password) }
            return arguments.withArgument(user, in: frame) { pool.verify(user: $0, password: password) }
        }
        if let found {
            session.isAuthenticated = true
            session.user = found
            session.usersGeneration = pool.usersGeneration
            session.authFailures = 0
            return true
        }
        session.authFailures += 1
        authenticationFailed(failures: session.authFailures)
        return false
    }

    /// Argument `index` is the user name `default` (case-sensitive, as Redis's user names).
    private static func namesDefaultUser(_ arguments: RespArguments, _ index: Int, _ frame: UnsafeRawBufferPointer) -> Bool {
        arguments.withArgument(index, in: frame) { $0.elementsEqual("default".utf8) }
    }

    /// HELLO [protover [AUTH user pass] [SETNAME name]]: RESP2 only for now. The arguments are
    /// checked as Redis checks them (`RedisAuthRequest.hello`) before anything is authenticated
    /// or named, so a HELLO answered with an error changes nothing.
    private func hello(_ arguments: RespArguments, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        var setName: Int?
        switch RedisAuthRequest.hello(arguments, in: frame, highestVersion: 2) {
        case let .error(text):
            return slot.complete(with: text + "\r\n")
        case let .hello(_, name):
            setName = name
        case let .authenticate(user, password, _, name):
            // Without a password (as Redis's `default` user, `nopass`): any password for `default`.
            let accepted = pool.requiresAuth ? authenticate(user: user, password: password, arguments, frame, session)
                : user.map { Self.namesDefaultUser(arguments, $0, frame) } ?? false
            guard accepted else {
                return slot.complete(with: "-WRONGPASS invalid username-password pair or user is disabled.\r\n" as StaticString)
            }
            setName = name
        }
        if pool.requiresAuth, !session.isAuthenticated {
            return slot.complete(with: "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n" as StaticString)
        }
        if let setName {
            // Checked as CLIENT SETNAME checks it (after AUTH, as Redis does).
            let name = arguments.argumentString(setName, in: frame)
            guard Self.isClientAttribute(name) else {
                return slot.complete(with: "-ERR Client names cannot contain spaces, newlines or special characters.\r\n" as StaticString)
            }
            session.name = name.isEmpty ? nil : name
        }
        let reply = slot.data
        reply.appendArrayHeader(14)
        reply.appendBulk("server"); reply.appendBulk("redis")
        reply.appendBulk("version"); reply.appendBulk(redisCompatibleVersion)
        reply.appendBulk("proto"); reply.appendInteger(2)
        // The client's own id, as CLIENT ID answers it.
        reply.appendBulk("id"); reply.appendInteger(clientID)
        reply.appendBulk("mode"); reply.appendBulk("standalone")
        reply.appendBulk("role"); reply.appendBulk("master")
        reply.appendBulk("modules"); reply.appendArrayHeader(0)
        slot.complete(with: "" as StaticString)
    }

    /// CLIENT SETNAME/GETNAME/SETINFO/ID/INFO/REPLY, kept per client connection.
    private func client(_ arguments: RespArguments, _ frame: UnsafeRawBufferPointer, _ session: RedisSession, _ slot: ReplySlot) {
        let count = arguments.count
        // A subcommand Tern serves with the wrong number of arguments: Redis's arity error.
        for (name, arity) in [("setname", 3), ("getname", 2), ("setinfo", 4), ("id", 2), ("info", 2), ("reply", 3)] as [(StaticString, Int)]
            where arguments.argument(1, in: frame, equals: name) && count != arity {
            return slot.complete(with: "-ERR wrong number of arguments for 'client|\(name)' command\r\n")
        }
        if arguments.argument(1, in: frame, equals: "setname"), count == 3 {
            let name = arguments.argumentString(2, in: frame)
            guard Self.isClientAttribute(name) else {
                return slot.complete(with: "-ERR Client names cannot contain spaces, newlines or special characters.\r\n" as StaticString)
            }
            session.name = name.isEmpty ? nil : name
            slot.complete(with: "+OK\r\n" as StaticString)
        } else if arguments.argument(1, in: frame, equals: "getname"), count == 2 {
            if let name = session.name { slot.data.appendBulk(name) } else { slot.data.append("$-1\r\n" as StaticString) }
            slot.complete(with: "" as StaticString)
        } else if arguments.argument(1, in: frame, equals: "setinfo"), count == 4 {
            let isName = arguments.argument(2, in: frame, equals: "lib-name")
            guard isName || arguments.argument(2, in: frame, equals: "lib-ver") else {
                // Echoed as sent, printable ASCII only (no CR or LF may end the error early).
                let option = arguments.argumentString(2, in: frame).utf8.prefix(64).map { $0 > 0x20 && $0 < 0x7f ? $0 : UInt8(ascii: "?") }
                return slot.complete(with: "-ERR Unrecognized option '\(String(decoding: option, as: UTF8.self))'\r\n")
            }
            // As Redis: the CLIENT INFO line must split on spaces into its fields.
            let value = arguments.argumentString(3, in: frame)
            guard Self.isClientAttribute(value) else {
                return slot.complete(with: "-ERR \(isName ? "lib-name" : "lib-ver") cannot contain spaces, newlines or special characters.\r\n")
            }
            if isName { session.libraryName = value.isEmpty ? nil : value } else { session.libraryVersion = value.isEmpty ? nil : value }
            slot.complete(with: "+OK\r\n" as StaticString)
        } else if arguments.argument(1, in: frame, equals: "id"), count == 2 {
            slot.complete(with: ":\(clientID)\r\n")
        } else if arguments.argument(1, in: frame, equals: "info"), count == 2 {
            slot.data.appendBulk(clientInfoLine(session))
            slot.complete(with: "" as StaticString)
        } else if arguments.argument(1, in: frame, equals: "reply"), count == 3 {
            // As Redis: ON answers +OK (even as the command a SKIP dropped), OFF and SKIP answer
            // nothing, a SKIP while OFF changes nothing.
            if arguments.argument(2, in: frame, equals: "on") {
                redisReplyMode = .on
                slot.isSilent = false
                slot.complete(with: "+OK\r\n" as StaticString)
            } else if arguments.argument(2, in: frame, equals: "off") {
                redisReplyMode = .off
                slot.isSilent = true
                slot.complete(with: "" as StaticString)
            } else if arguments.argument(2, in: frame, equals: "skip") {
                if redisReplyMode != .off { redisReplyMode = .skipNext }
                slot.isSilent = true
                slot.complete(with: "" as StaticString)
            } else {
                slot.complete(with: "-ERR syntax error\r\n" as StaticString)
            }
        } else {
            refuseSubcommand("client", arguments, frame, slot)
        }
    }

    /// A client name or `SETINFO` value Redis accepts: printable ASCII without spaces, so that
    /// the CLIENT INFO line splits on spaces into its fields (empty clears it).
    static func isClientAttribute(_ text: String) -> Bool {
        !text.utf8.contains(where: { $0 <= 0x20 || $0 >= 0x7f })
    }

    /// CLIENT INFO: Redis's fields in Redis's order (client libraries parse them: redis-py's
    /// `client_info()` reads `age`, `omem`, `tot-mem` and the others as integers), with what
    /// Tern knows of this client. The memory fields are this connection's buffers in Tern
    /// (`argv-mem` 0: arguments are parsed into the worker's list); `watch` counts a WATCH in
    /// force as 1 (Tern does not count its keys); `age` is 0: Tern keeps no accept time per
    /// connection (an idle connection's bytes, issue #24).
    private func clientInfoLine(_ session: RedisSession) -> String {
        let subscriptions = session.subscriptions
        let transaction = session.transaction
        var flags = ""
        if transaction != nil { flags += "x" }
        if subscriptions?.isSubscribed == true { flags += "P" }
        if !session.blocked.isEmpty { flags += "b" }
        if flags.isEmpty { flags = "N" }
        let idle = max(0, Int(worker.now - lastActivity))
        let queued = partialRequestBytes
        let multiMemory = transaction?.commands.readableCount ?? 0
        let totalMemory = 192 + output.capacity + queued.capacity + multiMemory
        return "id=\(clientID) addr=\(peerText ?? SlowLog.peerAddress(descriptor)) laddr=\(SlowLog.peerAddress(descriptor, local: true)) "
            + "fd=\(descriptor) name=\(session.name ?? "") age=0 idle=\(idle) flags=\(flags) db=\(pool.config.redisDatabase) "
            + "sub=\(subscriptions?.channels.count ?? 0) psub=\(subscriptions?.patterns.count ?? 0) ssub=\(subscriptions?.shardChannels.count ?? 0) "
            + "multi=\(transaction.map { $0.count } ?? -1) watch=\(session.watch == nil ? 0 : 1) "
            + "qbuf=\(queued.count) qbuf-free=\(queued.capacity - queued.count) argv-mem=0 multi-mem=\(multiMemory) "
            + "rbs=\(queued.capacity) rbp=0 obl=0 oll=\(slots.count) omem=\(output.readableCount) tot-mem=\(totalMemory) "
            + "events=r cmd=client|info user=\(session.user?.name ?? "default") redir=-1 resp=2 "
            + "lib-name=\(session.libraryName ?? "") lib-ver=\(session.libraryVersion ?? "")\n"
    }

    /// COMMAND, COMMAND COUNT, COMMAND INFO name…, COMMAND DOCS [name…], COMMAND LIST.
    private func commandInfo(_ arguments: RespArguments, _ frame: UnsafeRawBufferPointer, _ slot: ReplySlot) {
        let reply = slot.data
        let table = RedisCommandTable.commands.filter { $0.routing != .unsupported }
        if arguments.count == 1 {
            reply.appendArrayHeader(table.count)
            for command in table { appendInfo(command, reply) }
        } else if arguments.argument(1, in: frame, equals: "count") {
            guard arguments.count == 2 else { return slot.complete(with: "-ERR wrong number of arguments for 'command|count' command\r\n" as StaticString) }
            reply.appendInteger(table.count)
        } else if arguments.argument(1, in: frame, equals: "info") {
            reply.appendArrayHeader(arguments.count - 2)
            for index in 2..<arguments.count {
                let command = arguments.withArgument(index, in: frame) { RedisCommandTable.lookup($0) }
                if let command, command.routing != .unsupported { appendInfo(command, reply) } else { reply.append("*-1\r\n" as StaticString) }
            }
        } else if arguments.argument(1, in: frame, equals: "docs") {
            // No documentation is served; an empty map lets redis-cli start.
            reply.appendArrayHeader(0)
        } else if arguments.argument(1, in: frame, equals: "list") {
            // COMMAND LIST [FILTERBY MODULE name | ACLCAT category | PATTERN pattern], as Redis
            // 7.0 answers it: an unknown category or any module lists nothing; a pattern is
            // matched ignoring case; anything else is a syntax error.
            let count = arguments.count
            guard count == 2 || count == 5 && arguments.argument(2, in: frame, equals: "filterby") else {
                return slot.complete(with: "-ERR syntax error\r\n" as StaticString)
            }
            var listed = table
            if count == 5 {
                let value = Array(arguments.argumentString(4, in: frame).utf8.map(asciiLower))
                if arguments.argument(3, in: frame, equals: "aclcat") {
                    let category = value == Array("all".utf8) ? nil : RedisCategories.named(String(decoding: value, as: UTF8.self))
                    listed = category.map { category in table.filter { !$0.categories.isDisjoint(with: category) } } ?? []
                } else if arguments.argument(3, in: frame, equals: "pattern") {
                    listed = table.filter { RedisGlob.matches(value, Array($0.name.utf8)) }
                } else if arguments.argument(3, in: frame, equals: "module") {
                    listed = []
                } else {
                    return slot.complete(with: "-ERR syntax error\r\n" as StaticString)
                }
            }
            reply.appendArrayHeader(listed.count)
            for command in listed { reply.appendBulk(command.name) }
        } else if arguments.argument(1, in: frame, equals: "getkeys") {
            // Redis's arity for COMMAND GETKEYS is -4: a command with no argument is an arity error.
            guard arguments.count >= 4 else { return slot.complete(with: "-ERR wrong number of arguments for 'command|getkeys' command\r\n" as StaticString) }
            // Cluster clients (redis-py RedisCluster) ask it for commands with movable keys.
            switch RedisKeyPositions.getKeys(arguments, in: frame) {
            case let .failure(error): return slot.complete(with: error.reply)
            case let .success(keys):
                reply.appendArrayHeader(keys.count)
                for index in keys { arguments.withArgument(index, in: frame) { reply.appendBulk($0) } }
            }
        } else {
            return refuseSubcommand("command", arguments, frame, slot)
        }
        slot.complete(with: "" as StaticString)
    }

    private func appendInfo(_ command: RedisCommand, _ reply: ByteBuffer) {
        reply.appendArrayHeader(10)
        reply.appendBulk(command.name)
        reply.appendInteger(command.arity)
        var first = 0, last = 0, step = 0
        switch command.keys {
        case let .range(f, l, s): (first, last, step) = (f, l, s)
        // Redis's legacy triple names the key ahead of numkeys (ZUNIONSTORE's destination).
        case let .counted(_, before) where before > 0: (first, last, step) = (before, before, 1)
        default: break
        }
        if let presented = command.presentedKeyRange { (first, last, step) = presented }
        // Redis 7.0's own flags, and a container's own categories (every command Tern serves
        // has an entry: RespCodecTests.testCommandTableIsConsistent checks).
        let presented = RedisCommandPresentation.byCommand[command.name]
        let flags = presented?.flags ?? []
        reply.appendArrayHeader(flags.count)
        for flag in flags { reply.append("+\(flag)\r\n") }
        reply.appendInteger(first)
        reply.appendInteger(last)
        reply.appendInteger(step)
        // ACL categories, as Redis 7 lists them (from the command table).
        let categories = presented?.categories ?? RedisCategories.names.filter { command.categories.contains($0.1) }.map { "@" + $0.0 }
        reply.appendArrayHeader(categories.count)
        for name in categories { reply.append("+\(name)\r\n") }
        for _ in 0..<3 { reply.appendArrayHeader(0) }
    }

    /// `# CPU` as Redis writes it, for Tern's own process (all its threads; children: none it
    /// waited for): seconds with six decimals, from `getrusage`.
    static func processCPU() -> [(String, String)] {
        func seconds(_ time: timeval) -> String {
            let micros = String(time.tv_usec)
            return "\(time.tv_sec)." + String(repeating: "0", count: max(0, 6 - micros.count)) + micros
        }
        var own = rusage(), children = rusage()
        getrusage(RUSAGE_SELF.rawValue, &own)
        getrusage(RUSAGE_CHILDREN.rawValue, &children)
        return [("used_cpu_sys", seconds(own.ru_stime)), ("used_cpu_user", seconds(own.ru_utime)),
                ("used_cpu_sys_children", seconds(children.ru_stime)), ("used_cpu_user_children", seconds(children.ru_utime))]
    }

    /// INFO [section …]: Tern's own figures and, aggregated over the pool's servers, the
    /// fields applications read from Redis (see `BackendInfo`).
    private func infoText(sections: [String]) -> String {
        let shared = pool.plan.shared
        let info = worker.processInfo
        let uptime = Int(time(nil)) - info.startTime
        let everything = sections.isEmpty || sections.contains { $0 == "all" || $0 == "everything" || $0 == "default" }
        func wanted(_ name: String) -> Bool { everything || sections.contains(name) }
        let backends = BackendInfo.aggregate(pool.plan)
        var text = ""
        func section(_ title: String, _ lines: [(String, String)]) {
            guard wanted(title.lowercased()) else { return }
            if !text.isEmpty { text += "\r\n" }
            text += "# \(title)\r\n"
            for (name, value) in lines { text += "\(name):\(value)\r\n" }
        }
        var port = 0
        if case let .tcp(_, listenPort) = pool.config.listen { port = listenPort }
        section("Server", [("redis_version", redisCompatibleVersion), ("tern_version", info.version), ("redis_mode", "standalone"),
                           ("process_id", String(getpid())), ("tcp_port", String(port)),
                           ("uptime_in_seconds", String(uptime)), ("uptime_in_days", String(uptime / 86400))])
        let sessions = pool.plan.sessionSummary
        section("Clients", [("connected_clients", String(shared.clientCount.load(ordering: .relaxed))),
                            ("blocked_clients", String(sessions.first { $0.0 == "blocked_clients" }?.1 ?? 0)),
                            ("maxclients", String(Self.maxClients(pool.config.clientConnections)))])
        section("Memory", backends.memory)
        // What monitors and client libraries check before using a server: Tern is a master
        // that is not loading (each backend's own role and loading are its own business).
        section("Persistence", [("loading", "0"), ("async_loading", "0")])
        section("Stats", [("total_connections_received", String(shared.totalConnections.load(ordering: .relaxed)))] + backends.stats
                    + (pool.plan.poolSummary + sessions).map { ($0.0, String($0.1)) })
        section("Replication", [("role", "master"), ("connected_slaves", "0")])
        if wanted("cpu") { section("CPU", Self.processCPU()) }
        section("Keyspace", backends.keyspace)
        section("Pools", [("pool", pool.config.name), ("servers", String(pool.servers.count)),
                          ("distribution", pool.config.distribution.rawValue), ("hash", pool.config.hash.rawValue)])
        section("Backends", backends.servers)
        if pool.isCluster {
            // redis_cluster backends: the slot map in use and the redirects followed.
            let cluster = shared.cluster
            let refreshed = cluster.refreshedAt.load(ordering: .relaxed)
            let lastError = cluster.lastError.withLock { $0 }
            section("Cluster", [("cluster_state", pool.clusterMapMissing ? "fail" : "ok")] + cluster.report().map { ($0.0, String($0.1)) }
                        + [("cluster_slot_map_age_seconds", refreshed == 0 ? "-1" : String(Int(time(nil)) - refreshed)),
                           ("cluster_nodes", pool.servers.map(\.name).joined(separator: ",")),
                           ("cluster_last_error", lastError.isEmpty ? "none" : String(lastError.prefix(200).map { $0 == "\r" || $0 == "\n" ? " " : $0 }))])
        }
        if pool.isSentinel {
            // sentinel: the masters' addresses in use and the failovers followed.
            let sentinel = shared.sentinel
            let current = sentinel.current.withLock { $0 }
            let lastError = sentinel.lastError.withLock { $0 }
            section("Sentinel", sentinel.report().map { ($0.0, String($0.1)) }
                        + pool.config.servers.enumerated().map { ("master\($0.offset)", "name=\($0.element.name),address=\(current[$0.element.name] ?? "unknown")") }
                        + [("sentinel_last_error", lastError.isEmpty ? "none" : String(lastError.prefix(200).map { $0 == "\r" || $0 == "\n" ? " " : $0 }))])
        }
        if pool.old != nil {
            section("Warmup", pool.warmupCounters.report().map { ($0.0, String($0.1)) })
        }
        // As Redis: in `all`, `everything` and by name, not in the default set. Tern's own
        // counts of its clients' commands (all workers), in Redis 7's fields; Tern does not
        // tell rejected and failed calls apart from the others.
        if sections.contains(where: { $0 == "commandstats" || $0 == "all" || $0 == "everything" }) {
            let tables = shared.commandStats
            var lines: [(String, String)] = []
            for row in 0..<CommandStats.rows {
                let calls = tables.reduce(0) { $0 + $1.requests(row) }
                guard calls > 0, let name = CommandStats.name(row, isRedis: true) else { continue }
                let usec = tables.reduce(0) { $0 + $1.latencySum(row) }
                // usec_per_call with two decimals, as Redis prints it.
                let hundredths = usec * 100 / calls
                let perCall = "\(hundredths / 100).\(hundredths % 100 < 10 ? "0" : "")\(hundredths % 100)"
                lines.append(("cmdstat_\(name)", "calls=\(calls),usec=\(usec),usec_per_call=\(perCall),rejected_calls=0,failed_calls=0"))
            }
            if !text.isEmpty { text += "\r\n" }
            text += "# Commandstats\r\n"
            for (name, value) in lines { text += "\(name):\(value)\r\n" }
        }
        return text
    }

    /// INFO's `maxclients`: the pool's `client_connections`, or without one (0, unlimited) what
    /// Redis reports for itself, the descriptor limit less the 32 it keeps for its own use. (0
    /// divided code that computes `connected_clients / maxclients`.)
    static func maxClients(_ configured: Int) -> Int {
        guard configured <= 0 else { return configured }
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 10_000 }
        return max(1, Int(clamping: limit.rlim_cur) - 32)
    }

    /// SLOWLOG GET [count] | LEN | RESET | HELP, over the pool's slow log (see `SlowLog`).
    /// Entries are Redis's six fields plus the server that answered.
    private func slowlog(_ arguments: RespArguments, _ frame: UnsafeRawBufferPointer, _ slot: ReplySlot) {
        let log = pool.slowLog
        let count = arguments.count
        let reply = slot.data
        // Redis 7.0's answers: a subcommand's own arity first, then GET's count (a canonical
        // integer, as `string2ll` reads it: `+1` and `01` are refused).
        for (name, arity) in [("len", 2), ("reset", 2), ("help", 2)] as [(StaticString, Int)]
            where arguments.argument(1, in: frame, equals: name) && count != arity {
            return slot.complete(with: "-ERR wrong number of arguments for 'slowlog|\(name)' command\r\n")
        }
        if arguments.argument(1, in: frame, equals: "get"), count <= 3 {
            var wanted = 10
            if count == 3 {
                guard let given = arguments.withArgument(2, in: frame, { RedisAuthRequest.canonicalInteger($0) }), given >= -1 else {
                    return slot.complete(with: "-ERR count should be greater than or equal to -1\r\n" as StaticString)
                }
                wanted = given
            }
            let entries = log.newest(wanted)
            reply.appendArrayHeader(entries.count)
            for entry in entries {
                reply.appendArrayHeader(7)
                reply.appendInteger(entry.id)
                reply.appendInteger(entry.time)
                reply.appendInteger(entry.microseconds)
                reply.appendArrayHeader(entry.arguments.count)
                for argument in entry.arguments { argument.withUnsafeBytes { reply.appendBulk($0) } }
                reply.appendBulk(entry.client)
                reply.appendBulk(entry.clientName)
                reply.appendBulk(entry.server)
            }
            slot.complete(with: "" as StaticString)
        } else if arguments.argument(1, in: frame, equals: "len"), count == 2 {
            slot.complete(with: ":\(log.count)\r\n")
        } else if arguments.argument(1, in: frame, equals: "reset"), count == 2 {
            log.reset()
            slot.complete(with: "+OK\r\n" as StaticString)
        } else if arguments.argument(1, in: frame, equals: "help"), count == 2 {
            let lines = ["SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                         "GET [<count>]", "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
                         "    Entries are made of:", "    id, timestamp, time in microseconds, arguments array, client IP and port,",
                         "    client name, and (Tern) the server that answered",
                         "LEN", "    Return the length of the slowlog.", "RESET", "    Reset the slowlog.", "HELP", "    Print this help."]
            reply.appendArrayHeader(lines.count)
            for line in lines { reply.append("+\(line)\r\n") }
            slot.complete(with: "" as StaticString)
        } else if arguments.argument(1, in: frame, equals: "get") {
            slot.complete(with: "-ERR unknown subcommand or wrong number of arguments for '\(sanitizedWord(arguments.argumentString(1, in: frame), keepingCase: true))'. Try SLOWLOG HELP.\r\n")
        } else {
            slot.complete(with: "-ERR unknown subcommand '\(sanitizedWord(arguments.argumentString(1, in: frame), keepingCase: true))'. Try SLOWLOG HELP.\r\n")
        }
    }
}

/// The Redis version Tern presents to clients that check it (HELLO, INFO).
let redisCompatibleVersion = "7.0.0"
