#!/usr/bin/env python3
"""A real SMTP server for the notification tests (aiosmtpd): accepts every message on
127.0.0.1:<port> and appends it as one JSON line {mail_from, rcpt_tos, content} to <out>.
Runs until killed. Install with `pip install aiosmtpd` (scripts/test.sh does)."""

import argparse
import json
import signal
import threading

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        line = json.dumps(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "content": envelope.content.decode("utf-8", errors="replace"),
            }
        )
        with self.lock, open(self.out, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
        return "250 Message accepted"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    controller = Controller(Sink(args.out), hostname="127.0.0.1", port=args.port)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
