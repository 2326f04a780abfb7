#!/usr/bin/env python3
"""berth's side-by-side benchmark: berth (plain HTTP and TLS), CNCF distribution (Debian's docker-registry) and nginx
(static files with sendfile, the loopback limit), one after the other on loopback, each with a fresh data directory.

Run through benches/run.sh, which installs the tools, builds berth in release mode and cleans up. Only the standard
library is used. Every process started here is in its own process group and is killed on exit, on a signal and on the
overall deadline; every loop is bounded.

Environment (all optional):
  BENCH_RUN_DIR   where data directories, logs and the test blob go (run.sh makes one on tmpfs)
  BERTH_BIN       the berth binary (default target/release/berth)
  BENCH_QUICK=1   a smoke run: 64 MiB blob, 500 tags/repositories, 2 s load phases
  BENCH_ONLY      comma-separated subset of: berth,berth-tls,berth-auth,berth-noevents,distribution,nginx

berth-auth is berth (plain HTTP, the same 50-rule policy) with auth on: an htpasswd user and access rules granting
it pull and push on bench/*. The harness logs in once (GET /auth/token with Basic credentials, a token valid for 2 h)
and sends that Bearer token with every request, as docker and containerd do after their first 401. It takes part in
blob pull (1 stream) and manifest GET, in the same interleaved rounds as anonymous berth, and in the /auth/token row;
not in the push, listing and admission rows (their figures would be berth's own again).

berth-noevents is berth (plain HTTP, the same policy) with `--no-event-log`: it takes part in manifest GET only, in
the same interleaved rounds as berth, whose every GET records a pull event; "event log on / off" is berth's figure
over its own, as the median of 8 back-to-back A/B pairs in ABBA order (ab_ratio), as is "Bearer / anonymous".
"""

import atexit
import base64
import hashlib
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
QUICK = os.environ.get("BENCH_QUICK") == "1"
MiB = 1 << 20
BLOB_SIZE = (64 if QUICK else 1024) * MiB
CHUNK = 16 * MiB
N_TAGS = 500 if QUICK else 10_000
N_REPOS = 500 if QUICK else 10_000
LOAD_SECONDS = 2 if QUICK else 5
LIST_SECONDS = 2 if QUICK else 3
REPS = 3
AB_PAIRS = 2 if QUICK else 8  # pairs of an A/B ratio (ab_ratio)
STARTS = 10
DEADLINE_SECONDS = 50 * 60
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = f"Accept: {OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json"

RUN = os.environ.get("BENCH_RUN_DIR") or ""
BERTH = os.environ.get("BERTH_BIN") or os.path.join(ROOT, "target", "release", "berth")
POLICY = os.path.join(HERE, "policy-50.yaml")
BENCH_USER = "bench"
TOKEN_EXPIRY = "2h"
# Appended to the 50-rule policy for berth-auth: the bench user may pull and push bench/*, nobody else anything.
ACCESS_POLICY = f"""
access:
  anonymous: none
  rules:
    - name: bench
      repositories: ['bench/.*']
      subjects: ['user:{BENCH_USER}']
      actions: [pull, push]
"""
REVIEW = os.path.join(HERE, "pod-review.json")


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# processes: each in its own group, all killed at exit

PROCS = []


def spawn(cmd, logname, env=None):
    logf = open(os.path.join(RUN, "logs", logname), "ab")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env, close_fds=True)
    logf.close()
    PROCS.append(proc)
    with open(os.path.join(RUN, "pids"), "a") as f:
        f.write(f"{proc.pid}\n")
    return proc


def stop(proc, grace=10.0):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:  # whatever is left of the group (nginx workers)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    if proc in PROCS:
        PROCS.remove(proc)


def cleanup():
    for proc in list(PROCS):
        stop(proc, grace=3.0)


def on_signal(signum, _frame):
    raise SystemExit(f"stopped by signal {signum}")


atexit.register(cleanup)
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM):
    signal.signal(sig, on_signal)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_tree(pid):
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    pids.extend(proc_tree(int(child)))
    except OSError:
        pass
    return pids


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid, field="VmRSS"):
    """RSS of a process and its children (nginx: master and workers), in MB (10^6 bytes)."""
    return sum(status_kb(p, field) for p in proc_tree(pid)) * 1024 / 1e6


# ----------------------------------------------------------------------------------------------------------------
# servers


class AuthHTTPConnection(http.client.HTTPConnection):
    """A connection that sends `Authorization: <self.authorization>` with every request (the Bearer token)."""
    authorization = None

    def putrequest(self, method, url, *args, **kwargs):
        super().putrequest(method, url, *args, **kwargs)
        if self.authorization:
            self.putheader("Authorization", self.authorization)


class Server:
    def __init__(self, name, label, tls=False, registry=True, admission=False, push=True, auth=False,
                 events=True):
        self.name, self.label, self.tls = name, label, tls
        self.registry, self.admission, self.push, self.auth = registry, admission, push, auth
        self.events = events  # False: --no-event-log (berth-noevents, manifest GET only)
        self.token = None  # auth: the Bearer token every request carries
        self.basic = None  # auth: the user's Basic credentials (the token endpoint's row)
        self.port = free_port()
        self.proc = None
        self.dir = os.path.join(RUN, name)
        self.ca = None
        self.answers = {}

    @property
    def base(self):
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def ssl_context(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def conn(self, timeout=120):
        if self.tls:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self.ssl_context())
        conn = AuthHTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.authorization = self.bearer()
        return conn

    def bearer(self):
        return f"Bearer {self.token}" if self.token else None

    def auth_headers(self):
        """The headers of every load-generator request (wrk, curl): the Bearer token, if any."""
        return [f"Authorization: {self.bearer()}"] if self.token else []

    def curl_args(self):
        args = ["--cacert", self.ca, "--http1.1"] if self.tls else []
        for h in self.auth_headers():
            args += ["-H", h]
        return args


