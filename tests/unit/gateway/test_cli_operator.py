"""`gateway operator create` takes the password from a pipe, or generates one on a terminal;
`gateway operator` and `gateway audit` parse as API.md §4.1 writes them."""

from __future__ import annotations

import io

import pytest

from gateway.cli import build_parser
from gateway.cli.operator import read_password


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_piped_password_is_its_first_line_and_a_terminal_gets_a_generated_one() -> None:
    assert (
        read_password(io.StringIO("a long enough password\r\nignored\n"))
        == "a long enough password"
    )
    assert read_password(Terminal("typed\n")) is None
    with pytest.raises(SystemExit, match="empty"):
        read_password(io.StringIO(""))


def test_the_commands_parse() -> None:
    parser = build_parser()
    args = parser.parse_args(["operator", "create", "--email", "a@b.example", "--role", "finance"])
    assert (args.operator_cmd, args.email, args.role) == ("create", "a@b.example", "finance")
    args = parser.parse_args(
        ["operator", "token", "create", "--name", "ci", "--role", "viewer", "--json"]
    )
    assert (args.token_cmd, args.name, args.json) == ("create", "ci", True)
    args = parser.parse_args(["operator", "token", "revoke", "--id", "tok_1"])
    assert args.token_id == "tok_1"
    assert parser.parse_args(["audit", "verify"]).audit_cmd == "verify"
    with pytest.raises(SystemExit):
        parser.parse_args(["operator", "create", "--email", "a@b.example", "--role", "root"])
