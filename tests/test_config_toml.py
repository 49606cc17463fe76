"""`perfctl config` prints TOML that reads back: `perfctl config > f.toml && perfd
--check-config f.toml` passes with every section set, and f.toml holds the same config (its
redacted secrets as the placeholder "<redacted>", which perfd accepts; docs/config.md)."""

from __future__ import annotations

import json
import math
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from perfctl.format import toml as format_toml
from perfd import config
from perfd.wire import keys
from tests.conftest import StartPerfd, clean_env, command
from tests.httpservers import closed_port


def test_toml_writer_reads_back() -> None:
    """Keys that are not bare are quoted; None is left out; strings escape quotes,
    backslashes, control characters and DEL; lists of tables are inline tables."""
    data: dict[str, Any] = {
        "plain": 1,
        "unset": None,
        "flag": True,
        "ratio": 0.25,
        "big": 1e20,
        "forever": -1.0,
        "not a number": math.inf,
        "text": 'quote " back \\ tab \t nl \n bell \x07 del \x7f é 😀',
        "names": ["alice", "1001"],
        "mixed": [{"a": 1, "b": None}, {}, [1, 2]],
        "models": {
            "llama-3.1-8b": {"device": "cpu", "keep_alive": None, "options": {}},
            'odd "name"': {"options": {"a.b": {"c d": "e"}}},
        },
    }
    lines: list[str] = []
    format_toml.document(data, lines)
    back = tomllib.loads("\n".join(lines))
    expected = json.loads(json.dumps(data, default=str))
    del expected["unset"], expected["models"]["llama-3.1-8b"]["keep_alive"]
    del expected["mixed"][0]["b"]
    expected["not a number"] = math.inf
    assert back == expected


def full_config(tmp_path: Path, *, secrets: bool) -> str:
    """A config with every section and every kind of value set."""
    keygen = [*command("perfctl"), "keygen"]
    for name in ("server", "client"):
        subprocess.run(
            [*keygen, str(tmp_path / name)], check=True, capture_output=True, env=clean_env()
        )
    public = keys.read_pair(tmp_path / "client.key").public.decode()
    (tmp_path / "ak").write_text(f"{public} admin ops\n")
    port = closed_port()
    hook = f"http://127.0.0.1:{port}/hook"
    if secrets:
        hook = f"http://u:HookPass1@127.0.0.1:{port}/services/T0123ABCD/B0123ABCD/Xy12Zz?token=t0k"
    api_key = 'api_key = "OptKey123", ' if secrets else ""
    return f"""
runtime_dir = "{tmp_path}/rd"
[log]
level = "debug"
format = "json"
file = "{tmp_path}/file.log"
[server]
group = "perfd"
workers = 3
max_message_bytes = "2MiB"
max_admin_message_bytes = "8MiB"
max_in_flight = 10
command_timeout = "30s"
shutdown_timeout = "5s"
[access]
admin_users = ["root", "1234"]
admin_groups = ["wheel"]
[remote]
listen = "tcp://127.0.0.1:0"
secret_key_file = "{tmp_path}/server.key_secret"
authorized_keys = "{tmp_path}/ak"
[monitor]
interval = "2s"
history = "2h"
trend_window = "10m"
trend_noise_percent = 2.5
top_processes = 3
processes_interval = "1m"
gpu = false
nvml_timeout = "1500ms"
[alerts]
history = 50
log_file = "{tmp_path}/alerts.log"
[alerts.host_memory]
warn = 97.5
crit = 99
clear = 3
for = "1m"
repeat = "2h"
[alerts.swap]
enabled = false
[alerts.psi]
warn = 20
[alerts.gpu_memory]
crit = 99.5
[alerts.gpu_temperature]
warn = 85
crit = 95
[alerts.exhaustion]
free_below = 10
warn = "1h"
crit = "5m"
[alerts.webhook]
url = "{hook}"
queue = 10
timeout = "2s"
retries = 1
token_env = "HOOK_TOKEN"
resend = "2m"
[alerts.alertmanager]
url = "http://127.0.0.1:{port}"
resend = "30s"
[cache]
ram_budget = "40%"
gpu_budget = "8GiB"
max_models = 4
keep_alive = "forever"
load_timeout = "2m"
high_watermark = 85
low_watermark = 70
housekeeping = "2s"
evictions_history = 10
[models."llama-3.1-8b"]
loader = "openai"
provider = "or"
model = "meta-llama/llama-3.1-8b-instruct"
options = {{ {api_key}temperature = 0.2, stop = ["a", "b"], nested = {{ x = 1 }} }}
[models.plain]
target = "json:loads"
size_hint = "1GiB"
[models.file]
loader = "onnx"
path = "{tmp_path}/none.onnx"
device = "cpu"
keep_alive = "10m"
pin = true
[metrics]
listen = "127.0.0.1:{closed_port()}"
[providers.or]
base_url = "{"http://user:ApiPass1@127.0.0.1:1/v1" if secrets else "http://127.0.0.1:1/v1"}"
api_key_env = "OR_KEY"
pool_maxsize = 2
retries = 1
connect_retries = 1
read_retries = 0
status_retries = 1
backoff_factor = 0.1
backoff_jitter = 0
backoff_max = "5s"
connect_timeout = "1s"
read_timeout = "10s"
referer = "https://example.org"
title = "perfd tests"
"""


@pytest.mark.parametrize("secrets", [False, True], ids=["plain", "with-secrets"])
def test_perfctl_config_round_trips(start_perfd: StartPerfd, tmp_path: Path, secrets: bool) -> None:
    """`perfctl config > f.toml && perfd --check-config f.toml` passes with models,
    providers, sinks, remote and every section set; f.toml loads to the same config, its
    secrets (if any) redacted to "<redacted>" and redacted again to themselves."""
    perfd = start_perfd(full_config(tmp_path, secrets=secrets))
    printed = perfd.ctl("config")
    assert printed.returncode == 0, printed.stderr
    assert "null" not in printed.stdout
    copy = tmp_path / "f.toml"
    copy.write_text(printed.stdout)
    check = subprocess.run(
        [*command("perfd"), "--check-config", str(copy)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )
    assert check.returncode == 0, check.stderr + printed.stdout
    original = config.load(perfd.config_path).config
    back = config.load(copy).config
    assert config.to_dict(back) == config.to_dict(original)
    if secrets:
        assert "<redacted>" in printed.stdout
        assert "HookPass1" not in printed.stdout
        assert back != original  # the secrets did not come back: placeholders did
    else:
        assert back == original  # nothing redacted: every value came back as it was
