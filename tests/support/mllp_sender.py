"""A third-party MLLP sender for tests/mllp.rs: python-hl7's MLLPClient, used the way an
interface engine's sender is: one message in flight per connection, resend until a positive
ACK, reconnect when the connection drops.

usage: mllp_sender.py HOST PORT CONNECTIONS MESSAGES OUT_DIR [--bad N] [--deadline S]
                      [--tls CA CERT KEY]

With --tls, Python's ssl module (OpenSSL) wraps the connection: the CA to trust and a client
certificate to show.

Messages have control ids C<n>. Writes, per connection, OUT_DIR/acks-<c>.tsv lines
"control_id<TAB>MSA-1<TAB>MSA-2<TAB>MSH-3..6 of the ACK<TAB>attempts", and
OUT_DIR/resent.txt: control ids sent more than once (their first send got no ACK).
Message number N (with --bad N) is not HL7; it is sent once and its ACK recorded.
"""

import os
import ssl
import socket
import sys
import threading
import time

from hl7.client import MLLPClient

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


def message(n):
    return (
        "MSH|^~\\&|SENDAPP|SENDFAC|PLEXUS|HUB|20260105143000||ADT^A01^ADT_A01|C%d|P|2.5.1\r"
        "PID|1||%d^^^GHH^MR||DOE^JOHN||19800102|M\r"
        "PV1|1|I|4E^101^A^GHH\r" % (n, n)
    )


def read_ack(sock):
    """Reads one framed ACK (python-hl7's send_message reads a single recv)."""
    data = b""
    while EB not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the ACK")
        data += chunk
    return data[data.index(SB) + 1 : data.index(EB)].decode()


def fields(ack):
    segs = {s[:3]: s.split("|") for s in ack.split("\r") if s}
    msh, msa = segs.get("MSH", []), segs.get("MSA", [])
    get = lambda seg, i: seg[i] if len(seg) > i else ""
    # MSH fields are numbered from MSH-1 = the separator: split index i is MSH-(i+1).
    return get(msa, 1), get(msa, 2), "^".join(get(msh, i) for i in (2, 3, 4, 5))


TLS = None


def connect(host, port, deadline):
    while True:
        try:
            c = MLLPClient(host, port)
            c.socket.settimeout(10)
            if TLS:
                ca, cert, key = TLS
                ctx = ssl.create_default_context(cafile=ca)
                ctx.load_cert_chain(cert, key)
                c.socket = ctx.wrap_socket(c.socket, server_hostname=host)
            return c
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def run(host, port, conn_id, numbers, out_dir, bad, deadline, resent, lock):
    client = connect(host, port, deadline)
    with open(os.path.join(out_dir, "acks-%d.tsv" % conn_id), "w") as out:
        for n in numbers:
            attempts = 0
            while True:
                attempts += 1
                text = "THIS IS NOT HL7 %d\r" % n if n == bad else message(n)
                try:
                    client.socket.sendall(SB + text.encode() + EB + CR)
                    ack = read_ack(client.socket)
                except (OSError, ConnectionError):
                    if time.time() > deadline:
                        raise
                    try:
                        client.close()
                    except OSError:
                        pass
                    time.sleep(0.05)
                    client = connect(host, port, deadline)
                    continue
                code, control, msh = fields(ack)
                if code in ("AA", "CA") or n == bad:
                    break
                # AR (busy): a real sender waits and resends.
                time.sleep(0.05)
            if attempts > 1:
                with lock:
                    resent.append("C%d" % n)
            out.write("C%d\t%s\t%s\t%s\t%d\n" % (n, code, control, msh, attempts))
            out.flush()
    client.close()


def main():
    host, port, conns, total, out_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    bad = int(sys.argv[sys.argv.index("--bad") + 1]) if "--bad" in sys.argv else -1
    limit = float(sys.argv[sys.argv.index("--deadline") + 1]) if "--deadline" in sys.argv else 120
    deadline = time.time() + limit
    global TLS
    if "--tls" in sys.argv:
        i = sys.argv.index("--tls")
        TLS = sys.argv[i + 1 : i + 4]
    resent, lock, errors = [], threading.Lock(), []

    def guarded(*args):
        try:
            run(*args)
        except Exception as e:  # reported, and the exit code says so
            errors.append(repr(e))

    threads = [
        threading.Thread(
            target=guarded,
            args=(host, port, c, range(c, total, conns), out_dir, bad, deadline, resent, lock),
        )
        for c in range(conns)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(os.path.join(out_dir, "resent.txt"), "w") as f:
        f.write("\n".join(resent))
    if errors:
        print("errors:", errors, file=sys.stderr)
        sys.exit(1)
    print("done", total)


if __name__ == "__main__":
    main()