def berth_cmd(port, data, certs=None, policy=True, policy_file=POLICY):
    cmd = [BERTH, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data]
    cmd += ["--policy-file", policy_file] if policy else []
    return cmd + (["--cert-dir", certs] if certs else ["--plain-http"])


def berth_auth_cmd(server, data):
    """berth with an htpasswd user (bcrypt, by `htpasswd -B`) and access rules; plain HTTP like `berth`. The token
    signing key is generated in the server's own cert dir (berth keeps it there even without TLS)."""
    password = secrets.token_urlsafe(18)
    htpasswd = os.path.join(server.dir, "htpasswd")
    subprocess.run(["htpasswd", "-bBc", "-C", "10", htpasswd, BENCH_USER, password], check=True,
                   capture_output=True, timeout=30)
    policy = os.path.join(server.dir, "policy-auth.yaml")
    with open(POLICY) as src, open(policy, "w") as dst:
        dst.write(src.read() + ACCESS_POLICY)
    server.basic = "Basic " + base64.b64encode(f"{BENCH_USER}:{password}".encode()).decode()
    cmd = berth_cmd(server.port, data, policy_file=policy)
    return cmd + ["--cert-dir", os.path.join(server.dir, "certs"), "--htpasswd", htpasswd,
                  "--token-expiry", TOKEN_EXPIRY]


def token_path(*repos, actions="pull,push"):
    scopes = "&".join(f"scope=repository:{r}:{actions}" for r in repos)
    return f"/auth/token?service=berth&{scopes}"


def log_in(server):
    """Asks the token endpoint for a token for the bench repositories and checks that berth-auth really refuses
    an anonymous pull and grants what was asked."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    st, h, body = request(conn, "GET", "/v2/bench/small/manifests/v1", headers={"Accept": OCI_MANIFEST})
    expect(st, 401, "anonymous manifest GET on berth with auth on", body)
    if not h.get("WWW-Authenticate", "").startswith("Bearer "):
        raise RuntimeError(f"401 without a Bearer challenge: {h.get('WWW-Authenticate')!r}")
    st, _, body = request(conn, "GET", token_path("bench/small", "bench/blob"), headers={"Authorization": server.basic})
    expect(st, 200, "GET /auth/token", body)
    conn.close()
    doc = json.loads(body)
    payload = doc["token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    granted = {(g["name"], a) for g in claims.get("access", []) for a in g.get("actions", [])}
    wanted = {(r, a) for r in ("bench/small", "bench/blob") for a in ("pull", "push")}
    if granted != wanted:
        raise RuntimeError(f"the token grants {sorted(granted)}, wanted {sorted(wanted)}")
    if doc.get("expires_in", 0) < 3600:
        raise RuntimeError(f"token valid for {doc.get('expires_in')} s only: the run outlasts it")
    server.token = doc["token"]


def distribution_config(port, data, path):
    with open(path, "w") as f:
        f.write(f"""version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
""")
    return ["docker-registry", "serve", path]


def nginx_config(port, prefix, answers=None):
    os.makedirs(os.path.join(prefix, "tmp"), exist_ok=True)
    root = os.path.join(RUN, "static")
    fixed = ""
    for endpoint, body in (answers or {}).items():
        escaped = body.replace("\\", "\\\\").replace("'", "\\'")
        fixed += f"    location = {endpoint} {{ default_type application/json; return 200 '{escaped}'; }}\n"
    conf = f"""user root;
worker_processes auto;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log {prefix}/access.log;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location = /v2/ {{ default_type application/json; return 200 '{{}}'; }}
    location = /manifest {{ default_type {OCI_MANIFEST}; }}
    location ~ \\.json$ {{ default_type application/json; }}
{fixed}  }}
}}
"""
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return ["nginx", "-p", prefix, "-c", path]


def probe(port, tls_ctx=None, timeout=0.5):
    """True when GET /v2/ answers (any status)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            sock = tls_ctx.wrap_socket(raw, server_hostname="127.0.0.1") if tls_ctx else raw
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return sock.recv(16).startswith(b"HTTP/1.1 ")
    except (OSError, ssl.SSLError):
        return False


