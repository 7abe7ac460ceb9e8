"""Secrets for the differential tests: what users really store, and the awkward cases around it.

An `Entry` is one secret id with a value per kind (variables, connections, config); the test
stores it under whatever name a kwargs combination maps that kind and id to, so every combination
sees the same corpus. `QUERY_ONLY` keys are asked for but never stored (names AWS would refuse,
characters a URL path must carry), and `DELIBERATE` lists the keys the sidecar refuses on purpose.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

KINDS = ("variables", "connections", "config")
TEAM = "ops"  # the team the tests ask as
OTHER_TEAM = "dev"
TEAM_SEP = "--"


@dataclass(frozen=True)
class Entry:
    key: str
    values: dict[str, str | bytes]  # kind -> stored value
    team: str | None = None  # stored under the team-scoped id `<team>--<key>` instead of the key
    parameter_type: str = "String"  # Parameter Store only: String, SecureString, StringList
    # Stored with the kwargs combination's name in front: all combinations share one store, and a
    # lookup under another combination's names would then answer another value.
    tagged: bool = False
    previous: str | None = None  # stored first, then replaced by the value (a rotated secret)
    deleted: bool = False  # stored, then deleted with a recovery window (Secrets Manager only)

    @property
    def secret_id(self) -> str:
        return f"{self.team}{TEAM_SEP}{self.key}" if self.team else self.key


def everywhere(key: str, value: str | bytes, **options: object) -> Entry:
    """The same value under all three kinds."""
    return Entry(key, dict.fromkeys(KINDS, value), **options)  # type: ignore[arg-type]


def connection(key: str, value: str | dict[str, object], **options: object) -> Entry:
    """A connection secret, also stored as a variable: only connections get the alias words."""
    text = value if isinstance(value, str) else json.dumps(value)
    return Entry(key, {"connections": text, "variables": text}, **options)  # type: ignore[arg-type]


def per_kind(key: str, **options: object) -> Entry:
    """A different value per kind and combination: a lookup under the wrong names shows at once."""
    return Entry(key, {kind: f"{kind}:{key}" for kind in KINDS}, tagged=True, **options)  # type: ignore[arg-type]


# Every character Secrets Manager allows in a name: A-Z a-z 0-9 / _ + = . @ -
ALL_NAME_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/_+=.@-"
# 18 characters of "airflow/variables/" plus this key is 512, Secrets Manager's longest name; the
# team-scoped form is then too long to exist and only the global name can be found.
LONGEST_KEY = "k" * (512 - len("airflow/variables/"))

SECRETS_MANAGER: list[Entry] = [
    # Plain strings, as users store them.
    everywhere("plain", "hello"),
    everywhere("single_space", " "),
    everywhere("padded", "  padded value \n\t"),
    everywhere("newlines", "line1\nline2\r\nline3\n"),
    everywhere("unicode_value", "žluťoučký kůň 🐎 日本語 \u00a0nbsp"),
    everywhere("right_to_left", "שלום עולם"),
    everywhere("zero_width", "a\u200bb\ufeff"),
    everywhere("quotes_and_backslashes", 'he said "hi" \\ back\\slash \\u0041'),
    everywhere("percent_signs", "100%25 %s %(name)s"),
    # JSON variables (compared as data; connections re-serialise them through the alias words).
    everywhere("json_object", json.dumps({"a": 1, "nested": {"b": [1, 2, None]}, "s": "x"})),
    everywhere("json_list", "[1, 2, 3]"),
    everywhere("json_number", "42"),
    everywhere("json_string", '"quoted"'),
    everywhere("json_padded", '   {"padded": true}  \n'),
    everywhere("json_unicode", json.dumps({"ключ": "значение", "emoji": "🔑"}, ensure_ascii=False)),
    # 60 KB values (a secret holds at most 64 KB).
    everywhere("big_ascii", "0123456789abcdef" * 3840),
    everywhere("big_unicode", "é" * 30000),
    everywhere("big_json", json.dumps({f"k{i}": "v" * 50 for i in range(1000)})),
    # Names made of every allowed character, and each special one alone.
    everywhere(ALL_NAME_CHARACTERS, "every allowed character"),
    everywhere("a=b+c@d.e-f_g", "mixed specials"),
    *(everywhere(char, f"just {char}") for char in "+=@_"),
    everywhere("-", "just -"),
    everywhere(".", "just ."),
    everywhere("nested/path/key", "slash inside"),
    everywhere("deep/a/b/c/d/e/f", "deeply nested"),
    everywhere("a//b", "empty segment inside"),
    everywhere("trailing/", "trailing slash"),
    everywhere("./dot", "dot segment"),
    everywhere("a..b", "two dots, not a segment"),
    everywhere("...", "three dots"),
    everywhere(".hidden", "leading dot"),
    everywhere("CaseKey", "upper camel"),
    everywhere("casekey", "lower"),
    everywhere(LONGEST_KEY, "longest name"),
    per_kind("marker"),
    per_kind("other_marker"),
    per_kind("team_marker"),
    per_kind("team_marker", team=TEAM),
    # URI connections, %-encoding included.
    connection("uri_simple", "postgres://user:pass@host:5432/db"),
    connection("uri_encoded", "mysql://us%40er:p%2Fa%3Ass%20w@db.example.com:3306/sch%2Fema?charset=utf8&x=%7B%7D"),
    connection("uri_extras", "aws://?region_name=eu-west-1&role_arn=arn%3Aaws%3Aiam%3A%3A123%3Arole%2Fr"),
    connection("uri_unicode", "http://h%C3%B6st.example/p%C3%A4th?q=%E2%9C%93"),
    # JSON connections with each alias word.
    connection(
        "json_login",
        {"conn_type": "postgres", "login": "l", "password": "p", "host": "h", "port": 5432, "schema": "s"},
    ),
    connection("json_user", {"user": "u", "pass": "p", "remote_host": "rh", "database": "db", "engine": "mysql"}),
    connection("json_username", {"username": "u", "key": "k", "server": "srv", "schema": "sc", "conn_id": "http"}),
    connection(
        "json_user_name",
        {"user_name": "un", "password": "pw", "host": "h", "connection_type": "ftp", "port": "21"},
    ),
    connection("json_extra_object", {"conn_type": "http", "host": "h", "extra": {"timeout": 5, "verify": False}}),
    connection("json_extra_string", {"conn_type": "http", "extra": json.dumps({"a": 1, "b": [True]})}),
    # Several aliases of one field: the provider takes the first in the secret's own order.
    connection(
        "json_many_aliases",
        {
            "username": "first",
            "login": "second",
            "user": "third",
            "pass": "p1",
            "password": "p2",
            "server": "s1",
            "host": "s2",
            "schema": "x",
            "database": "y",
            "engine": "e1",
            "conn_type": "e2",
        },
    ),
    connection("json_reversed_aliases", {"database": "y", "schema": "x", "key": "k1", "password": "p1"}),
    # Words only `extra_conn_words` knows, and one it adds to two fields at once.
    connection(
        "json_custom_words",
        {"usr": "u", "secret_pw": "s", "hostname": "h", "db": "d", "type": "t", "extras": {"x": 1}, "port": 1},
    ),
    connection("json_custom_words_order", {"lgn": "from login", "usr": "from user", "shared": "both"}),
    connection("json_nulls", {"conn_type": "http", "host": None, "port": None, "extra": None}),
    connection("json_unicode_fields", {"login": "ž", "password": "🔑", "host": "höst", "extra": {"ключ": "é"}}),
    connection("json_nested_extra", {"conn_type": "aws", "extra": {"a": {"b": [1, {"c": None}]}}}),
    connection("json_empty", {}),
    connection("json_port_types", {"conn_type": "x", "port": True, "host": 7}),
    connection("json_duplicate_keys", '{"login": "first", "login": "last"}'),
    connection("json_padded_conn", '\n  {"login": "x", "host": "padded"}  '),
    connection("json_array_conn", "[1, 2]"),
    # Starts with "{" but is not JSON: both backends fail (the provider raises, the sidecar 503s).
    connection("bad_json_conn", "{oops"),
    # A rotated secret (both serve the current version) and one scheduled for deletion (neither does).
    everywhere("rotated", "new value", previous="old value"),
    everywhere("deleted", "gone", deleted=True),
    # Binary secrets have no SecretString: neither backend serves them.
    everywhere("binary", b"\x00\x01\xffbinary"),
    everywhere("binary_text", b"looks like text"),
    # Team scoping.
    everywhere("team_override", "global value"),
    everywhere("team_override", "ops value", team=TEAM),
    everywhere("team_only", "ops only", team=TEAM),
    everywhere("other_team_only", "dev only", team=OTHER_TEAM),
    connection("team_conn", {"conn_type": "http", "login": "global"}),
    connection("team_conn", {"engine": "http", "username": "ops user", "pass": "ops pw"}, team=TEAM),
    everywhere("team_binary", "global text"),
    everywhere("team_binary", b"team binary: skipped, the global name follows", team=TEAM),
    everywhere("team_nested/key", "ops nested", team=TEAM),
    # Ids that contain the team separator: one is the team-scoped name of "shadow" for team ops.
    everywhere("ops--shadow", "global id with --"),
    everywhere("a--b--c", "several separators"),
    everywhere("--leading", "leading separator"),
    everywhere("trailing--", "trailing separator"),
    # Refused by the sidecar on purpose (see DELIBERATE); the provider looks the literal name up.
    everywhere("a/../b", "traversal"),
    everywhere("../up", "climbs out"),
    everywhere("..", "parent"),
    everywhere("/leading_slash", "leading separator"),
    everywhere("_private", "leading underscore"),
    everywhere("x_.._y", "underscore traversal"),
    everywhere(".dotted", "leading dot"),
]

# Asked for, never stored: names AWS refuses, and characters the URL path has to carry.
QUERY_ONLY = [
    "missing",
    "é_unicode_key",
    "has space",
    "colon:key",
    "percent%2Fencoded",
    "q?x=1&y#frag",
    "{brace}",
    "semi;colon",
    "k" * 600,
    "",
    f"{TEAM}--team_only",
    f"{OTHER_TEAM}--other_team_only",
    f"{TEAM}--team_override",
]


@dataclass(frozen=True)
class Deliberate:
    """A key the sidecar refuses on purpose while the provider looks the literal name up."""

    key: str
    reason: str
    seps: frozenset[str] | None = None  # the separators under which it differs; None: every one
    bare_only: bool = False  # differs only under an empty prefix (the key is the whole name)
    provider: str = "value"  # what the provider does instead: finds a "value", or raises ("error")

    def applies(self, sep: str, prefix: str | None) -> bool:
        if self.bare_only and prefix != "":
            return False
        return self.seps is None or sep in self.seps


_TRAVERSAL = "a '..' segment: the sidecar never lets a key climb out of its prefix into another secret's name"
_LEADING = "a key that starts with '/' would name an empty path segment below the prefix"
_NO_NAME = (
    "under an empty prefix the empty key is an empty name, which no store can hold: the sidecar answers "
    "not found without an AWS call, the provider hands it to boto3, whose parameter validation raises"
)
DELIBERATE = [
    Deliberate("a/../b", _TRAVERSAL),
    Deliberate("../up", _TRAVERSAL),
    Deliberate("..", _TRAVERSAL),
    Deliberate("/leading_slash", _LEADING),
    Deliberate("", _NO_NAME, bare_only=True, provider="error"),
]

# Connections whose stored value cannot be served (both backends raise).
UNSERVABLE_CONNECTIONS = frozenset({"bad_json_conn"})


def query_keys(entries: list[Entry]) -> list[str]:
    """Every key to ask for: each stored key once, then the ones never stored."""
    keys = dict.fromkeys(entry.key for entry in entries)
    keys.update(dict.fromkeys(QUERY_ONLY))
    return list(keys)


# --- Parameter Store ---

PARAMETER_STORE: list[Entry] = [
    everywhere("plain", "hello"),
    everywhere("secure", "s3cr3t", parameter_type="SecureString"),
    everywhere("unicode_value", "žluť 🐎 日本語", parameter_type="SecureString"),
    everywhere("padded", "  padded \n"),
    everywhere("newlines", "l1\nl2\r\n"),
    everywhere("string_list", "a,b,c", parameter_type="StringList"),
    everywhere("json_object", json.dumps({"a": [1, None], "b": "c"})),
    everywhere("big", "0123456789" * 400),
    everywhere("nested/path/key", "hierarchy"),
    everywhere("deep/a/b/c", "deeper", parameter_type="SecureString"),
    everywhere("Dots.and-dashes_1", "allowed characters"),
    everywhere("CaseKey", "upper camel"),
    everywhere("casekey", "lower"),
    everywhere("awsKey", "aws is only reserved as the first segment"),
    everywhere("rotated", "new value", previous="old value", parameter_type="SecureString"),
    per_kind("marker"),
    # Parameter Store connections are served as stored: no alias words, no re-serialising.
    connection("json_conn", json.dumps({"conn_type": "postgres", "user": "u", "pass": "p", "port": 5432})),
    connection("uri_conn", "postgres://u:p%40ss@h:5432/d%2Fb?sslmode=require"),
    connection("bad_json_conn", "{not json"),
    Entry("secure_conn", {"connections": json.dumps({"login": "l", "key": "k"})}, parameter_type="SecureString"),
    # Team scoping (also under an empty prefix, unlike Secrets Manager).
    everywhere("team_override", "global value"),
    everywhere("team_override", "ops value", team=TEAM, parameter_type="SecureString"),
    everywhere("team_only", "ops only", team=TEAM),
    everywhere("other_team_only", "dev only", team=OTHER_TEAM),
    everywhere("ops--shadow", "global id with --"),
    everywhere("a--b--c", "several separators"),
    everywhere("a/../b", "traversal"),
]

PARAMETER_STORE_QUERY_ONLY = [
    "missing",
    "é",
    "has space",
    "a//b",
    "/leading_slash",
    "colon:key",
    "",
    f"{TEAM}--team_only",
    f"{OTHER_TEAM}--other_team_only",
    f"{TEAM}--team_override",
]

PARAMETER_STORE_DELIBERATE = [Deliberate("a/../b", _TRAVERSAL)]


# What the stores themselves accept as a name: a name they refuse cannot hold a secret.
_SECRETS_MANAGER_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
_PARAMETER_NAME = re.compile(r"/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")


def storable(source: str, name: str) -> bool:
    if source == "secretsmanager":
        return _SECRETS_MANAGER_NAME.fullmatch(name) is not None
    first = name.lstrip("/").split("/", 1)[0].lower()
    return (
        _PARAMETER_NAME.fullmatch(name) is not None
        and len(name) <= 1011
        and name.count("/") <= 15
        and not first.startswith(("aws", "ssm"))
    )
