"""A real SMTP server for the notification module's tests (PyPI `aiosmtpd`).

    python smtp_server.py --port 2525 --mode record --out mail.jsonl

Modes:
  record   accept every message (250) and record it
  flaky    answer the first --failures DATA commands with 451 (try again
           later), then accept and record like `record`
  reject   refuse every recipient with 550 (mailbox unavailable)

Each accepted message is appended to --out (or printed to stdout when --out is
absent) as one JSON line: {"mail_from", "rcpt_tos", "subject", "text", "html"}.
Every SMTP answer given to DATA/RCPT is also appended to --out as
{"event": "<code>"} so tests can count attempts. Prints "READY <port>" once
listening; stops on SIGTERM/SIGINT (or, with --watch-stdin, when stdin closes).
"""

import argparse
import asyncio
import email
import email.policy
import json
import signal
import sys
import threading

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, mode, failures, out):
        self.mode = mode
        self.failures_left = failures
        self.out = out
        self.lock = threading.Lock()

    def write(self, record):
        line = json.dumps(record)
        with self.lock:
            if self.out:
                with open(self.out, "a", encoding="utf-8") as f:
                    f.write(line + "\n")
            else:
                print(line, flush=True)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.mode == "reject":
            self.write({"event": "550", "rcpt": address})
            return "550 5.1.1 <%s>: mailbox unavailable" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.mode == "flaky" and self.failures_left > 0:
            self.failures_left -= 1
            self.write({"event": "451"})
            return "451 4.3.0 temporarily unable to accept the message, try again later"
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        text = msg.get_body(("plain",))
        html = msg.get_body(("html",))
        self.write(
            {
                "event": "250",
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "subject": str(msg.get("subject", "")),
                "text": text.get_content() if text is not None else "",
                "html": html.get_content() if html is not None else "",
            }
        )
        return "250 Message accepted for delivery"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["record", "flaky", "reject"], default="record")
    parser.add_argument("--failures", type=int, default=1)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--watch-stdin",
        action="store_true",
        help="stop when stdin closes (the test harness holds it open)",
    )
    args = parser.parse_args()

    handler = Handler(args.mode, args.failures, args.out)
    controller = Controller(handler, hostname=args.host, port=args.port)
    controller.start()
    print("READY %d" % args.port, flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_stdin():
        try:
            sys.stdin.read()
        finally:
            stop.set()

    if args.watch_stdin:
        threading.Thread(target=watch_stdin, daemon=True).start()
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
