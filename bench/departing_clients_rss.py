#!/usr/bin/env python3
# RSS of a Tern whose memcached clients each send 50 gets and leave without reading (RST or FIN):
#   python3 bench/departing_clients_rss.py <tern binary> <threads> <clients> rst|fin
# Starts two memcached on 46411/46412 and Tern on 46410 (run from a scratch directory: writes t.yml).
import socket, struct, subprocess, sys, time, os
binary = sys.argv[1]; threads = sys.argv[2]; n = int(sys.argv[3]); rst = sys.argv[4] == "rst"
m1 = subprocess.Popen(["memcached", "-p", "46411", "-l", "127.0.0.1", "-U", "0", "-u", "root"])
m2 = subprocess.Popen(["memcached", "-p", "46412", "-l", "127.0.0.1", "-U", "0", "-u", "root"])
open("t.yml", "w").write("m:\n  listen: 127.0.0.1:46410\n  servers:\n   - 127.0.0.1:46411:1\n   - 127.0.0.1:46412:1\n")
t = subprocess.Popen([binary, "-c", "t.yml", "--threads", threads, "--no-stats"], stderr=subprocess.DEVNULL)
time.sleep(1)
def rss(): return int([l for l in open(f"/proc/{t.pid}/status").read().splitlines() if l.startswith("VmRSS")][0].split()[1]) // 1024
start = rss(); peak = start
for i in range(n):
    s = socket.socket(); s.connect(("127.0.0.1", 46410))
    s.sendall(b"get a\r\n" * 50)
    if rst: s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    if i % 100 == 0: peak = max(peak, rss())
after = [rss()]
for _ in range(6): time.sleep(1); after.append(rss())
print(f"{os.path.basename(binary)} threads {threads} {n} clients {'rst' if rst else 'fin'}: start {start} MB, peak {peak}, after 0..6 s {after}, fds {len(os.listdir(f'/proc/{t.pid}/fd'))}")
t.terminate(); t.wait(); m1.terminate(); m2.terminate(); m1.wait(); m2.wait()
