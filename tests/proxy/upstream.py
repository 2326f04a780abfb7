#!/usr/bin/env python3
"""A tiny upstream registry for berth's proxy tests (tests/proxy.rs), standard library only.

It serves one image -- a config blob and one layer -- under any repository name, by tag and by digest, over plain
HTTP on 127.0.0.1, and misbehaves on purpose when asked:

  --wrong-blob         the layer's bytes differ from its digest (same length, first byte flipped)
  --rate BYTES         blobs stream at most this many bytes per second
  --token USER:PASS    /v2/ demands a Bearer token: a 401 with a WWW-Authenticate challenge whose realm is this
                       server's /token, which hands out tokens (expires_in 300, or --token-expires-in) for
                       Basic USER:PASS only
  --too-many-requests  every /v2/<repo>/... request gets 429 with Retry-After: 42

The layer is --layer-size bytes: a pseudo-random MiB (from --seed) repeated, so even a 500 MB layer costs no memory.
When ready it prints one JSON line on stdout: the port and the image's digests and sizes. GET /_stats answers what
was asked so far (token requests, and every /v2/ request with its status).
"""

import argparse
import base64
import hashlib
import json
import random
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CHUNK = 1 << 20
SEND = 64 << 10
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Blob:
    """size bytes of `unit` repeated; `wrong` flips the first byte of what is served (not of what is hashed)."""

    def __init__(self, unit, size, wrong=False):
        self.unit = unit
        self.size = size
        self.wrong = wrong
        digest = hashlib.sha256()
        for start in range(0, size, len(unit)):
            digest.update(memoryview(unit)[: min(len(unit), size - start)])
        self.digest = "sha256:" + digest.hexdigest()

    def pieces(self):
        sent = 0
        while sent < self.size:
            offset = sent % len(self.unit)
            n = min(SEND, len(self.unit) - offset, self.size - sent)
            piece = bytes(self.unit[offset : offset + n])
            if sent == 0 and self.wrong:
                piece = bytes([piece[0] ^ 0xFF]) + piece[1:]
            yield piece
            sent += n


def build_image(args):
    unit = random.Random(args.seed).randbytes(min(CHUNK, max(args.layer_size, 1)))
    layer = Blob(unit, args.layer_size, wrong=args.wrong_blob)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"seed": str(args.seed)}},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        },
        sort_keys=True,
    ).encode()
    config_blob = Blob(config, len(config))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_blob.digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer.digest,
                    "size": layer.size,
                }
            ],
        },
        sort_keys=True,
    ).encode()
    return manifest, {config_blob.digest: config_blob, layer.digest: layer}


class State:
    def __init__(self, args):
        self.args = args
        self.manifest, self.blobs = build_image(args)
        self.manifest_digest = "sha256:" + hashlib.sha256(self.manifest).hexdigest()
        self.lock = threading.Lock()
        self.token_requests = 0
        self.tokens = {}  # token -> scope
        self.requests = []
        self.port = 0


def error_body(code, message):
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State = None

    def log_message(self, fmt, *args):
        sys.stderr.write("upstream.py: %s\n" % (fmt % args))

    def reply(self, status, body=b"", headers=(), content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def record(self, status):
        with self.state.lock:
            self.state.requests.append({"method": self.command, "path": self.path, "status": status})

    def do_HEAD(self):
        self.handle_any()

    def do_GET(self):
        self.handle_any()

    def handle_any(self):
        url = urlsplit(self.path)
        if url.path == "/_stats":
            with self.state.lock:
                body = json.dumps(
                    {"token_requests": self.state.token_requests, "requests": self.state.requests}
                ).encode()
            return self.reply(200, body)
        if url.path == "/token":
            return self.token(parse_qs(url.query))
        if not url.path.startswith("/v2/"):
            return self.reply(404, error_body("NOT_FOUND", "no such endpoint"))
        parts = url.path[len("/v2/") :].split("/")
        repo, kind, reference = None, None, None
        if len(parts) >= 3 and parts[-2] in ("manifests", "blobs"):
            repo, kind, reference = "/".join(parts[:-2]), parts[-2], parts[-1]
        args = self.state.args
        if args.token and not self.authorized(repo):
            challenge = 'Bearer realm="http://127.0.0.1:%d/token",service="test"' % self.state.port
            if repo:
                challenge += ',scope="repository:%s:pull"' % repo
            self.record(401)
            return self.reply(
                401, error_body("UNAUTHORIZED", "authentication required"), [("WWW-Authenticate", challenge)]
            )
        if repo is None:
            self.record(200)
            return self.reply(200, b"{}")
        if args.too_many_requests:
            self.record(429)
            return self.reply(
                429, error_body("TOOMANYREQUESTS", "slow down"), [("Retry-After", "42")]
            )
        if kind == "manifests":
            if reference not in (args.tag, self.state.manifest_digest):
                self.record(404)
                return self.reply(404, error_body("MANIFEST_UNKNOWN", "manifest unknown"))
            self.record(200)
            return self.reply(
                200,
                self.state.manifest,
                [("Docker-Content-Digest", self.state.manifest_digest)],
                content_type=OCI_MANIFEST,
            )
        blob = self.state.blobs.get(reference)
        if blob is None:
            self.record(404)
            return self.reply(404, error_body("BLOB_UNKNOWN", "blob unknown"))
        self.record(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(blob.size))
        self.send_header("Docker-Content-Digest", blob.digest)
        self.end_headers()
        if self.command == "HEAD":
            return
        start, sent = time.monotonic(), 0
        try:
            for piece in blob.pieces():
                self.wfile.write(piece)
                sent += len(piece)
                if args.rate:
                    ahead = start + sent / args.rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def authorized(self, repo):
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        with self.state.lock:
            scope = self.state.tokens.get(header[len("Bearer ") :])
        if scope is None:
            return False
        return repo is None or scope == "repository:%s:pull" % repo

    def token(self, query):
        with self.state.lock:
            self.state.token_requests += 1
        expected = "Basic " + base64.b64encode(self.state.args.token.encode()).decode()
        if self.headers.get("Authorization") != expected:
            return self.reply(401, error_body("UNAUTHORIZED", "bad credentials"))
        if query.get("service") != ["test"] or len(query.get("scope", [])) != 1:
            return self.reply(400, error_body("DENIED", "service=test and one scope, please"))
        token = secrets.token_hex(16)
        with self.state.lock:
            self.state.tokens[token] = query["scope"][0]
        self.reply(200, json.dumps({"token": token, "expires_in": self.state.args.token_expires_in}).encode())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="v1")
    parser.add_argument("--layer-size", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--wrong-blob", action="store_true")
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--token", metavar="USER:PASS")
    parser.add_argument("--token-expires-in", type=int, default=300)
    parser.add_argument("--too-many-requests", action="store_true")
    args = parser.parse_args()

    state = State(args)
    Handler.state = state
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    blobs = {digest: blob.size for digest, blob in state.blobs.items()}
    layer = json.loads(state.manifest)["layers"][0]["digest"]
    print(
        json.dumps(
            {
                "port": state.port,
                "manifest": state.manifest.decode(),
                "manifest_digest": state.manifest_digest,
                "layer_digest": layer,
                "layer_size": blobs[layer],
                "config_digest": json.loads(state.manifest)["config"]["digest"],
            }
        ),
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
