"""A webhook sender for tests, independent of plexus: signs requests with Python's own hmac
and hashlib and POSTs them with urllib.

Usage: webhook_sender.py URL < script.json
The script is a JSON list of requests:
  {"body": "...", "sign": "timestamped" | "hex" | "hex-sha256" | null, "secret": "...",
   "age": seconds the signature's timestamp lies in the past (default 0),
   "headers": {...}, "replay": index of an earlier request to send again byte for byte}
Prints one JSON line per request: {"status", "headers", "body"}.
"""

import hashlib
import hmac
import json
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


def send(url, body, headers):
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


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
