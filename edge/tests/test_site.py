"""The site file: the sample passes, defaults are what the docs say, and every problem
is one line that starts with the key it is about."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from agent_support import MINIMAL_SITE, SAMPLE_SITE

from kommune.edge.agent import site as S
from kommune.edge.northbound import Priority

#: A problem: a key path (agent.id, links[2].nodes, ...), a colon, one line of text.
KEY_LINE = re.compile(r"[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*: [^\n]+")
ENV = {"HOME": "/home/tech"}


def parse(text: str, **kw: Any) -> S.Site:
    kw.setdefault("environ", ENV)
    kw.setdefault("euid", 1000)
    return S.parse(text.encode(), source=Path("/etc/kommune/site.toml"), **kw)


def problems(text: str) -> tuple[str, ...]:
    with pytest.raises(S.SiteError) as caught:
        parse(text)
    assert str(caught.value) == caught.value.problems[0]
    return caught.value.problems


def test_the_sample_site_file_is_valid() -> None:
    site = S.load(SAMPLE_SITE, environ=ENV, euid=1000)
    assert site.agent.id == "nordby-edge-1"
    assert site.broker.port == 8883
    assert site.broker.cert is not None and site.broker.key is not None
    assert [link.id for link in site.links] == ["storgata-bus", "torget-lan"]
    assert isinstance(site.links[0], S.SerialLink) and isinstance(site.links[1], S.UdpLink)
    assert site.outbox.policy(Priority.AUDIT).max_age_days is None
    assert site.outbox.dir == Path("/home/tech/.local/state/kommune/nordby-edge-1")


def test_defaults() -> None:
    site = parse(MINIMAL_SITE.replace("tls = false\n", ""))
    assert site.broker.tls and site.broker.port == 8883
    assert site.broker.keepalive_s == 60 and site.broker.session_expiry_s == 7 * 86_400
    assert (site.health.host, site.health.port) == ("127.0.0.1", 9470)
    assert site.agent.stop_timeout_s == 10.0
    assert site.outbox.disk_budget_mb == 512
    assert site.outbox.occupancy.max_age_days == 30 and site.outbox.telemetry.max_age_days == 7
    assert site.outbox.audit == S.ClassPolicy(None, None)
    assert site.links == site.locks == site.streets == ()
    assert parse(MINIMAL_SITE).broker.port == 1883  # no TLS: MQTT's plain port


@pytest.mark.parametrize(
    ("environ", "euid", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/kommune:/x", "HOME": "/h"}, 999, "/var/lib/kommune"),
        ({"HOME": "/root"}, 0, "/var/lib/kommune"),
        ({"HOME": "/home/t", "XDG_STATE_HOME": "/home/t/.st"}, 1000, "/home/t/.st/kommune"),
        ({"HOME": "/home/t", "XDG_STATE_HOME": "relative"}, 1000, "/home/t/.local/state/kommune"),
        ({"HOME": "/home/t"}, 1000, "/home/t/.local/state/kommune"),
    ],
)
def test_the_default_outbox_folder(environ: dict[str, str], euid: int, expected: str) -> None:
    site = parse(MINIMAL_SITE, environ=environ, euid=euid)
    assert site.outbox.dir == Path(expected) / "test-agent"


def test_relative_paths_count_from_the_site_files_folder(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "site.toml"
    path.parent.mkdir()
    path.write_text(
        MINIMAL_SITE.replace(
            "tls = false", 'ca = "certs/ca.pem"\nusername = "u"\npassword_file = "/abs/pw"'
        )
        + '[outbox]\ndir = "../state"\n'
    )
    site = S.load(path)
    assert site.source == path
    assert site.broker.ca == tmp_path / "conf" / "certs" / "ca.pem"
    assert site.broker.password_file == Path("/abs/pw")
    assert site.outbox.dir == tmp_path / "conf" / ".." / "state"


def test_values_are_normalised() -> None:
    site = parse(
        MINIMAL_SITE + '[[locks]]\nid = 7\nble = "c0:ff:ee:00:00:07"\n[health]\nbind = "[::1]:0"\n'
    )
    assert site.locks[0].ble == "C0:FF:EE:00:00:07"
    assert (site.health.host, site.health.port, site.health.bind) == ("::1", 0, "[::1]:0")


LINKS = '[[links]]\nid = "bus"\nserial = "/dev/ttyUSB0"\nnodes = [1, 2, 3]\n'

#: (what is added to or changed in the minimal site, the key named, words in the problem)
MALFORMED = [
    # uplink
    ("[uplink]\nwindow = 0", "uplink.window", "1-65535", "got 0"),
    ('[uplink]\ndeflate = "yes"', "uplink.deflate", "true or false", "'yes'"),
    ("[uplink.telemetry]\nbatch_age_s = -1", "uplink.telemetry.batch_age_s", "0-86400", ""),
    ("[uplink.audit]\nbatch_bytes = 10", "uplink.audit.batch_bytes", "64-1048576", "got 10"),
    ("[uplink.bulk]\nbatch_events = 1", "uplink.bulk", "unknown table", ""),
    # agent
    ('[agent]\nid = 5\nsite = "s"', "agent.id", "expected a name", "got 5"),
    ('[agent]\nid = "Edge"\nsite = "s"', "agent.id", "lowercase", "got 'Edge'"),
    ('[agent]\nid = "-x"\nsite = "s"', "agent.id", "not starting with '-'", ""),
    ('[agent]\nid = "a"\nsite = "s/t"', "agent.site", "expected a name", ""),
    ('[agent]\nsite = "s"', "agent.id", "required", ""),
    ('[agent]\nid = "a"', "agent.site", "required", ""),
    ("", "agent", "required: the [agent] table", ""),
    ('agent = "x"', "agent", "expected a table", "got 'x'"),
    ('[agent]\nid = "a"\nsite = "s"\nstop_timeout_s = 0', "agent.stop_timeout_s", "1-300", ""),
    ('[agent]\nid = "a"\nsite = "s"\nstop_timeout_s = "9"', "agent.stop_timeout_s", "", "'9'"),
    ('[agent]\nid = "a"\nsite = "s"\nnmae = 1', "agent.nmae", "unknown key", ""),
    # broker
    ("", "broker", "required: the [broker] table", ""),
    ("[broker]\ntls = false", "broker.host", "required", ""),
    ('[broker]\nhost = "mqtt://x"', "broker.host", "no scheme", "'mqtt://x'"),
    ('[broker]\nhost = "x:1883"', "broker.host", "no port", ""),
    ('[broker]\nhost = ""', "broker.host", "expected a host", ""),
    ('[broker]\nhost = "h"\nport = "x"', "broker.port", "expected an integer 1-65535", "'x'"),
    ('[broker]\nhost = "h"\nport = 0', "broker.port", "1-65535", "got 0"),
    ('[broker]\nhost = "h"\nport = 65536', "broker.port", "1-65535", "got 65536"),
    ('[broker]\nhost = "h"\nport = 1883.0', "broker.port", "integer", "got 1883.0"),
    ('[broker]\nhost = "h"\nport = true', "broker.port", "integer", "got true"),
    ('[broker]\nhost = "h"\nport = 1979-05-27', "broker.port", "integer", "date/time"),
    ('[broker]\nhost = "h"\nport = [1]', "broker.port", "integer", "an array"),
    ('[broker]\nhost = "h"\ntls = "yes"', "broker.tls", "true or false", "'yes'"),
    ('[broker]\nhost = "h"\ntls = false\nca = "c"', "broker.ca", "only with TLS", ""),
    ('[broker]\nhost = "h"\ncert = "c"', "broker.key", "required with broker.cert", ""),
    ('[broker]\nhost = "h"\nkey = "k"', "broker.cert", "required with broker.key", ""),
    ('[broker]\nhost = "h"\nca = 3', "broker.ca", "the path of", "got 3"),
    ('[broker]\nhost = "h"\npassword = "hunter2"', "broker.password", "password_file", ""),
    ('[broker]\nhost = "h"\nusername = 3', "broker.username", "a user name", ""),
    ('[broker]\nhost = "h"\npassword_file = "pw"', "broker.password_file", "username", ""),
    ('[broker]\nhost = "h"\nkeepalive_s = 1', "broker.keepalive_s", "5-65535", ""),
    ('[broker]\nhost = "h"\nsession_expiry_s = -1', "broker.session_expiry_s", "0-4294967295", ""),
    ('[broker]\nhost = "h"\nprot = 1', "broker.prot", "unknown key", "did you mean 'port'?"),
    # outbox
    ("[outbox]\ndisk_budget_mb = 1", "outbox.disk_budget_mb", "16-1048576", "got 1"),
    ("[outbox]\ndir = 5", "outbox.dir", "the path of", ""),
    ("[outbox.audit]\nmax_age_days = 3", "outbox.audit.max_age_days", "never dropped", ""),
    ("[outbox.telemetry]\nmax_rows = 0", "outbox.telemetry.max_rows", "1-1000000000", ""),
    ('[outbox.telemetry]\nmax_age_days = "week"', "outbox.telemetry.max_age_days", "", "'week'"),
    ("[outbox]\noccupancy = 5", "outbox.occupancy", "expected a table", "got 5"),
    ("[outbox.bulk]\nmax_rows = 1", "outbox.bulk", "unknown table", ""),
    ("[outbox.telemetry]\nmax_row = 1", "outbox.telemetry.max_row", "unknown", "'max_rows'"),
    # links
    ("links = 5", "links", "array of tables ([[links]])", "got 5"),
    ('[[links]]\nserial = "/dev/x"\nnodes = [1]', "links[1].id", "required", ""),
    (
        '[[links]]\nid = "a"\nserial = "/d"\nudp = "h:1"\nnodes = [1]',
        "links[1].udp",
        "not both",
        "",
    ),
    ('[[links]]\nid = "a"\nnodes = [1]', "links[1].serial", "required", "udp"),
    ('[[links]]\nid = "a"\nserial = "/d"\nnodes = [0]', "links[1].nodes", "1-61438", "got 0"),
    ('[[links]]\nid = "a"\nserial = "/d"\nnodes = [0xEFFF]', "links[1].nodes", "node ids", ""),
    ('[[links]]\nid = "a"\nserial = "/d"\nnodes = ["1"]', "links[1].nodes", "integers", ""),
    ('[[links]]\nid = "a"\nserial = "/d"\nnodes = [1, 1]', "links[1].nodes", "twice", ""),
    ('[[links]]\nid = "a"\nserial = "/d"\nnodes = []', "links[1].nodes", "at least one", ""),
    ('[[links]]\nid = "a"\nserial = "/d"', "links[1].nodes", "required", ""),
    ('[[links]]\nid = "a"\nudp = "nohost"\nnodes = [1]', "links[1].udp", "HOST:PORT", ""),
    ('[[links]]\nid = "a"\nudp = "1.2.3.4:0"\nnodes = [1]', "links[1].udp", "port 1-65535", ""),
    ('[[links]]\nid = "a"\nudp = "h:1"\nbaud = 9600\nnodes = [1]', "links[1].baud", "serial", ""),
    ('[[links]]\nid = "a"\nserial = "/d"\nbaud = 12\nnodes = [1]', "links[1].baud", "300-", ""),
    (LINKS + LINKS.replace("[1, 2, 3]", "[4]"), "links[2].id", "also links[1]", ""),
    (LINKS + LINKS.replace('"bus"', '"b2"'), "links[2].nodes", "node 1 is also on", "'bus'"),
    # locks
    ('[[locks]]\nid = 0\nble = "C0:FF:EE:00:00:01"', "locks[1].id", "1-4294967295", ""),
    ('[[locks]]\nid = 4294967296\nble = "C0:FF:EE:00:00:01"', "locks[1].id", "1-", ""),
    ('[[locks]]\nid = 1\nble = "xx"', "locks[1].ble", "a BLE address", "'xx'"),
    ("[[locks]]\nid = 1", "locks[1].ble", "required", ""),
    ('[[locks]]\nble = "C0:FF:EE:00:00:01"', "locks[1].id", "required", ""),
    (
        '[[locks]]\nid = 1\nble = "C0:FF:EE:00:00:01"\n'
        '[[locks]]\nid = 1\nble = "C0:FF:EE:00:00:02"',
        "locks[2].id",
        "also locks[1]",
        "",
    ),
    (
        '[[locks]]\nid = 1\nble = "C0:FF:EE:00:00:01"\n'
        '[[locks]]\nid = 2\nble = "c0:ff:ee:00:00:01"',
        "locks[2].ble",
        "also locks[1]",
        "",
    ),
    # streets
    (LINKS + "[[streets]]\nlamps = [1]", "streets[1].name", "required", ""),
    (
        LINKS + '[[streets]]\nname = "s"\nlamps = [9]',
        "streets[1].lamps",
        "node 9 is on no link",
        "",
    ),
    (LINKS + '[[streets]]\nname = "s"', "streets[1].lamps", "lamps, bays or both", ""),
    (LINKS + '[[streets]]\nname = "s"\nbays = "all"', "streets[1].bays", "array", "'all'"),
    (LINKS + '[[streets]]\nname = "s"\nlamp = [1]', "streets[1].lamp", "unknown", "'lamps'"),
    (
        LINKS + '[[streets]]\nname = "s"\nlamps = [1]\n[[streets]]\nname = "t"\nbays = [1]',
        "streets[2].bays",
        "node 1 is also in street 's'",
        "",
    ),
    (
        LINKS + '[[streets]]\nname = "s"\nlamps = [1]\n[[streets]]\nname = "s"\nlamps = [2]',
        "streets[2].name",
        "also streets[1]",
        "",
    ),
    # health and the top level
    ('[health]\nbind = "9470"', "health.bind", "HOST:PORT", "'9470'"),
    ('[health]\nbind = "127.0.0.1:99999"', "health.bind", "port 0-65535", ""),
    ('[health]\nbind = "[nope]:1"', "health.bind", "HOST:PORT", ""),
    ("[health]\nbind = 9470", "health.bind", "HOST:PORT", "got 9470"),
    ("[health]\nport = 1", "health.port", "unknown key", ""),
    ('[brokers]\nhost = "h"', "brokers", "unknown table", "did you mean 'broker'?"),
    ("debug = true", "debug", "unknown key", ""),
]


AGENT_BLOCK, BROKER_BLOCK = MINIMAL_SITE.split("\n\n")


def _site_with(change: str, key: str) -> str:
    """The minimal site with `change`: it replaces the [agent] or [broker] table it
    starts with; "" drops the table `key` names; top-level keys go first; tables last."""
    agent, broker = AGENT_BLOCK + "\n", BROKER_BLOCK
    if change == "":
        return broker if key == "agent" else agent
    if change.startswith(("[agent]", "agent =")):
        return change + "\n\n" + broker
    if change.startswith("[broker]"):
        return agent + "\n" + change + "\n"
    if not change.startswith("["):
        return change + "\n\n" + agent + "\n" + broker
    return agent + "\n" + broker + change + "\n"


@pytest.mark.parametrize(
    ("change", "key", "words", "got"),
    MALFORMED,
    ids=[f"{key}-{i}" for i, (_, key, _, _) in enumerate(MALFORMED)],
)
def test_a_problem_names_its_key(change: str, key: str, words: str, got: str) -> None:
    found = problems(_site_with(change, key))
    for problem in found:
        assert KEY_LINE.fullmatch(problem), f"not one line led by a key: {problem!r}"
    about_key = [p for p in found if p.startswith(f"{key}: ")]
    assert about_key, f"no problem names {key}: {found}"
    assert any(words in p and got in p for p in about_key), about_key


def test_every_problem_is_collected() -> None:
    text = (
        "typo = 1\n"
        + MINIMAL_SITE.replace('"localhost"', '"h"\nport = "x"\nkeepalive_s = 0')
        + '[health]\nbind = "nope"\n[[locks]]\nid = -1\nble = "C0:FF:EE:00:00:01"\nblue = 1\n'
    )
    found = problems(text)
    keys = sorted(p.split(":")[0] for p in found)
    assert keys == [
        "broker.keepalive_s",
        "broker.port",
        "health.bind",
        "locks[1].blue",
        "locks[1].id",
        "typo",
    ]


def _leaves(doc: Any, path: str = "") -> list[tuple[str, list[str | int]]]:
    """Every key path in a TOML document (tables too), with how to reach it."""
    found: list[tuple[str, list[str | int]]] = []

    def walk(value: Any, shown: str, route: list[str | int]) -> None:
        if route:
            found.append((shown, route))
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{shown}.{k}" if shown else k, [*route, k])
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, v in enumerate(value, 1):
                for k, inner in v.items():
                    walk(inner, f"{shown}[{i}].{k}", [*route, i - 1, k])

    walk(doc, path, [])
    return found


SAMPLE_DOC = tomllib.loads(SAMPLE_SITE.read_text())


@pytest.mark.parametrize(
    ("key", "route"), _leaves(SAMPLE_DOC), ids=[k for k, _ in _leaves(SAMPLE_DOC)]
)
def test_a_wrong_type_anywhere_in_the_sample_names_that_key(
    key: str, route: list[str | int]
) -> None:
    doc = copy.deepcopy(SAMPLE_DOC)
    holder: Any = doc
    for step in route[:-1]:
        holder = holder[step]
    value = holder[route[-1]]
    holder[route[-1]] = "x" if not isinstance(value, str) else 12345
    if isinstance(value, list) and not (value and isinstance(value[0], dict)):
        holder[route[-1]] = ["x"]
    with pytest.raises(S.SiteError) as caught:
        S.from_document(doc, source=SAMPLE_SITE, environ=ENV, euid=1000)
    assert any(p.startswith(f"{key}: ") for p in caught.value.problems), caught.value.problems


@pytest.mark.parametrize(
    ("key", "route"), _leaves(SAMPLE_DOC), ids=[k for k, _ in _leaves(SAMPLE_DOC)]
)
def test_an_unknown_key_beside_any_key_is_refused(key: str, route: list[str | int]) -> None:
    doc = copy.deepcopy(SAMPLE_DOC)
    holder: Any = doc
    for step in route[:-1]:
        holder = holder[step]
    holder["zzz_unknown"] = 1
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    with pytest.raises(S.SiteError) as caught:
        S.from_document(doc, source=SAMPLE_SITE, environ=ENV, euid=1000)
    assert caught.value.problems == (f"{parent}zzz_unknown: unknown key",)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("x = [1,\n2\n[a]\n", 3),
        ('[agent]\nid = "a\n', 2),
        ("[agent]\n[agent]\n", 2),
        ("a = 1\na = 2\n", 2),
        ("[broker\n", 1),
        ("\n\n\nport = \n", 4),
        ("[agent]\nid = 'a'\nsite = 's'\n\n[broker]\nhost = localhost\n", 6),
    ],
)
def test_bad_toml_is_one_line_with_its_line_number(text: str, line: int) -> None:
    found = problems(text)
    assert len(found) == 1
    assert re.fullmatch(rf"line {line}, column \d+: [^\n]+ \(not valid TOML\)", found[0]), found


def test_text_that_is_not_utf8_gives_its_line() -> None:
    with pytest.raises(S.SiteError, match=r"^line 2: not UTF-8 text \(byte 0xff\)$"):
        S.parse(b'[agent]\nid = "\xff"\n', source=Path("s.toml"))


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(S.SiteError, match=r"^cannot read it: No such file or directory$"):
        S.load(tmp_path / "nope.toml")


def test_the_password_comes_from_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\nignored\n")
    text = MINIMAL_SITE + f'password_file = "{secret}"\nusername = "u"\n'
    assert S.read_password(parse(text).broker) == "s3cret"
    assert S.read_password(parse(MINIMAL_SITE).broker) is None
    secret.write_text("\n")
    with pytest.raises(S.SiteError, match=rf"^broker.password_file: {secret}: the first line"):
        S.read_password(parse(text).broker)
    secret.unlink()
    with pytest.raises(S.SiteError, match=rf"^broker.password_file: {secret}: No such file"):
        S.read_password(parse(text).broker)


def test_uplink_settings_reach_the_uplink_over_its_defaults() -> None:
    from kommune.edge.agent.uplink_part import uplink_config
    from kommune.edge.uplink.batcher import DEFAULT_POLICIES

    text = MINIMAL_SITE + (
        "[uplink]\nwindow = 3\ndeflate = false\n"
        "[uplink.telemetry]\nbatch_age_s = 2.5\nbatch_events = 40\n"
    )
    config = uplink_config(
        S.parse(text.encode(), source=Path("/etc/site.toml"), environ=ENV, euid=1000)
    )
    assert (config.window, config.deflate) == (3, False)
    telemetry = config.policies[Priority.TELEMETRY]
    assert (telemetry.max_age_s, telemetry.max_events) == (2.5, 40)
    assert telemetry.max_bytes == DEFAULT_POLICIES[Priority.TELEMETRY].max_bytes
    assert config.policies[Priority.AUDIT] == DEFAULT_POLICIES[Priority.AUDIT]
