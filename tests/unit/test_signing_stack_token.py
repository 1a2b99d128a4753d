"""``datapunk up``'s SoftHSM2 signing token: made once under the data directory with
random PINs kept as private secret files, found again on the next start, and left alone
when the operator manages secrets or the token. Checked with the real softhsm2-util and
SoftHSM2 library, from a separate process (PKCS#11 logins are per process)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from datapunk_shared.config import Settings
from datapunk_stack.layout import Layout, StackError
from datapunk_stack.signing_token import SO_PIN_SECRET, nexus_environment

_LOGIN = """
import json, sys, pkcs11
args = json.load(sys.stdin)
token = pkcs11.lib(args["module"]).get_token(token_label=args["label"])
with token.open(user_pin=args["pin"]):
    pass
with token.open(rw=True, so_pin=args["so_pin"]):
    pass
print(json.dumps({"label": token.label, "initialised": bool(token.flags & 0x400)}))
"""


@pytest.fixture(autouse=True)
def _no_operator_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOFTHSM2_CONF", raising=False)
    for key in list(os.environ):
        if key.startswith("DATAPUNK_"):
            monkeypatch.delenv(key)


def _stack(tmp_path: Path, **sections: object) -> tuple[Settings, Layout]:
    settings = Settings(stack={"data_dir": tmp_path / "data"}, **sections)  # type: ignore[arg-type]
    return settings, Layout.from_settings(settings)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _login(conf: str, pin: str, so_pin: str) -> dict[str, object]:
    request = {"module": "/usr/lib/softhsm/libsofthsm2.so", "label": "datapunk"}
    done = subprocess.run(
        [sys.executable, "-c", _LOGIN],
        input=json.dumps({**request, "pin": pin, "so_pin": so_pin}),
        env={**os.environ, "SOFTHSM2_CONF": conf},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_first_start_makes_a_token_whose_pins_are_private_secrets(tmp_path: Path) -> None:
    settings, layout = _stack(tmp_path)
    env = nexus_environment(settings, layout)
    data = layout.data_dir
    assert env == {
        "DATAPUNK_SECRETS__PROVIDER": "file",
        "DATAPUNK_SECRETS__DIRECTORY": str(data / "secrets"),
        "SOFTHSM2_CONF": str(data / "softhsm" / "softhsm2.conf"),
    }
    pin_file = data / "secrets" / "nexus" / "signing-token-pin"
    so_pin_file = data / "secrets" / SO_PIN_SECRET
    for directory in (data / "secrets", data / "secrets" / "nexus", data / "softhsm"):
        assert _mode(directory) == 0o700
    assert _mode(pin_file) == _mode(so_pin_file) == 0o600
    pin, so_pin = pin_file.read_text(), so_pin_file.read_text()
    assert len(pin) >= 24
    assert pin != so_pin
    conf = (data / "softhsm" / "softhsm2.conf").read_text()
    assert f"directories.tokendir = {data / 'softhsm' / 'tokens'}\n" in conf
    assert not (data / "softhsm.partial").exists()
    # The PINs in the secret files are the token's (softhsm2-util's were replaced).
    assert _login(env["SOFTHSM2_CONF"], pin, so_pin) == {
        "label": "datapunk",
        "initialised": True,
    }


def test_the_next_start_keeps_the_token_and_its_pins(tmp_path: Path) -> None:
    settings, layout = _stack(tmp_path)
    first = nexus_environment(settings, layout)
    pin_file = layout.data_dir / "secrets" / "nexus" / "signing-token-pin"
    pin = pin_file.read_text()
    tokens = sorted((layout.data_dir / "softhsm" / "tokens").iterdir())
    assert nexus_environment(settings, layout) == first
    assert pin_file.read_text() == pin
    assert sorted((layout.data_dir / "softhsm" / "tokens").iterdir()) == tokens


def test_an_interrupted_first_start_is_redone(tmp_path: Path) -> None:
    settings, layout = _stack(tmp_path)
    leftover = layout.data_dir / "softhsm.partial" / "tokens" / "half-made"
    leftover.mkdir(parents=True)
    env = nexus_environment(settings, layout)
    assert not leftover.exists()
    secrets = layout.data_dir / "secrets"
    _login(
        env["SOFTHSM2_CONF"],
        (secrets / "nexus" / "signing-token-pin").read_text(),
        (secrets / SO_PIN_SECRET).read_text(),
    )


def test_configured_secrets_are_left_to_the_operator(tmp_path: Path) -> None:
    settings, layout = _stack(tmp_path, secrets={"provider": "env"})
    assert nexus_environment(settings, layout) == {}
    assert not layout.data_dir.exists()


@pytest.mark.parametrize(
    "signing",
    [{"backend": "software"}, {"pkcs11_module": "/opt/vendor/libhsm.so"}],
    ids=["software-backend", "other-module"],
)
def test_no_token_is_made_unless_nexus_signs_on_softhsm(
    tmp_path: Path, signing: dict[str, str]
) -> None:
    settings, layout = _stack(tmp_path, nexus={"auth": {"signing": signing}})
    env = nexus_environment(settings, layout)
    assert env == {
        "DATAPUNK_SECRETS__PROVIDER": "file",
        "DATAPUNK_SECRETS__DIRECTORY": str(layout.data_dir / "secrets"),
    }
    assert not (layout.data_dir / "softhsm").exists()


def test_an_operator_softhsm_conf_is_respected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", str(tmp_path / "mine.conf"))
    settings, layout = _stack(tmp_path)
    assert "SOFTHSM2_CONF" not in nexus_environment(settings, layout)
    assert not (layout.data_dir / "softhsm").exists()


def test_missing_softhsm_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    settings, layout = _stack(tmp_path)
    with pytest.raises(StackError, match=r"SoftHSM2 is not installed.*install-engines"):
        nexus_environment(settings, layout)
