"""`lbd check` and `lbd schema` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.procs import ROOT


def lbd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lbd", *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_check_accepts_a_good_file_like_nginx_t():
    result = lbd("check", "conf/lbd.yaml")
    assert result.returncode == 0
    assert "test is successful" in result.stdout


def test_check_loads_certificates_as_nginx_t_does():
    # The annotated example names certificate files this machine does not have.
    result = lbd("check", "conf/lbd.example.yaml")
    assert result.returncode == 1
    assert "listen.1.tls: cannot load the certificate" in result.stderr


def test_check_rejects_a_bad_file_with_path_named_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools:\n  minilm:\n    balancer: {algorithm: round-robbin}\n"
                   "    backends: [{url: 'http://127.0.0.1:1'}]\n")
    result = lbd("check", str(bad))
    assert result.returncode == 1
    assert f"{bad}: pools.minilm.balancer.algorithm: unknown 'round-robbin'; known: " in result.stderr
    assert "(line 3)" in result.stderr and "test failed" in result.stderr


def test_check_of_a_missing_file_fails_cleanly(tmp_path):
    result = lbd("check", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1 and "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_schema_validates_the_example_and_rejects_typos():
    import jsonschema
    import yaml

    result = lbd("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    names = {variant["title"] for variant in schema["$defs"]["BalancerConfig"]["oneOf"]}
    assert {"round_robin", "peak_ewma", "consistent_hash"} <= names
    example = yaml.safe_load((ROOT / "conf" / "lbd.example.yaml").read_text())
    jsonschema.validate(example, schema)
    example["pools"]["minilm"]["balancer"]["algorithm"] = "round-robbin"
    try:
        jsonschema.validate(example, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the schema accepted an unknown algorithm")
