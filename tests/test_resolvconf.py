"""resolv.conf parsing and the search order, as glibc reads and applies them."""

from __future__ import annotations

from pathlib import Path

import pytest

from egresswatch.addresses import Nameserver
from egresswatch.probes.resolvconf import (
    ResolvConf,
    load_resolv_conf,
    parse_resolv_conf,
)

AKS_SEARCH = ("default.svc.cluster.local", "svc.cluster.local", "cluster.local")


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("10.0.0.10", "10.0.0.10", 53),
        ("127.0.0.1:5353", "127.0.0.1", 5353),
        ("127.0.0.1#5353", "127.0.0.1", 5353),
        ("::1", "::1", 53),
        ("[::1]:5353", "::1", 5353),
        ("::1#5353", "::1", 5353),
        ("[::1]#5353", "::1", 5353),
        ("2001:DB8::A", "2001:db8::a", 53),
        (" 10.0.0.10 ", "10.0.0.10", 53),
    ],
)
def test_nameserver_parse(text: str, host: str, port: int) -> None:
    assert Nameserver.parse(text) == Nameserver(host, port)


@pytest.mark.parametrize(
    "text",
    ["dns.example", "", "10.0.0.10:0", "10.0.0.10:65536", "10.0.0.10#", "10.0.0.10#x", "[::1",
     "[::1]5353", "300.1.1.1"],
)  # fmt: skip
def test_nameserver_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="nameserver"):
        Nameserver.parse(text)


@pytest.mark.parametrize(
    ("nameserver", "text"),
    [
        (Nameserver("10.0.0.10"), "10.0.0.10"),
        (Nameserver("127.0.0.1", 5353), "127.0.0.1:5353"),
        (Nameserver("::1"), "::1"),
        (Nameserver("::1", 5353), "[::1]:5353"),
    ],
)
def test_nameserver_str(nameserver: Nameserver, text: str) -> None:
    assert str(nameserver) == text
    assert Nameserver.parse(text) == nameserver


def test_parses_an_aks_pod_resolv_conf() -> None:
    conf = parse_resolv_conf(
        "# written by the kubelet\n"
        "search default.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.0.0.10\n"
        "options ndots:5 timeout:3 attempts:4\n"
    )
    assert conf == ResolvConf(
        nameservers=(Nameserver("10.0.0.10"),),
        search=AKS_SEARCH,
        ndots=5,
        timeout_s=3.0,
        attempts=4,
    )


def test_defaults_without_any_setting() -> None:
    """No nameserver line means glibc's default, 127.0.0.1:53; the options keep theirs."""
    conf = parse_resolv_conf("")
    assert conf == ResolvConf(nameservers=(Nameserver("127.0.0.1", 53),))
    assert (conf.search, conf.ndots, conf.timeout_s, conf.attempts) == ((), 1, 5.0, 2)


def test_comments_and_odd_lines_are_ignored() -> None:
    conf = parse_resolv_conf(
        "; a comment\n"
        "# nameserver 10.9.9.9\n"
        "nameserver 10.0.0.10   # kube-dns\n"
        "nameserver 10.0.0.11 ; the other one\n"
        "nameserver\n"  # no value
        "sortlist 130.155.160.0/255.255.240.0\n"  # a keyword we do not use
        "lookup file bind\n"
        "\n"
        "   \n"
        "search a.example ;b.example\n"
    )
    assert conf.nameservers == (Nameserver("10.0.0.10"), Nameserver("10.0.0.11"))
    assert conf.search == ("a.example",)


def test_port_forms_for_loopback_test_servers() -> None:
    conf = parse_resolv_conf(
        "nameserver 127.0.0.1#5353\nnameserver 127.0.0.2:5354\nnameserver [::1]:5355\n"
    )
    assert conf.nameservers == (
        Nameserver("127.0.0.1", 5353),
        Nameserver("127.0.0.2", 5354),
        Nameserver("::1", 5355),
    )


def test_at_most_three_nameservers_and_bad_ones_do_not_count() -> None:
    conf = parse_resolv_conf(
        "nameserver not-an-ip\n"
        "nameserver 10.0.0.1\n"
        "nameserver 10.0.0.2\n"
        "nameserver 10.0.0.3:99999\n"
        "nameserver 10.0.0.4\n"
        "nameserver 10.0.0.5\n"
    )
    assert [str(n) for n in conf.nameservers] == ["10.0.0.1", "10.0.0.2", "10.0.0.4"]


def test_only_bad_nameservers_fall_back_to_the_default() -> None:
    assert parse_resolv_conf("nameserver dns.example\n").nameservers == (Nameserver("127.0.0.1"),)


