"""A third-party MLLP receiver for tests/mllp.rs: python-hl7's asyncio server (hl7.mllp),
answering each message as scripted.

usage: mllp_receiver.py PORT OUT SCRIPT [--tls CERT KEY CLIENT_CA] [--peers]

With --tls, Python's ssl module (OpenSSL) serves TLS and requires a client certificate
issued by CLIENT_CA.

SCRIPT is a comma-separated list of answers, one per message received, in order: AA, AE, AR
(an ACK with that code, built by python-hl7's create_ack), DROP (close the connection without
answering), SLOW (answer AA after 3 s). Messages past the end of the script get AA.
Each message received is logged to OUT as "control id<TAB>answer", and with --peers
"<TAB>PID-3.1<TAB>the sender's port" (which connection it came on).
"""

import asyncio
import ssl
import sys

import hl7
import hl7.mllp


async def main():
    port, out_path, script = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
    answers = iter(a for a in script if a)
    out = open(out_path, "a", buffering=1)
    peers = "--peers" in sys.argv

    async def serve(reader, writer):
        try:
            while True:
                message = await reader.readmessage()
                answer = next(answers, "AA")
                line = "%s\t%s" % (message.segment("MSH")[10], answer)
                if peers:
                    port = writer.get_extra_info("peername")[1]
                    line += "\t%s\t%s" % (message.extract_field("PID", 1, 3, 1, 1), port)
                out.write(line + "\n")
                if answer == "DROP":
                    writer.close()
                    return
                if answer == "SLOW":
                    await asyncio.sleep(3)
                    answer = "AA"
                ack = message.create_ack(answer)
                if answer != "AA":
                    ack.segment("MSA").append("scripted %s" % answer)
                writer.writemessage(ack)
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    tls = None
    if "--tls" in sys.argv:
        cert, key, client_ca = sys.argv[sys.argv.index("--tls") + 1 :][:3]
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca)
        tls.load_cert_chain(cert, key)
        tls.verify_mode = ssl.CERT_REQUIRED
    server = await hl7.mllp.start_hl7_server(serve, "127.0.0.1", port, ssl=tls)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
