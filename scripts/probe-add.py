#!/usr/bin/env python3
"""Wall time and CPU of netd-cni ADD and DEL calls, and netd's CPU per ADD+DEL pair.

usage (root): scripts/probe-add.py BIN_DIR N_FILL N_SAMPLE
  e.g. scripts/probe-add.py target/dist 1000 40
  PROBE_PERF=/tmp/add.data scripts/probe-add.py target/dist 1000 200   # and profile the samples

Makes a private "host" netns with netd in it and one network, attaches N_FILL containers
(each a netns of its own, one published port), then times N_SAMPLE ADD/DEL pairs: wall time
from the runtime's side (this process enters the host netns and execs the plugin directly,
so no `ip netns exec` is counted) and the plugin's CPU from wait4(). Complements
scripts/bench.sh, which reports wall times only. Everything it makes is removed at the end,
on failure too; the machine's root network namespace is never touched."""
import ctypes, json, os, subprocess, sys, time, glob, statistics, shutil
libc = ctypes.CDLL(None, use_errno=True)
bins, nfill, nsample = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tag = f"pa{os.getpid()}"
host = f"{tag}h"
tmp = f"/tmp/{tag}"
os.makedirs(f"{tmp}/state"); os.makedirs(f"{tmp}/cni")
def sh(*a): subprocess.run(a, check=True)
sh("ip", "netns", "add", host)
conts = []
netd = None
try:
    sh("ip", "-n", host, "link", "set", "lo", "up")
    sh("ip", "netns", "exec", host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sock = f"{tmp}/sock"
    netd = subprocess.Popen(["ip", "netns", "exec", host, f"{bins}/netd", "--socket", sock,
        "--state-dir", f"{tmp}/state", "--cni-conf-dir", f"{tmp}/cni", "--table", "netd", "--log", "warn"])
    for _ in range(100):
        if os.path.exists(sock): break
        time.sleep(0.05)
    sh(f"{bins}/netctl", "--socket", sock, "network", "create", "pf", "--subnet", "10.77.0.0/18")
    cl = json.load(open(glob.glob(f"{tmp}/cni/*.conflist")[0]))
    conf = dict(cl["plugins"][0]); conf["name"] = cl["name"]; conf["cniVersion"] = cl["cniVersion"]
    fd = os.open(f"/run/netns/{host}", os.O_RDONLY)
    assert libc.setns(fd, 0x40000000) == 0
    # ip netns exec execs netd in place, so the pid is netd's
    def netd_cpu():
        f = open(f"/proc/{netd.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    def call(cmd, i, port):
        c = dict(conf); c["runtimeConfig"] = {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]}
        env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": f"{tag}c{i}", "CNI_NETNS": f"/run/netns/{tag}c{i}",
               "CNI_IFNAME": "eth0", "CNI_PATH": bins, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        t0 = time.perf_counter()
        p = subprocess.Popen([f"{bins}/netd-cni"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        p.stdin.write(json.dumps(c).encode()); p.stdin.close()
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        assert status == 0, out
        return wall * 1e3, (ru.ru_utime + ru.ru_stime) * 1e3
    def mk(i):
        sh("ip", "netns", "add", f"{tag}c{i}"); conts.append(f"{tag}c{i}")
    for i in range(nfill):
        mk(i); call("ADD", i, 20000 + i)
    res = {"ADD": [], "DEL": [], "ADDcpu": [], "DELcpu": []}
    # PROBE_PERF=FILE: a whole-machine `perf record -g` of the sample phase only (the fill is
    # left out), to read with `perf report -i FILE --comm netd` or `--comm netd-cni`.
    perf = None
    if os.environ.get("PROBE_PERF"):
        perf = subprocess.Popen(["perf", "record", "-a", "-g", "-q", "-o", os.environ["PROBE_PERF"]])
        time.sleep(1)
    c0 = netd_cpu()
    for j in range(nsample):
        i = nfill + j; mk(i)
        w, c = call("ADD", i, 30000 + j); res["ADD"].append(w); res["ADDcpu"].append(c)
        w, c = call("DEL", i, 30000 + j); res["DEL"].append(w); res["DELcpu"].append(c)
        # PROBE_GAP_MS: a pause after each DEL, so that netd's reaper has removed the veth
        # pair before the next ADD starts (to tell its kernel work apart from the ADD's).
        time.sleep(float(os.environ.get("PROBE_GAP_MS", "0")) / 1e3)
    c1 = netd_cpu()
    if perf:
        perf.send_signal(2); perf.wait()
    med = lambda v: statistics.median(v)
    print(f"{bins} N={nfill}: ADD wall p50 {med(res['ADD']):.2f} ms cpu p50 {med(res['ADDcpu']):.2f} ms | DEL wall p50 {med(res['DEL']):.2f} cpu p50 {med(res['DELcpu']):.2f} | netd cpu per ADD+DEL {(c1-c0)/nsample*1e3:.2f} ms (load {open('/proc/loadavg').read().split()[0]})")
finally:
    if netd: netd.terminate(); netd.wait()
    for c in conts: subprocess.run(["ip", "netns", "del", c])
    subprocess.run(["ip", "netns", "del", host])
    shutil.rmtree(tmp, ignore_errors=True)