def wait_answer(proc, port, tls_ctx=None, limit=20.0, pause=0.0002):
    """Seconds until the first answer on /v2/, polling (bounded by `limit`)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before answering (see {RUN}/logs)")
        if probe(port, tls_ctx):
            return time.perf_counter() - t0
        time.sleep(pause)
    raise RuntimeError(f"no answer on port {port} within {limit} s")


def start(server):
    os.makedirs(server.dir, exist_ok=True)
    data = os.path.join(server.dir, "data")
    if server.name == "berth-auth":
        server.proc = spawn(berth_auth_cmd(server, data), "berth-auth.log")
    elif server.name == "berth-noevents":
        server.proc = spawn(berth_cmd(server.port, data) + ["--no-event-log"], "berth-noevents.log")
    elif server.name in ("berth", "berth-tls"):
        certs = os.path.join(server.dir, "certs") if server.tls else None
        server.proc = spawn(berth_cmd(server.port, data, certs), f"{server.name}.log")
        if server.tls:
            server.ca = os.path.join(certs, "ca.crt")
            t0 = time.perf_counter()
            while not os.path.exists(server.ca) and time.perf_counter() - t0 < 20:
                time.sleep(0.005)
    elif server.name == "distribution":
        cmd = distribution_config(server.port, data, os.path.join(server.dir, "config.yml"))
        server.proc = spawn(cmd, "distribution.log")
    else:
        server.proc = spawn(nginx_config(server.port, server.dir, server.answers), "nginx.log")
    wait_answer(server.proc, server.port, server.ssl_context() if server.tls else None)
    if server.auth:
        log_in(server)


# ----------------------------------------------------------------------------------------------------------------
# HTTP helpers (keep-alive connections; bodies from files go out with sendfile)


def rel(location):
    parts = urllib.parse.urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def with_query(url, key, value):
    return f"{url}{'&' if '?' in url else '?'}{key}={urllib.parse.quote(value, safe=':')}"


def request(conn, method, path, body=None, headers=None):
    headers = dict(headers or {})
    if body is None and method in ("POST", "PUT", "PATCH"):
        body = b""
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, resp.headers, data


def send_file(conn, method, url, path, offset, count, headers=None):
    conn.putrequest(method, url, skip_accept_encoding=True)
    all_headers = {"Content-Type": "application/octet-stream", "Content-Length": str(count)}
    all_headers.update(headers or {})
    for key, value in all_headers.items():
        conn.putheader(key, value)
    conn.endheaders()
    try:
        with open(path, "rb") as f:
            if isinstance(conn.sock, ssl.SSLSocket):
                f.seek(offset)
                buf = bytearray(MiB)
                view = memoryview(buf)
                left = count
                while left > 0:
                    n = f.readinto(view[: min(left, MiB)])
                    if n <= 0:
                        raise RuntimeError("short read of the blob file")
                    conn.sock.sendall(view[:n])
                    left -= n
            else:
                sent = conn.sock.sendfile(f, offset, count)
                if sent != count:
                    raise RuntimeError(f"sendfile sent {sent} of {count}")
    except (BrokenPipeError, ConnectionResetError) as e:
        log(f"  {method} {url}: {e}; reading the answer")
    resp = conn.getresponse()
    return resp.status, resp.headers, resp.read()


def expect(status, want, what, body=b""):
    if status not in (want if isinstance(want, tuple) else (want,)):
        raise RuntimeError(f"{what}: HTTP {status}, wanted {want}: {body[:300]!r}")


def push_monolithic(server, repo, path, size, digest):
    conn = server.conn()
    t0 = time.perf_counter()
    st, h, body = request(conn, "POST", f"/v2/{repo}/blobs/uploads/")
    expect(st, 202, "POST upload", body)
    st, h, body = send_file(conn, "PUT", with_query(rel(h["Location"]), "digest", digest), path, 0, size)
    elapsed = time.perf_counter() - t0
    expect(st, 201, "PUT blob", body)
    if h.get("Docker-Content-Digest") != digest:
        raise RuntimeError(f"pushed {digest}, server says {h.get('Docker-Content-Digest')}")
    conn.close()
    return elapsed


def push_chunked(server, repo, path, size, digest, chunk=CHUNK):
    conn = server.conn()
    t0 = time.perf_counter()
    st, h, body = request(conn, "POST", f"/v2/{repo}/blobs/uploads/")
    expect(st, 202, "POST upload", body)
    location = rel(h["Location"])
    for offset in range(0, size, chunk):
        n = min(chunk, size - offset)
        st, h, body = send_file(conn, "PATCH", location, path, offset, n,
                                {"Content-Range": f"{offset}-{offset + n - 1}"})
        expect(st, 202, f"PATCH at {offset}", body)
        location = rel(h["Location"])
    st, h, body = request(conn, "PUT", with_query(location, "digest", digest), headers={"Content-Length": "0"})
    elapsed = time.perf_counter() - t0
    expect(st, 201, "closing PUT", body)
    conn.close()
    return elapsed


def push_bytes(conn, repo, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    st, h, body = request(conn, "POST", f"/v2/{repo}/blobs/uploads/")
    expect(st, 202, "POST upload", body)
    st, h, body = request(conn, "PUT", with_query(rel(h["Location"]), "digest", digest), data,
                          {"Content-Type": "application/octet-stream"})
    expect(st, 201, "PUT small blob", body)
    return digest


# ----------------------------------------------------------------------------------------------------------------
# load generators


def curl_pull(server, path, size, streams=1):
    """MB/s of `streams` parallel curl downloads of `path` (one 1 GiB blob each)."""
    cmd = ["curl", "-sS", "-o", "/dev/null", "--max-time", "300", "-w", "%{http_code} %{size_download} %{time_total}\n"]
    cmd += server.curl_args() + [server.base + path]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(streams)]
    outs = [p.communicate(timeout=400) for p in procs]
    wall = time.perf_counter() - t0
    for out, err in outs:
        code, got, _ = out.decode().split()
        if code != "200" or int(got) != size:
            raise RuntimeError(f"pull {path}: HTTP {code}, {got} bytes: {err.decode()[:200]}")
    if streams == 1:
        wall = float(outs[0][0].decode().split()[2])
    return streams * size / wall / 1e6


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(server, path, threads=2, conns=32, seconds=LOAD_SECONDS, headers=(), script=None, bearer=True):
    """wrk's figures; the server's Bearer token goes with every request unless `bearer` is false."""
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for h in list(headers) + (server.auth_headers() if bearer else []):
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    cmd.append(server.base + path)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        result[f"p{pct}"] = float(m.group(1)) * UNITS[m.group(2)] if m else None
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    total = re.search(r"(\d+) requests in", out)
    if bad or errors:
        log(f"  wrk {path}: {bad.group(0) if bad else ''} {errors.group(0) if errors else ''} of {total.group(1)}")
    if bad and int(bad.group(1)) > 0.01 * int(total.group(1)):
        raise RuntimeError(f"wrk {path}: {bad.group(0)} of {total.group(1)}\n{out}")
    return result


def curl_head_loop(server, path, n=2000):
    """HEAD requests/s from one curl process reusing one connection (sequential)."""
    cfg = os.path.join(RUN, f"head-{server.name}.cfg")
    with open(cfg, "w") as f:
        for _ in range(n):
            f.write(f'url = "{server.base}{path}"\noutput = "/dev/null"\n')
    cmd = ["curl", "-sS", "-I", "-K", cfg, "-H", ACCEPT, "-w", "%{http_code}\n"] + server.curl_args()
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    elapsed = time.perf_counter() - t0
    ok = out.split().count("200")
    if ok != n:
        raise RuntimeError(f"HEAD loop: {ok} of {n} answered 200")
    return n / elapsed


def parallel_requests(server, jobs_per_conn):
    """Runs lists of request closures, one keep-alive connection (thread) per list; returns requests/s."""
    errors = []
    count = sum(len(jobs) for jobs in jobs_per_conn)

    def work(jobs):
        try:
            conn = server.conn()
            for job in jobs:
                job(conn)
            conn.close()
        except Exception as e:  # reported below
            errors.append(e)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(jobs,), daemon=True) for jobs in jobs_per_conn]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return count / elapsed


# ----------------------------------------------------------------------------------------------------------------
# the scenario for one server


def small_image(server):
    """A small OCI image in bench/small; returns (manifest bytes, config digest, layer digest)."""
    conn = server.conn()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/app"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "ab" * 32]}}).encode()
    layer = bytes(range(256)) * 8
    cfg_digest = push_bytes(conn, "bench/small", config)
    layer_digest = push_bytes(conn, "bench/small", layer)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": len(layer)}],
        "annotations": {"org.opencontainers.image.source": "https://example.com/bench",
                        "org.opencontainers.image.version": "1.0.0"}}, indent=3).encode()
    st, _, body = request(conn, "PUT", "/v2/bench/small/manifests/v1", manifest, {"Content-Type": OCI_MANIFEST})
    expect(st, 201, "PUT manifest", body)
    conn.close()
    return manifest, cfg_digest, layer_digest


def split(items, parts):
    return [items[i::parts] for i in range(parts)]


def seed_tags(server, manifest, cfg_digest, layer_digest):
    conn = server.conn()
    for digest in (cfg_digest, layer_digest):
        st, _, body = request(conn, "POST", f"/v2/bench/tags/blobs/uploads/?mount={digest}&from=bench/small")
        expect(st, 201, "mount into bench/tags", body)
    conn.close()

    def tag(i):
        return lambda conn: expect(*request(conn, "PUT", f"/v2/bench/tags/manifests/tag-{i:05d}", manifest,
                                            {"Content-Type": OCI_MANIFEST})[0:1], 201, "PUT tag")
    return parallel_requests(server, split([tag(i) for i in range(N_TAGS)], 4))


def seed_repos(server, manifest, cfg_digest, layer_digest):
    def repo(i):
        name = f"cat/r-{i:05d}"

        def job(conn):
            for digest in (cfg_digest, layer_digest):
                st, _, body = request(conn, "POST", f"/v2/{name}/blobs/uploads/?mount={digest}&from=bench/small")
                expect(st, 201, f"mount into {name}", body)
            st, _, body = request(conn, "PUT", f"/v2/{name}/manifests/v1", manifest, {"Content-Type": OCI_MANIFEST})
            expect(st, 201, f"PUT manifest {name}", body)
        return job
    return 3 * parallel_requests(server, split([repo(i) for i in range(N_REPOS)], 4))


def median(values):
    return statistics.median(values)


def wrk_post_script(name, path):
    script = os.path.join(RUN, f"{name}.lua")
    with open(script, "w") as f:
        f.write(f"""wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{path}", "rb")
