"""A local OIDC issuer for trying workload identity without a cluster: it serves the
discovery document and JWKS of an EC P-256 key kept in DIR, and mints tokens shaped like
Kubernetes projected service-account tokens. Uses PyPI joserfc (installed by
scripts/install-identity-peers.sh into target/identity-venv).

    python scripts/local-oidc-issuer.py serve --dir ./issuer --port 9000 &
    python scripts/local-oidc-issuer.py mint --dir ./issuer --port 9000 \\
        --sub system:serviceaccount:prod:ticket-bot --aud mandate > token.jwt

For development only: the key sits unencrypted in DIR/key.json.
"""

import argparse
import http.server
import json
import os
import sys
import time
import uuid

from joserfc import jwt
from joserfc.jwk import ECKey


def load_key(directory: str) -> ECKey:
    path = os.path.join(directory, "key.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return ECKey.import_key(json.load(f))
    os.makedirs(directory, exist_ok=True)
    key = ECKey.generate_key("P-256")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(key.as_dict(private=True), f)
    return key


def public_jwk(key: ECKey) -> dict:
    jwk = key.as_dict(private=False)
    jwk["kid"] = key.thumbprint()
    jwk["alg"] = "ES256"
    jwk["use"] = "sig"
    return jwk


def serve(args: argparse.Namespace) -> int:
    key = load_key(args.dir)
    issuer = f"http://127.0.0.1:{args.port}"
    discovery = {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/jwks",
        "id_token_signing_alg_values_supported": ["ES256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }
    jwks = {"keys": [public_jwk(key)]}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = {"/.well-known/openid-configuration": discovery, "/jwks": jwks}.get(self.path)
            if body is None:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    print(f"issuer {issuer}", file=sys.stderr, flush=True)
    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
    return 0


def mint(args: argparse.Namespace) -> int:
    key = load_key(args.dir)
    now = int(time.time())
    namespace = args.sub.split(":")[2] if args.sub.count(":") >= 3 else "default"
    claims = {
        "iss": f"http://127.0.0.1:{args.port}",
        "sub": args.sub,
        "aud": [args.aud],
        "iat": now,
        "nbf": now,
        "exp": now + args.ttl,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": {"namespace": namespace},
    }
    for c in args.claim:
        name, _, value = c.partition("=")
        claims[name] = value
    header = {"alg": "ES256", "typ": "JWT", "kid": key.thumbprint()}
    print(jwt.encode(header, claims, key, algorithms=["ES256"]))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve discovery and JWKS on 127.0.0.1:PORT")
    s.add_argument("--dir", required=True)
    s.add_argument("--port", type=int, default=9000)
    m = sub.add_parser("mint", help="print a token for SUB")
    m.add_argument("--dir", required=True)
    m.add_argument("--port", type=int, default=9000)
    m.add_argument("--sub", required=True)
    m.add_argument("--aud", default="mandate")
    m.add_argument("--ttl", type=int, default=600)
    m.add_argument("--claim", action="append", default=[], help="extra top-level claim NAME=VALUE")
    args = p.parse_args()
    return serve(args) if args.command == "serve" else mint(args)


if __name__ == "__main__":
    sys.exit(main())
