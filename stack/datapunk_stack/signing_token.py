"""The stack's secrets and its SoftHSM2 token, so that out of the box Nexus signs its
tokens on a PKCS#11 token with a PIN nobody typed.

Unless ``[secrets]`` is configured, ``datapunk up`` keeps the stack's secrets as private
files in ``<data_dir>/secrets`` (the ``file`` provider) and points Nexus at them. With
the default signing backend (``pkcs11`` on SoftHSM2) and no ``SOFTHSM2_CONF`` of the
operator's own, it also initialises, on first start, a SoftHSM2 token labelled
``nexus.auth.signing.token_label`` in ``<data_dir>/softhsm`` (its own
``softhsm2.conf``), with a random user PIN and SO PIN stored as the secrets
``nexus/signing-token-pin`` and ``nexus/signing-token-so-pin``. Nexus generates its
signing keys on that token at its first start."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from datapunk_shared.config import Settings
from datapunk_shared.secrets import FileSecretProvider

from datapunk_stack.layout import Layout, StackError
from datapunk_stack.stack_secrets import ensure_stack_secrets

__all__ = ["SO_PIN_SECRET", "nexus_environment"]

SO_PIN_SECRET = "nexus/signing-token-so-pin"
"""The secret holding the stack token's security officer PIN (for re-initialising the
user PIN; Nexus never reads it)."""

# Changes the throwaway PINs softhsm2-util was given on its command line (which other
# local users can see while it runs) to the real ones, read from standard input.
_SET_PINS = """
import json, sys, pkcs11
args = json.load(sys.stdin)
token = pkcs11.lib(args["module"]).get_token(token_label=args["label"])
with token.open(rw=True, user_pin=args["old_pin"]) as session:
    session.set_pin(args["old_pin"], args["pin"])
with token.open(rw=True, so_pin=args["old_so_pin"]) as session:
    session.set_pin(args["old_so_pin"], args["so_pin"])
"""


def nexus_environment(settings: Settings, layout: Layout) -> dict[str, str]:
    """The variables Nexus needs on top of the stack's own environment to find the
    stack's secrets and token; prepares them first. Empty when ``[secrets]`` is
    configured (the operator keeps the secrets, and the token, then)."""
    if "secrets" in settings.model_fields_set:
        return {}
    directory = layout.data_dir / "secrets"
    _private_dir(directory)
    ensure_stack_secrets(settings, directory)
    env = {"DATAPUNK_SECRETS__PROVIDER": "file", "DATAPUNK_SECRETS__DIRECTORY": str(directory)}
    signing = settings.nexus.auth.signing
    if (
        signing.backend != "pkcs11"
        or signing.pkcs11_module.name != "libsofthsm2.so"
        or os.environ.get("SOFTHSM2_CONF")
    ):
        return env
    files = FileSecretProvider(directory)
    token_dir = layout.data_dir / "softhsm"
    if not token_dir.is_dir() or not files.path(signing.pin_secret).is_file():
        _init_token(
            token_dir,
            label=signing.token_label,
            module=signing.pkcs11_module,
            pin_file=files.path(signing.pin_secret),
            so_pin_file=files.path(SO_PIN_SECRET),
        )
    env["SOFTHSM2_CONF"] = str(token_dir / "softhsm2.conf")
    return env


def _init_token(
    token_dir: Path, *, label: str, module: Path, pin_file: Path, so_pin_file: Path
) -> None:
    """Create the token in a scratch directory and move it in place only once it and its
    PINs are complete, so an interrupted first start is simply redone."""
    util = shutil.which("softhsm2-util")
    if util is None or not module.is_file():
        raise StackError("SoftHSM2 is not installed: run scripts/install-engines.sh")
    scratch = token_dir.with_name(token_dir.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.rmtree(token_dir, ignore_errors=True)
    _private_dir(scratch)
    _private_dir(scratch / "tokens")
    env = {**os.environ, "SOFTHSM2_CONF": str(_write_conf(scratch, scratch / "tokens"))}
    pins = {
        "old_pin": secrets.token_hex(16),
        "old_so_pin": secrets.token_hex(16),
        "pin": secrets.token_urlsafe(24),
        "so_pin": secrets.token_urlsafe(24),
    }
    init = [util, "--init-token", "--free", "--label", label]
    _run([*init, "--pin", pins["old_pin"], "--so-pin", pins["old_so_pin"]], env, "softhsm2-util")
    request = {"module": str(module), "label": label, **pins}
    _run([sys.executable, "-c", _SET_PINS], env, "setting the token's PINs", json.dumps(request))
    for path, pin in ((pin_file, pins["pin"]), (so_pin_file, pins["so_pin"])):
        _private_dir(path.parent)
        _write_private(path, pin)
    _write_conf(scratch, token_dir / "tokens")
    scratch.rename(token_dir)


def _run(argv: list[str], env: dict[str, str], what: str, stdin: str = "") -> None:
    # Output is captured, never logged, and the command line is not shown: it holds PINs.
    done = subprocess.run(
        argv, env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise StackError(
            f"initialising the SoftHSM2 signing token failed ({what} exited with code "
            f"{done.returncode})"
        )


def _write_conf(directory: Path, tokens: Path) -> Path:
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    return conf


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    path.chmod(0o600)