wrk.body = f:read("*a")
f:close()
""")
    return script


def cpu_times():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


QUIET = {"waited": 0.0, "rounds": 0, "busy_rounds": 0}
QUIET_BUSY = 0.25          # other processes may use at most this share of all cores when a round starts
QUIET_MAX_WAIT = 60.0      # per round
QUIET_TOTAL_WAIT = 600.0   # per run


def wait_quiet():
    """Waits (bounded) until the machine is quiet, so a round does not start while other work runs. Our own servers
    are idle between measurements, so what is busy here is someone else."""
    QUIET["rounds"] += 1
    t0 = time.perf_counter()
    while True:
        b0, t0s = cpu_times()
        time.sleep(0.5)
        b1, t1s = cpu_times()
        busy = (b1 - b0) / max(1, t1s - t0s)
        waited = time.perf_counter() - t0
        if busy <= QUIET_BUSY:
            break
        if waited >= QUIET_MAX_WAIT or QUIET["waited"] + waited >= QUIET_TOTAL_WAIT:
            QUIET["busy_rounds"] += 1
            log(f"  the machine is busy ({busy:.0%} of its CPU used by others); measuring anyway")
            break
    QUIET["waited"] += time.perf_counter() - t0


def interleaved(servers, measure, reps=REPS, pick=median):
    """Runs `measure(server)` for every server in turn, `reps` rounds, so that the machine's noise falls on all of
    them alike; returns {server name: pick(values)}."""
    values = {s.name: [] for s in servers}
    for _ in range(reps):
        wait_quiet()
        for server in servers:
            values[server.name].append(measure(server))
    return {name: pick(v) for name, v in values.items()}


def ab_ratio(a, b, measure, pairs=None):
    """a's figure over b's: the median of the ratios of `pairs` back-to-back pairs, run in ABBA order (a then b, b
    then a, ...) each after a quiet wait. On this noisy machine a round's figures swing by a third; within a pair
    the two servers meet nearly the same machine, and the alternating order cancels the advantage of either place
    in a pair, so the ratio is steadier than one of medians."""
    ratios = []
    for i in range(AB_PAIRS if pairs is None else pairs):
        wait_quiet()
        if i % 2 == 0:
            x = measure(a)
            y = measure(b)
        else:
            y = measure(b)
            x = measure(a)
        if x and y:
            ratios.append(x / y)
    log(f"  {a.name} / {b.name}: " + ", ".join(f"{r:.3f}" for r in ratios))
    return median(ratios) if ratios else None


def record(results, key, per_server):
    for name, value in per_server.items():
        results.setdefault(name, {})[key] = value


def record_wrk(results, prefix, per_server_runs):
    """Median of each wrk figure over the rounds."""
    for name, runs in per_server_runs.items():
        r = results.setdefault(name, {})
        r[f"{prefix}_rps"] = median([run["rps"] for run in runs])
        for pct in ("p50", "p99"):
            got = [run[pct] for run in runs if run[pct] is not None]
            r[f"{prefix}_{pct}"] = median(got) if got else None


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def scenario(all_servers, blob, digest, results):
    # berth-auth (auth on) joins only the rows it is there for: blob pull (1 stream), manifest GET, /auth/token.
    authed = [s for s in all_servers if s.auth]
    # berth without its event log joins manifest GET only, beside berth.
    bare = [s for s in all_servers if not s.events]
    servers = [s for s in all_servers if not s.auth and s.events]
    by_name = {s.name: s for s in servers}
    registries = [s for s in servers if s.registry]
    pushers = [s for s in servers if s.push]
    admission = [s for s in servers if s.admission]

    # Idle RSS is taken before any request but the start probe. nginx starts last: berth's admission answers become
    # its fixed answers.
    others = [s for s in all_servers if s.name != "nginx"]
    for server in others:
        log(f"starting {server.label}")
        start(server)
    time.sleep(1.0)
    record(results, "rss_idle", {s.name: rss_mb(s.proc.pid) for s in others})
    record(results, "rss_idle_anon", {s.name: rss_mb(s.proc.pid, "RssAnon") for s in others})
    for server in others:
        if server.admission:
            for endpoint in ("validate", "mutate"):
                conn = server.conn()
                with open(REVIEW, "rb") as f:
                    st, _, body = request(conn, "POST", f"/{endpoint}", f.read(), {"Content-Type": "application/json"})
                expect(st, 200, f"/{endpoint}", body)
                conn.close()
                answer = json.loads(body)["response"]
                if not answer.get("allowed"):
                    raise RuntimeError(f"/{endpoint} denied the benchmark review: {answer}")
                results.setdefault("_answers", {}).setdefault(endpoint, body.decode())
    if "nginx" in by_name:
        server = by_name["nginx"]
        for endpoint in ("validate", "mutate"):
            answer = results.get("_answers", {}).get(endpoint)
            if answer:
                server.answers[f"/{endpoint}"] = answer
        log(f"starting {server.label}")
        start(server)
        time.sleep(1.0)
        record(results, "rss_idle", {"nginx": rss_mb(server.proc.pid)})
        record(results, "rss_idle_anon", {"nginx": rss_mb(server.proc.pid, "RssAnon")})

    if pushers:
        log("monolithic push (the first one also measures RSS)")
        first = {}
        wait_quiet()
        for server in pushers:
            first[server.name] = push_monolithic(server, "bench/blob", blob, BLOB_SIZE, digest)
            results[server.name]["rss_push"] = rss_mb(server.proc.pid, "VmHWM")
        time.sleep(2.0)
        record(results, "rss_after", {s.name: rss_mb(s.proc.pid) for s in pushers})
        rest = interleaved(pushers, lambda s: push_monolithic(s, "bench/blob", blob, BLOB_SIZE, digest),
                           reps=REPS - 1, pick=list)
        for server in authed:  # the blob to pull, pushed once with the token (not a measurement)
            push_monolithic(server, "bench/blob", blob, BLOB_SIZE, digest)
        record(results, "push_mono", {n: BLOB_SIZE / median([first[n]] + rest[n]) / 1e6 for n in first})
        log("chunked push")
        times = interleaved(pushers, lambda s: push_chunked(s, "bench/chunked", blob, BLOB_SIZE, digest))
        record(results, "push_chunked", {n: BLOB_SIZE / t / 1e6 for n, t in times.items()})

    def blob_path(server):
        return f"/v2/bench/blob/blobs/{digest}" if server.push else "/blob"

    log("pull, 1 stream")
    record(results, "pull_1", interleaved(servers + authed, lambda s: curl_pull(s, blob_path(s), BLOB_SIZE)))
    log("pull, 8 streams")
    record(results, "pull_8", interleaved(servers, lambda s: curl_pull(s, blob_path(s), BLOB_SIZE, streams=8)))

    log("manifest GET")
    images = {}
    for server in registries + authed + bare:
        images[server.name] = small_image(server)
    if "nginx" in by_name and images:
        with open(os.path.join(RUN, "static", "manifest"), "wb") as f:
            f.write(next(iter(images.values()))[0])

    def manifest_path(server):
        return "/v2/bench/small/manifests/v1" if server.registry else "/manifest"
    for server in servers + authed + bare:
        wrk(server, manifest_path(server), seconds=1, headers=[ACCEPT])  # warm-up
    record_wrk(results, "manifest", interleaved(
        servers + authed + bare, lambda s: wrk(s, manifest_path(s), seconds=LOAD_SECONDS, headers=[ACCEPT]),
        pick=list))
    def manifest_rps(server):
        return wrk(server, manifest_path(server), seconds=LOAD_SECONDS, headers=[ACCEPT])["rps"]
    anonymous_berth = by_name.get("berth")
    for server in bare:
        if anonymous_berth:
            log("manifest GET: event log on / off, A/B pairs")
            results["berth"]["manifest_rps_events_on_vs_off"] = ab_ratio(anonymous_berth, server, manifest_rps)
    for server in authed:
        anonymous = results.get("berth", {})
        mine = results[server.name]
        if anonymous.get("pull_1") and mine.get("pull_1"):
            mine["pull_1_vs_anonymous"] = mine["pull_1"] / anonymous["pull_1"]
        if anonymous_berth:
            log("manifest GET: Bearer / anonymous, A/B pairs")
            mine["manifest_rps_vs_anonymous"] = ab_ratio(server, anonymous_berth, manifest_rps)
    if authed:
        # The token endpoint itself: Basic credentials (bcrypt checked once, then remembered for 5 minutes), the
        # access rules for each scope, an ES256 signature and the JSON answer, per request.
        log("/auth/token")
        path = token_path("bench/small")
        for server in authed:
            # One login first, so the row measures remembered credentials: the first check of a password is a
            # bcrypt (tens of ms), and 32 connections asking at once while it runs are told 429 (a bounded number
            # of checks at a time), which the 1 s warm-up would count as errors.
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            st, _, body = request(conn, "GET", path, headers={"Authorization": server.basic})
            conn.close()
            expect(st, 200, "GET /auth/token before the token row", body)
            wrk(server, path, seconds=1, headers=[f"Authorization: {server.basic}"], bearer=False)
        record_wrk(results, "token", interleaved(authed, lambda s: wrk(
            s, path, seconds=LOAD_SECONDS, headers=[f"Authorization: {s.basic}"], bearer=False), pick=list))
    record(results, "head_rps", interleaved(servers, lambda s: curl_head_loop(s, manifest_path(s))))

    for server in registries:
        manifest, cfg_digest, layer_digest = images[server.name]
        log(f"{server.label}: {N_TAGS} tags, {N_REPOS} repositories")
        results[server.name]["seed_tags"] = seed_tags(server, manifest, cfg_digest, layer_digest)
        results[server.name]["seed_repos"] = seed_repos(server, manifest, cfg_digest, layer_digest)
    late_tag, late_repo = f"tag-{N_TAGS * 9 // 10:05d}", f"cat/r-{N_REPOS * 9 // 10:05d}"
    listings = {
        "tags_all": ("/v2/bench/tags/tags/list", "/tags-all.json"),
        "tags_first": ("/v2/bench/tags/tags/list?n=100", "/tags-first.json"),
        "tags_late": (f"/v2/bench/tags/tags/list?n=100&last={late_tag}", "/tags-late.json"),
        "catalog_first": ("/v2/_catalog?n=100", "/catalog-first.json"),
        "catalog_late": (f"/v2/_catalog?n=100&last={late_repo}", "/catalog-late.json"),
    }
    for key, (path, static) in listings.items():
        log(f"listing {path}")
        for server in registries:
            conn = server.conn()
            st, _, body = request(conn, "GET", path)
            expect(st, 200, path, body)
            conn.close()
            doc = json.loads(body)
            results[server.name][f"{key}_items"] = len(doc.get("tags") or doc.get("repositories") or [])
            if server is registries[0]:
                with open(os.path.join(RUN, "static", static.lstrip("/")), "wb") as f:
                    f.write(body)
        runs = interleaved(servers, lambda s: wrk(s, path if s.registry else static, conns=8, seconds=LIST_SECONDS),
                           reps=2, pick=list)
        record_wrk(results, key, runs)

    for endpoint in ("validate", "mutate"):
        log(f"/{endpoint}")
        script = wrk_post_script(endpoint, REVIEW)
        targets = admission + ([by_name["nginx"]] if "nginx" in by_name and by_name["nginx"].answers else [])
        for server in targets:
            wrk(server, f"/{endpoint}", seconds=1, script=script)
        record_wrk(results, endpoint, interleaved(
            targets, lambda s: wrk(s, f"/{endpoint}", seconds=LOAD_SECONDS, script=script), pick=list))

    for server in servers + authed + bare:
        stop(server.proc)
        shutil.rmtree(os.path.join(server.dir, "data"), ignore_errors=True)


def start_once(name, i, base):
    """Starts one instance with fresh directories; returns milliseconds to its first answer on /v2/."""
    port = free_port()
    data = os.path.join(base, f"data-{i}")
    ctx = None
    policy = not name.endswith("-bare")
    name = name.removesuffix("-bare")
    if name == "berth":
        cmd = berth_cmd(port, data, policy=policy)
    elif name in ("berth-tls", "berth-tls-first"):
        # berth-tls reuses a CA and certificate (a restart); berth-tls-first generates them (a fresh cert dir).
        certs = os.path.join(base, f"certs-{i}") if name == "berth-tls-first" else os.path.join(RUN, "berth-tls", "certs")
        cmd = berth_cmd(port, data, certs, policy=policy)
        if name == "berth-tls":
            ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))
        else:
            # No CA to verify with yet: the first answer is a completed TLS handshake without verification.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    elif name == "distribution":
        cmd = distribution_config(port, data, os.path.join(base, f"config-{i}.yml"))
    else:
        cmd = nginx_config(port, os.path.join(base, f"nginx-{i}"))
    t0 = time.perf_counter()
    proc = spawn(cmd, f"start-{name}.log")
    try:
        return wait_answer(proc, port, ctx) * 1e3
    finally:
        stop(proc)


def startup(names, results):
    log("start-up")
    base = os.path.join(RUN, "start")
    os.makedirs(base, exist_ok=True)
    counter = iter(range(10_000))
    for key, kinds, reps in (("startup", names, STARTS),
                             ("startup_bare", [n + "-bare" for n in names if n.startswith("berth")], STARTS),
                             ("startup_first", [n + "-first" for n in names if n == "berth-tls"], 3)):
        values = {n: [] for n in kinds}
        for _ in range(reps):
            wait_quiet()
            for name in kinds:
                values[name].append(start_once(name, next(counter), base))
        record(results, key, {n.replace("-first", "").replace("-bare", ""): median(v) for n, v in values.items()})


# ----------------------------------------------------------------------------------------------------------------
# the table

# key, label, unit, better ("hi"/"lo"), target (a function of the figures -> (text, met?)) or None
def ratio(results, a, b, key):
    x, y = results.get(a, {}).get(key), results.get(b, {}).get(key)
    return x / y if x and y else None


def target_min(key, value, text):
    return lambda res: (text, res.get("berth", {}).get(key) is not None and res["berth"][key] >= value)


def target_max(key, value, text, server="berth"):
    return lambda res: (text, res.get(server, {}).get(key) is not None and res[server][key] <= value)


def target_ratio(key, value, text):
    return lambda res: (text, (ratio(res, "berth", "nginx", key) or 0) >= value)


def target_auth(key, value, text):
    return lambda res: (text, (res.get("berth-auth", {}).get(key) or 0) >= value)


ROWS = [
    ("pull_1", "blob pull, 1 stream", "MB/s", "hi", target_ratio("pull_1", 0.95, "≥ 0.95× nginx")),
    ("pull_8", "blob pull, 8 streams", "MB/s", "hi", target_ratio("pull_8", 0.95, "≥ 0.95× nginx")),
    ("push_mono", "blob push, monolithic (POST + PUT), verified", "MB/s", "hi", target_min("push_mono", 1100, "≥ 1,100")),
    ("push_chunked", "blob push, chunked (16 MiB PATCHes), verified", "MB/s", "hi",
     target_min("push_chunked", 900, "≥ 900")),
    ("manifest_rps", "manifest GET by tag (wrk 2 threads, 32 conns)", "req/s", "hi",
     target_min("manifest_rps", 33000, "≥ 33,000")),
    ("manifest_p50", "manifest GET p50", "ms", "lo", None),
    ("manifest_p99", "manifest GET p99", "ms", "lo", target_max("manifest_p99", 3.0, "≤ 3")),
    ("head_rps", "manifest HEAD, sequential curl loop", "req/s", "hi", None),
    # Auth on (berth-auth): its figures stand in the berth column.
    ("pull_1", "blob pull, 1 stream, with a Bearer token (auth on)", "MB/s", "hi", None, "berth-auth"),
    ("pull_1_vs_anonymous", "blob pull, 1 stream: Bearer / anonymous", "×", "hi",
     target_auth("pull_1_vs_anonymous", 0.9, "≥ 0.9×"), "berth-auth"),
    ("manifest_rps", "manifest GET by tag with a Bearer token (auth on, wrk as above)", "req/s", "hi", None,
     "berth-auth"),
    ("manifest_rps_vs_anonymous", "manifest GET: Bearer / anonymous", "×", "hi",
     target_auth("manifest_rps_vs_anonymous", 0.9, "≥ 0.9×"), "berth-auth"),
    ("manifest_p99", "manifest GET p99, Bearer token", "ms", "lo", None, "berth-auth"),
    # The event log off (berth-noevents): its figures stand in the berth column.
    ("manifest_rps", "manifest GET by tag with the event log off (--no-event-log, wrk as above)", "req/s", "hi", None,
     "berth-noevents"),
    ("manifest_rps_events_on_vs_off", "manifest GET: event log on / off", "×", "hi",
     target_min("manifest_rps_events_on_vs_off", 0.9, "≥ 0.9×"), "berth"),
    ("token_rps", "/auth/token, Basic credentials (bcrypt remembered after the first check; rules + ES256 per "
     "request)", "req/s", "hi", None, "berth-auth"),
    ("token_p99", "/auth/token p99", "ms", "lo", None, "berth-auth"),
    ("seed_tags", "tag PUT (setup, 4 conns)", "req/s", "hi", None),
    ("seed_repos", "mount + manifest PUT (setup, 4 conns)", "req/s", "hi", None),
    ("tags_all_rps", "tags/list, all 10,000 tags (wrk 8 conns)", "req/s", "hi", None),
    ("tags_first_rps", "tags/list?n=100, first page", "req/s", "hi", None),
    ("tags_late_rps", "tags/list?n=100&last=, late page", "req/s", "hi", None),
    ("catalog_first_rps", "_catalog?n=100, first page (10,000 repos)", "req/s", "hi", None),
    ("catalog_late_rps", "_catalog?n=100&last=, late page", "req/s", "hi", None),
    ("validate_rps", "admission /validate, 50 rules (wrk POST)", "req/s", "hi",
     target_min("validate_rps", 32000, "≥ 32,000")),
    ("validate_p99", "/validate p99", "ms", "lo", target_max("validate_p99", 2.0, "≤ 2")),
    ("mutate_rps", "admission /mutate, 50 rules + 8 rewrites", "req/s", "hi",
     target_min("mutate_rps", 32000, "≥ 32,000")),
    ("mutate_p99", "/mutate p99", "ms", "lo", target_max("mutate_p99", 2.0, "≤ 2")),
    ("startup", "start-up to first answer on /v2/ (median of 10; berth with the 50-rule policy)", "ms", "lo",
     lambda res: ("≤ 10 (with TLS)", all(res.get(s, {}).get("startup", 99) <= 10 for s in ("berth", "berth-tls")))),
    ("startup_bare", "start-up, berth without a policy file", "ms", "lo", None),
    ("startup_first", "first start with TLS: generate CA + certificate", "ms", "lo", None),
    ("rss_idle", "RSS idle", "MB", "lo", target_max("rss_idle", 8.0, "≤ 8")),
    ("rss_idle_anon", "of which anonymous (heap, stacks), not the binary's pages", "MB", "lo", None),
    ("rss_push", "RSS peak during a 1 GiB push", "MB", "lo", target_max("rss_push", 64.0, "≤ 64")),
    ("rss_after", "RSS after the push", "MB", "lo", None),
]

COLUMNS = [("berth", "berth"), ("berth-tls", "berth TLS"), ("distribution", "distribution 2.8"),
           ("nginx", "nginx sendfile")]


def fmt(value, unit):
    if value is None:
        return "—"
    if unit == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    if unit == "MB":
        return f"{value:.1f}"
    if unit == "×":
        return f"{value:.2f}×"
    return f"{value:,.0f}"


def table(results):
    head = ["measure", "unit"] + [label for _, label in COLUMNS] + ["berth / distribution", "berth / nginx",
                                                                     "target (berth)", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, unit, _better, target, *source in ROWS:
        if QUICK:
            label = label.replace("10,000", f"{N_TAGS:,}")
        if source:  # one server's figure, in the berth column
            cells = [label, unit] + [fmt(results.get(source[0], {}).get(key) if name == "berth" else None, unit)
                                     for name, _ in COLUMNS]
            cells += ["—", "—"]
        else:
            cells = [label, unit] + [fmt(results.get(name, {}).get(key), unit) for name, _ in COLUMNS]
            cells += [fmt(ratio(results, "berth", "distribution", key), "×"),
                      fmt(ratio(results, "berth", "nginx", key), "×")]
        if target:
            text, met = target(results)
            cells += [text, "yes" if met else "**no**"]
        else:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = open("/proc/cpuinfo").read()
    mem = int(open("/proc/meminfo").readline().split()[1]) // (1024 * 1024)

    def version(cmd, pattern=r"([\d]+\.[\d.]+[^\s]*)"):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            m = re.search(pattern, out.stdout + out.stderr)
            return m.group(1) if m else "?"
        except OSError:
            return "?"
    os_name = "?"
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores{' with SHA extensions' if ' sha_ni' in flags else ''}, {mem} GiB RAM; "
            f"{os_name}, Linux {platform.release()}; berth {version([BERTH, '--version'])} (release build), "
            f"docker-registry {version(['docker-registry', '--version'])}, nginx {version(['nginx', '-v'])}, "
            f"wrk {version(['wrk', '-v'])}, curl {version(['curl', '--version'])}")


def main():
    global RUN
    if not RUN:
        raise SystemExit("BENCH_RUN_DIR is not set: run benches/run.sh")
    signal.alarm(DEADLINE_SECONDS)
    for sub in ("logs", "static"):
        os.makedirs(os.path.join(RUN, sub), exist_ok=True)
    only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
    results = {}
    started = time.time()

    blob = os.path.join(RUN, "static", "blob")
    log(f"writing a {BLOB_SIZE // MiB} MiB random blob")
    sha = hashlib.sha256()
    with open(blob, "wb") as f:
        for _ in range(BLOB_SIZE // (16 * MiB)):
            chunk = os.urandom(16 * MiB)
            sha.update(chunk)
            f.write(chunk)
    digest = "sha256:" + sha.hexdigest()

    servers = [Server("berth", "berth, plain HTTP", admission=True),
               Server("berth-tls", "berth, TLS", tls=True, admission=True),
               Server("berth-auth", "berth, plain HTTP, auth on (Bearer token)", auth=True),
               Server("berth-noevents", "berth, plain HTTP, --no-event-log", events=False),
               Server("distribution", "CNCF distribution (docker-registry)"),
               Server("nginx", "nginx, static files with sendfile", registry=False, push=False)]
    servers = [s for s in servers if not only or s.name in only]
    load_before = loadavg()
    try:
        scenario(servers, blob, digest, results)
    finally:
        for server in servers:
            if server.proc:
                stop(server.proc)
    startup([s.name for s in servers if not s.auth and s.events], results)
    load_after = loadavg()
    results.pop("_answers", None)

    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    notes = f"""# berth benchmark results

