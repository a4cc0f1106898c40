# Pipelined memcached multi-gets for bench/allocations.sh (and callgrind runs): N requests of
# 4 keys (three stored, one missing), 16 in flight.   multiget.py <port> <requests>
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
# Seed keys.
for i in range(64):
    s.sendall(b"set k%d 0 0 32\r\n%s\r\n" % (i, b"x" * 32))
    buf = b""
    while not buf.endswith(b"\r\n"): buf += s.recv(100)
done = 0
while done < n:
    batch = min(16, n - done)
    req = b"".join(b"get k%d k%d k%d k%d\r\n" % ((done+j) % 64, (done+j+7) % 64, (done+j+13) % 64, 100 + j) for j in range(batch))
    s.sendall(req)
    ends = 0; buf = b""
    while ends < batch:
        chunk = s.recv(65536)
        if not chunk: raise SystemExit("closed")
        buf += chunk
        ends = buf.count(b"END\r\n")
    done += batch
print("ok", done)
