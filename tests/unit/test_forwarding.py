"""Who the client is behind a gateway: only what trusted proxies say is believed."""

from __future__ import annotations

import pytest

from coordinator.core.forwarding import clean_prefix, parse_trusted, resolve

TRUSTED = parse_trusted("10.0.0.0/8, 192.168.1.7")


def test_an_untrusted_peer__its_headers_are_ignored() -> None:
    headers = {"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"}
    assert resolve("203.0.113.9", headers, TRUSTED) is None
    assert resolve("10.0.0.1", headers, ()) is None  # nothing trusted: nothing believed


def test_the_client__is_the_rightmost_address_that_is_not_a_trusted_proxy() -> None:
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7, 10.1.1.1"}
    seen = resolve("10.0.0.2", headers, TRUSTED)
    assert seen is not None
    # 6.6.6.6 was written by the client itself: it cannot get past our proxies.
    assert seen.client == "203.0.113.7"


def test_a_chain_of_trusted_proxies_only__the_leftmost_is_the_client() -> None:
    seen = resolve("10.0.0.2", {"X-Forwarded-For": "10.9.9.9, 192.168.1.7"}, TRUSTED)
    assert seen is not None
    assert seen.client == "10.9.9.9"


def test_no_chain__the_peer_is_the_client() -> None:
    seen = resolve("10.0.0.2", {}, TRUSTED)
    assert seen is not None
    assert (seen.client, seen.scheme, seen.host, seen.prefix) == ("10.0.0.2", None, None, "")


def test_scheme_host_and_prefix__as_the_nearest_proxy_says() -> None:
    headers = {
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Proto": "http, HTTPS",
        "X-Forwarded-Host": "tcc.example.com",
        "X-Forwarded-Prefix": "/tcc/",
    }
    seen = resolve("10.0.0.2", headers, TRUSTED)
    assert seen is not None
    assert (seen.scheme, seen.host, seen.prefix) == ("https", "tcc.example.com", "/tcc")


@pytest.mark.parametrize("prefix", ["tcc", "/tcc?x=1", "/a b", "//evil.example", "/tcc/../x\r\n"])
def test_a_prefix_that_is_no_clean_path__is_ignored(prefix: str) -> None:
    seen = resolve("10.0.0.2", {"X-Forwarded-Prefix": prefix}, TRUSTED)
    assert seen is not None
    assert seen.prefix == ""


def test_a_scheme_other_than_http_or_https__is_ignored() -> None:
    seen = resolve("10.0.0.2", {"X-Forwarded-Proto": "javascript"}, TRUSTED)
    assert seen is not None
    assert seen.scheme is None


def test_the_standard_forwarded_header() -> None:
    headers = {
        "Forwarded": 'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https;host=tcc.example.com,'
        " for=10.1.1.1;proto=https;host=tcc.example.com"
    }
    seen = resolve("10.0.0.2", headers, TRUSTED)
    assert seen is not None
    assert (seen.client, seen.scheme, seen.host) == ("2001:db8::7", "https", "tcc.example.com")


def test_an_obfuscated_hop__the_last_known_address_stands() -> None:
    seen = resolve("10.0.0.2", {"Forwarded": "for=_hidden, for=10.1.1.1"}, TRUSTED)
    assert seen is not None
    assert seen.client == "10.1.1.1"


def test_configuration__checked() -> None:
    assert clean_prefix(None) == ""
    assert clean_prefix("/") == ""
    assert clean_prefix("/tcc/") == "/tcc"
    assert clean_prefix("/ops/tcc") == "/ops/tcc"
    for bad in ("tcc", "/tcc?x", "/a b"):
        with pytest.raises(ValueError, match="path prefix"):
            clean_prefix(bad)
    with pytest.raises(ValueError, match="trusted proxy"):
        parse_trusted("10.0.0.0/8, nginx")