@pytest.mark.parametrize(
    ("text", "search"),
    [
        ("search a.example b.example\ndomain c.example\n", ("c.example",)),
        ("domain c.example\nsearch a.example b.example\n", ("a.example", "b.example")),
        ("search a.example\nsearch b.example\n", ("b.example",)),
        ("domain c.example d.example\n", ("c.example",)),  # domain takes one name
        ("search a.example. . b.example\n", ("a.example", "b.example")),
    ],
)
def test_last_search_or_domain_line_wins(text: str, search: tuple[str, ...]) -> None:
    assert parse_resolv_conf(text).search == search


@pytest.mark.parametrize(
    ("options", "ndots", "timeout_s", "attempts"),
    [
        ("ndots:15 timeout:30 attempts:5", 15, 30.0, 5),
        ("ndots:16 timeout:31 attempts:6", 15, 30.0, 5),  # glibc's caps
        ("ndots:99 timeout:600 attempts:100", 15, 30.0, 5),
        ("ndots:0 timeout:0 attempts:0", 0, 1.0, 1),  # glibc waits at least a second
        ("ndots:x timeout:-1 attempts: rotate edns0", 1, 5.0, 2),  # malformed: ignored
        ("single-request-reopen ndots:2", 2, 5.0, 2),
    ],
)
def test_options_and_their_limits(
    options: str, ndots: int, timeout_s: float, attempts: int
) -> None:
    conf = parse_resolv_conf(f"nameserver 10.0.0.10\noptions {options}\n")
    assert (conf.ndots, conf.timeout_s, conf.attempts) == (ndots, timeout_s, attempts)


def test_options_lines_accumulate() -> None:
    conf = parse_resolv_conf("options ndots:5\noptions attempts:3\noptions ndots:4\n")
    assert (conf.ndots, conf.attempts) == (4, 3)


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.1#5353\nsearch svc.cluster.local\noptions ndots:2\n")
    conf = load_resolv_conf(path)
    assert conf.nameservers == (Nameserver("127.0.0.1", 5353),)
    assert (conf.search, conf.ndots) == (("svc.cluster.local",), 2)


def test_load_names_the_path_when_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "resolv.conf"
    with pytest.raises(OSError, match=r"resolv\.conf") as caught:
        load_resolv_conf(path)
    assert caught.value.filename == str(path)


# The search order of glibc's res_search, for an AKS pod (ndots:5, three search domains).
AKS = ResolvConf(nameservers=(Nameserver("10.0.0.10"),), search=AKS_SEARCH, ndots=5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (  # fewer dots than ndots: search domains first, as-is last
            "web",
            [
                "web.default.svc.cluster.local.",
                "web.svc.cluster.local.",
                "web.cluster.local.",
                "web.",
            ],
        ),
        (
            "login.microsoftonline.com",
            [
                "login.microsoftonline.com.default.svc.cluster.local.",
                "login.microsoftonline.com.svc.cluster.local.",
                "login.microsoftonline.com.cluster.local.",
                "login.microsoftonline.com.",
            ],
        ),
        (  # ndots (5) dots or more: as-is first, then the search domains
            "a.b.c.d.e.example",
            [
                "a.b.c.d.e.example.",
                "a.b.c.d.e.example.default.svc.cluster.local.",
                "a.b.c.d.e.example.svc.cluster.local.",
                "a.b.c.d.e.example.cluster.local.",
            ],
        ),
        ("login.microsoftonline.com.", ["login.microsoftonline.com."]),  # absolute: only as is
    ],
)
def test_candidates_in_res_search_order(name: str, expected: list[str]) -> None:
    assert AKS.candidates(name) == expected


def test_candidates_with_default_ndots_and_no_search_list() -> None:
    plain = ResolvConf(nameservers=(Nameserver("10.0.0.10"),))
    assert plain.candidates("web") == ["web."]
    assert plain.candidates("web.example") == ["web.example."]


def test_candidates_with_ndots_zero_try_as_is_first() -> None:
    conf = ResolvConf(nameservers=(Nameserver("10.0.0.10"),), search=("corp.example",), ndots=0)
    assert conf.candidates("web") == ["web.", "web.corp.example."]


def test_an_unchanged_file_is_parsed_once_and_a_changed_one_again(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.53\n")
    first = load_resolv_conf(path)
    assert load_resolv_conf(path) is first  # one stat, no read, while the file stays as it was
    path.write_text("nameserver 127.0.0.54\noptions ndots:5\n")  # edited in place: another size
    edited = load_resolv_conf(path)
    assert [n.host for n in edited.nameservers] == ["127.0.0.54"] and edited.ndots == 5
    fresh = tmp_path / "resolv.conf.new"
    fresh.write_text("nameserver 127.0.0.55\noptions ndots:5\n")  # the same size, a new inode
    fresh.replace(path)  # as the kubelet replaces it
    assert [n.host for n in load_resolv_conf(path).nameservers] == ["127.0.0.55"]
    path.unlink()
    with pytest.raises(FileNotFoundError) as raised:
        load_resolv_conf(path)
    assert raised.value.filename == str(path)