Taken {when} by `benches/run.sh` in {(time.time() - started) / 60:.0f} minutes{' (QUICK smoke run: small sizes, not comparable)' if QUICK else ''}.

Machine: {machine()}.

All servers ran at once on loopback, each with a fresh data directory on tmpfs and its default logging (one line
per request) written to a file, and every measurement went round them in turn ({REPS} rounds, median; listings 2
rounds), so the machine's noise falls on all of them alike. The load generators (curl, wrk, Python) ran on the same
{os.cpu_count()} cores; the 1-minute load average was {load_before:.1f} before and {load_after:.1f} after the run.
Before each round the harness waited for other processes to leave the CPU ({QUIET['waited']:.0f} s of waiting;
{QUIET['busy_rounds']} of {QUIET['rounds']} rounds still started with more than {QUIET_BUSY:.0%} of the CPU busy).
Blob: {BLOB_SIZE // MiB} MiB of random bytes; MB = 10^6 bytes. wrk phases ran {LOAD_SECONDS} s (listings {LIST_SECONDS} s)
after a 1 s warm-up. nginx serves the same bytes as static files (the blob, the manifest, the listings berth returned,
and berth's own admission answers as a fixed `return 200`), so its column is the loopback limit for each answer, not
a registry. Ratios are berth (plain HTTP) over the peer, from this run; for ms and MB a lower ratio is better.
The rows "with a Bearer token" are a third berth (plain HTTP, the same policy plus access rules, an htpasswd user)
with auth on, in the same rounds as the others: the harness logged in once at `/auth/token` and sent that token
with every request. The row "with the event log off" is a fourth berth run with `--no-event-log`, in the same
manifest GET rounds. The ratios "Bearer / anonymous" and "event log on / off" (every GET recording a pull event)
of manifest GET are each the median of 8 back-to-back pairs of the two servers, run in ABBA order after a quiet
wait each (a round's figures swing by a third on this machine; within a pair both meet nearly the same one).

"""
    caveats = []
    dist = results.get("distribution", {})
    if dist.get("tags_first_items", 0) > 100:
        caveats.append(f"distribution 2.8 ignores `n` on tags/list: its paged rows returned all "
                       f"{dist['tags_first_items']:,} tags.")
    text = notes + table(results) + "\n" + "".join(f"\n- {c}" for c in caveats) + ("\n" if caveats else "")
    with open(os.path.join(HERE, "results.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
