"""``sortline plant passwd|cert``: what a station's OPC UA server needs (docs/integration.md)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from . import flags


def _passwd(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.errors import ConfigError
    from sortline.edge_runtime.plant import hash_password
    from sortline.edge_runtime.plant.users import read_users

    if ":" in args.name or not args.name.strip() or len(args.name) > 64:
        raise ConfigError("a user name is 1..64 characters without ':'")
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        raise ConfigError("a password of at least 8 characters")
    line = f"{args.name}:{hash_password(password)}"
    if args.users is None:
        print(line)
        return {"user": args.name}
    users = read_users(args.users) if args.users.exists() else {}
    known = args.name in users
    users[args.name] = line.split(":", 1)[1]
    args.users.write_text("".join(f"{name}:{hashed}\n" for name, hashed in users.items()))
    args.users.chmod(0o600)
    print(f"{args.users}: {args.name} {'updated' if known else 'added'} ({len(users)} users)")
    return {"user": args.name, "users": len(users)}


def _cert(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.plant import make_certificate

    cert, key = make_certificate(args.out, f"urn:sortline:{args.name}", f"sortline {args.name}")
    print(f"{cert} and {key}: [opcua] certificate = \"{cert}\", private_key = \"{key}\" "
          f"(the station file's [station] name must be {args.name!r}: the certificate names urn:sortline:{args.name})")
    return {"certificate": str(cert), "private_key": str(key)}


def add(commands: argparse._SubParsersAction) -> None:
    report = flags.report()
    plant = commands.add_parser("plant", help="the OPC UA server's users and certificate")
    actions = plant.add_subparsers(dest="action", required=True)
    passwd = actions.add_parser("passwd", parents=[report], help="a user's password hash (name:hash), "
                                "printed or written to a users file; the password from the terminal or stdin")
    passwd.add_argument("name")
    passwd.add_argument("--users", type=Path, help="add or replace the user in this file ([opcua] users_file)")
    passwd.set_defaults(handler=_passwd)
    cert = actions.add_parser("cert", parents=[report], help="a self-signed certificate and key for [opcua]")
    cert.add_argument("--name", required=True, help="the station's name ([station] name)")
    cert.add_argument("--out", type=Path, required=True, help="a folder for cert.der and key.pem")
    cert.set_defaults(handler=_cert)
