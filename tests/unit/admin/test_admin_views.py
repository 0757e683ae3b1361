"""Pure pieces of the admin API: secret masking, reload summaries, loopback rules, the
token file, and reading the admin address leniently for ``lbd reload``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lbd.admin.auth import TokenFile, is_loopback
from lbd.admin.client import admin_target, connect_host, format_address
from lbd.admin.reload import ReloadResult, config_changes
from lbd.admin.views import MASK, _mask, masked_config
from lbd.config import load_config_text

BASE = """
admin: {address: "127.0.0.1:9911", token_file: /etc/lbd/admin.token}
pools:
  web:
    match: {path_prefix: /, headers: {x-api-key: k-123}}
    balancer: {algorithm: consistent_hash, hash_on: header, key: x-user}
    backends:
      - {url: "http://10.0.0.1:8000", name: a}
      - {url: "http://10.0.0.2:8000", name: b}
  old:
    match: {path_prefix: /old}
    backends: [{url: "http://10.0.0.3:8000"}]
"""


def test_masking_hides_secret_named_leaves_and_url_credentials_but_walks_mappings():
    document = {
        "admin": {"token_file": "/etc/lbd/admin.token", "address": "127.0.0.1:9901"},
        "cache": {"store": "redis://user:hunter2@redis:6379/0", "password": None, "api_keys": ["a", "b"]},
        "pools": {"keys": {"match": {"headers": {"Authorization": "Bearer x", "x-tenant": "t1"}},
                           "auth": {"keys": [{"tenant": "t1", "sha256": "ab12"}], "header": "authorization"}}},
        "client_secret": 42,
    }
    assert _mask(document) == {
        "admin": {"token_file": MASK, "address": "127.0.0.1:9901"},
        "cache": {"store": f"redis://{MASK}@redis:6379/0", "password": None, "api_keys": [MASK, MASK]},
        "pools": {"keys": {"match": {"headers": {"Authorization": MASK, "x-tenant": "t1"}},
                           "auth": {"keys": [{"tenant": MASK, "sha256": MASK}], "header": "authorization"}}},
        "client_secret": MASK,
    }


def test_masked_config_is_the_whole_effective_config():
    masked = masked_config(load_config_text(BASE))
    assert masked["admin"] == {"address": "127.0.0.1:9911", "token_file": MASK, "enabled": True}
    assert masked["pools"]["web"]["match"]["headers"] == {"x-api-key": MASK}
    assert masked["pools"]["web"]["balancer"]["key"] == MASK  # named like a secret: masked, as the rule says
    assert masked["pools"]["web"]["retry"]["attempts"] == 3
    assert masked["listen"][0]["address"] == "0.0.0.0:8080"


def test_config_changes_name_pools_backends_and_settings():
    old = load_config_text(BASE)
    new = load_config_text("""
admin: {address: "127.0.0.1:9911", token_file: /etc/lbd/admin.token}
log: {level: debug}
pools:
  web:
    match: {path_prefix: /, headers: {x-api-key: k-123}}
    balancer: {algorithm: consistent_hash, hash_on: client_ip}
    backends:
      - {url: "http://10.0.0.1:8000", name: a}
      - {url: "http://10.0.0.2:8000", name: b, weight: 3}
      - {url: "http://10.0.0.4:8000", name: c}
  new:
    retry: {attempts: 2}
    backends: [{url: "http://10.0.0.5:8000"}]
""")
    changes = config_changes(old, new)
    assert changes == {
        "pools_added": ["new"], "pools_removed": ["old"], "settings_changed": ["log"],
        "pools_changed": {"web": {"backends_added": ["c"], "backends_changed": ["b"], "settings": ["balancer"]}},
    }
    assert config_changes(old, load_config_text(BASE)) == {"pools_added": [], "pools_removed": [],
                                                          "pools_changed": {}, "settings_changed": []}
    described = ReloadResult.applied(changes).describe()
    assert described == ("reloaded: pools added: new; pools removed: old; pool web: backends added: c; "
                         "backends changed: b; settings: balancer; settings changed: log")


def test_reload_result_reads_as_a_bool_and_describes_refusals():
    refused = ReloadResult.refused(["pools.web.retry.attempts: must be >= 1 (line 7)"])
    assert not refused and ReloadResult.applied({})
    assert refused.describe() == "reload refused; nothing changed:\n  pools.web.retry.attempts: must be >= 1 (line 7)"
    assert refused.to_json()["errors"] == ["pools.web.retry.attempts: must be >= 1 (line 7)"]


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("10.1.2.3", False), ("admin.internal", False), ("", False),
])
def test_loopback(host: str, loopback: bool):
    assert is_loopback(host) is loopback


def test_token_file_is_read_again_when_it_changes_and_fails_closed(tmp_path: Path):
    path = tmp_path / "token"
    path.write_text("  first\n")
    tokens = TokenFile(str(path))
    assert tokens.current() == b"first"
    path.write_text("second-token\n")
    os.utime(path, ns=(1, 1))  # a new mtime even on coarse-grained clocks
    assert tokens.current() == b"second-token"
    path.unlink()
    assert tokens.current() == b""
    assert TokenFile(None).current() is None
    path.write_text("\n")
    assert TokenFile(str(path)).current() == b""  # empty: matches nothing


def test_admin_target_reads_the_file_leniently(tmp_path: Path):
    path = tmp_path / "lbd.yaml"
    path.write_text("admin: {address: '0.0.0.0:9999', token_file: /run/t}\npools: {web: {retry: {attempts: 0}}}\n")
    assert admin_target(path) == ("0.0.0.0:9999", "/run/t")  # invalid for the daemon, readable here
    path.write_text("pools: [unclosed\n")
    assert admin_target(path) == ("127.0.0.1:9901", None)
    assert admin_target(tmp_path / "missing.yaml") == ("127.0.0.1:9901", None)
    assert (connect_host("0.0.0.0"), connect_host("::"), connect_host("10.0.0.1")) == ("127.0.0.1", "::1", "10.0.0.1")
    assert format_address("::1", 9901) == "[::1]:9901"
