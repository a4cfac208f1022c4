"""A real SMTP server for the alert tests (aiosmtpd).

Usage: python3 tests/smtp_sink.py DIR [--starttls|--smtps CERT KEY] [--auth USER PASSWORD]
Listens on 127.0.0.1 (a free port), prints "READY <port>" once it accepts
connections, and writes each message it receives to DIR/<n>.eml with its
envelope in DIR/<n>.json ({"mail_from": ..., "rcpt_tos": [...]}).
--starttls requires STARTTLS before mail; --smtps speaks implicit TLS;
--auth requires AUTH (PLAIN or LOGIN) with these credentials.
"""

import asyncio
import json
import os
import socket
import ssl
import sys

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword
except ImportError:
    sys.stderr.write(
        "aiosmtpd is missing: python3 -m pip install -r tests/requirements.txt\n"
    )
    sys.exit(3)


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        base = os.path.join(self.directory, f"{self.count:04d}")
        with open(base + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        with open(base + ".json", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos}, f)
        os.rename(base + ".tmp", base + ".eml")
        return "250 Message accepted for delivery"


def main():
    args = sys.argv[1:]
    directory = args.pop(0)
    os.makedirs(directory, exist_ok=True)
    kwargs = {}
    while args:
        flag = args.pop(0)
        if flag in ("--starttls", "--smtps"):
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(args.pop(0), args.pop(0))
            if flag == "--starttls":
                kwargs["tls_context"] = ctx
                kwargs["require_starttls"] = True
            else:
                kwargs["ssl_context"] = ctx
                # aiosmtpd only counts STARTTLS as TLS when offering AUTH;
                # with implicit TLS the whole connection is encrypted.
                kwargs["auth_require_tls"] = False
        elif flag == "--auth":
            user, password = args.pop(0).encode(), args.pop(0).encode()

            def check(server, session, envelope, mechanism, data):
                ok = isinstance(data, LoginPassword) and (data.login, data.password) == (user, password)
                return AuthResult(success=ok)

            kwargs["authenticator"] = check
            kwargs["auth_required"] = True
        else:
            sys.exit(f"unknown option {flag}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Sink(directory), hostname="127.0.0.1", port=port, server_hostname="localhost", **kwargs)
    controller.start()
    print(f"READY {port}", flush=True)
    try:
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
