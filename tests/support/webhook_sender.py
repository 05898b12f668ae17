"""A webhook sender for tests, independent of plexus: signs requests with Python's own hmac
and hashlib and POSTs them with urllib.

Usage: webhook_sender.py URL < script.json
The script is a JSON list of requests:
  {"body": "...", "sign": "timestamped" | "hex" | "hex-sha256" | null, "secret": "...",
   "age": seconds the signature's timestamp lies in the past (default 0),
   "headers": {...}, "replay": index of an earlier request to send again byte for byte}
Prints one JSON line per request: {"status", "headers", "body"}; status 0 when no HTTP
answer came (a refused TLS handshake), with the error as body.
HTTPS: WEBHOOK_CA (the CA to trust), WEBHOOK_CERT and WEBHOOK_KEY (a client certificate).
"""

import hashlib
import hmac
import http.client
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request


def signed(req):
    body = req.get("body", "").encode()
    headers = {"Content-Type": req.get("content_type", "application/json")}
    headers.update(req.get("headers", {}))
    secret = req.get("secret", "").encode()
    sign = req.get("sign")
    if sign == "timestamped":
        t = int(time.time()) - int(req.get("age", 0))
        mac = hmac.new(secret, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
        headers["X-Plexus-Signature"] = f"t={t},v1={mac}"
    elif sign in ("hex", "hex-sha256"):
        mac = hmac.new(secret, body, hashlib.sha256).hexdigest()
        headers["X-Signature"] = mac if sign == "hex" else "sha256=" + mac
    return body, headers


def tls_context():
    if not os.environ.get("WEBHOOK_CA"):
        return None
    ctx = ssl.create_default_context(cafile=os.environ["WEBHOOK_CA"])
    if os.environ.get("WEBHOOK_CERT"):
        ctx.load_cert_chain(os.environ["WEBHOOK_CERT"], os.environ["WEBHOOK_KEY"])
    return ctx


def send(url, body, headers):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30, context=tls_context()) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()
    except (urllib.error.URLError, http.client.HTTPException, ssl.SSLError, OSError) as e:
        return 0, {}, str(e)


def main():
    url = sys.argv[1]
    script = json.load(sys.stdin)
    sent = []
    for req in script:
        if "replay" in req:
            body, headers = sent[req["replay"]]
        else:
            body, headers = signed(req)
        sent.append((body, headers))
        status, got_headers, text = send(url, body, headers)
        print(json.dumps({"status": status, "headers": {k.lower(): v for k, v in got_headers.items()}, "body": text}), flush=True)


if __name__ == "__main__":
    main()
