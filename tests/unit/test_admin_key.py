"""``datapunk admin-key``: prints the bootstrap administrator key ``datapunk up`` wrote
(and nothing else on stdout), finds it where the stack keeps it — the configured data
directory, the fallback directory scripts/test.sh uses, or the configured secret
provider — and fails clearly, without showing a secret, when there is none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from datapunk_nexus.identity.api_keys import parse_api_key
from datapunk_shared.config import Settings
from datapunk_stack import admin_key
from datapunk_stack.admin_key import read_admin_key
from datapunk_stack.layout import SOURCE_ROOT, Layout, StackError, unprivileged_data_dir
from datapunk_stack.stack_secrets import ensure_stack_secrets

DATAPUNK = Path(sys.executable).parent / "datapunk"
KEY_FILE = "secrets/nexus/bootstrap-admin-key"


@pytest.fixture(autouse=True)
def _no_datapunk_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings() in this process must see the defaults, whatever the caller exported.
    for name in list(os.environ):
        if name.startswith("DATAPUNK_"):
            monkeypatch.delenv(name)


def _cli(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DATAPUNK_")}
    return subprocess.run(
        [str(DATAPUNK), "admin-key"],
        cwd=cwd,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _stack_secrets(data_dir: Path) -> str:
    """The secrets ``datapunk up`` writes into a data directory; returns the key."""
    ensure_stack_secrets(Settings(), data_dir / "secrets")
    return (data_dir / KEY_FILE).read_text()


def test_prints_the_key_of_the_configured_data_dir_and_nothing_else(tmp_path: Path) -> None:
    key = _stack_secrets(tmp_path / "data")
    done = _cli(tmp_path, DATAPUNK_STACK__DATA_DIR=str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == key + "\n"
    assert done.stderr == ""
    assert parse_api_key(done.stdout.strip()).key_id


def test_the_default_data_dir_is_dot_datapunk_of_the_working_directory(tmp_path: Path) -> None:
    key = _stack_secrets(tmp_path / ".datapunk")
    done = _cli(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == key + "\n"


def test_no_key_yet_fails_naming_where_it_looked_and_what_to_do(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    done = _cli(tmp_path, DATAPUNK_STACK__DATA_DIR=str(data_dir))
    assert done.returncode == 1
    assert done.stdout == ""
    assert str(data_dir / KEY_FILE) in done.stderr
    assert "'datapunk up' writes it" in done.stderr
    # An explicitly chosen data directory is the only one looked at.
    assert "/var/tmp" not in done.stderr


def test_a_key_file_others_can_read_is_refused_without_showing_it(tmp_path: Path) -> None:
    key = _stack_secrets(tmp_path / "data")
    (tmp_path / "data" / KEY_FILE).chmod(0o644)
    done = _cli(tmp_path, DATAPUNK_STACK__DATA_DIR=str(tmp_path / "data"))
    assert done.returncode == 1
    assert "chmod 600" in done.stderr
    assert key not in done.stdout + done.stderr


def test_the_key_comes_from_the_configured_secret_provider(tmp_path: Path) -> None:
    _stack_secrets(tmp_path / ".datapunk")  # not used: [secrets] is configured
    done = _cli(
        tmp_path,
        DATAPUNK_SECRETS__PROVIDER="env",
        DATAPUNK_SECRET_NEXUS__BOOTSTRAP_ADMIN_KEY="dpk_from_the_provider",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "dpk_from_the_provider\n"
    missing = _cli(tmp_path, DATAPUNK_SECRETS__PROVIDER="env")
    assert missing.returncode == 1
    assert "DATAPUNK_SECRET_NEXUS__BOOTSTRAP_ADMIN_KEY" in missing.stderr
    assert missing.stdout == ""


def test_the_default_data_dir_falls_back_to_where_test_sh_runs_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fallback = tmp_path / "var-tmp-stack"
    monkeypatch.setattr(admin_key, "unprivileged_data_dir", lambda: fallback)
    settings = Settings()
    layout = Layout(data_dir=tmp_path / ".datapunk", engines_lib=tmp_path, java=tmp_path)
    with pytest.raises(StackError) as caught:
        read_admin_key(settings, layout)
    assert str(fallback / KEY_FILE) in str(caught.value)

    key = _stack_secrets(fallback)
    found = read_admin_key(settings, layout)
    assert found.key == key
    assert found.note is not None
    assert str(fallback) in found.note
    # The configured directory wins once it holds a key.
    own = _stack_secrets(layout.data_dir)
    assert read_admin_key(settings, layout).key == own != key
    assert read_admin_key(settings, layout).note is None
    # A data directory chosen explicitly never falls back.
    chosen = Settings.model_validate({"stack": {"data_dir": tmp_path / "chosen"}})
    with pytest.raises(StackError) as caught:
        read_admin_key(chosen, Layout.from_settings(chosen))
    assert str(fallback) not in str(caught.value)


def test_no_key_configured_is_said_so(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"nexus": {"auth": {"api_keys": {"bootstrap_secret": None}}}}
    )
    layout = Layout(data_dir=tmp_path, engines_lib=tmp_path, java=tmp_path)
    with pytest.raises(StackError, match="bootstrap_secret is unset"):
        read_admin_key(settings, layout)


def test_the_fallback_dir_is_the_one_scripts_test_sh_computes() -> None:
    formula = '"/var/tmp/datapunk-$(printf %s "$root" | sha256sum | cut -c1-12)"'
    assert formula in (SOURCE_ROOT / "scripts" / "test.sh").read_text()
    done = subprocess.run(
        ["bash", "-c", f"root={SOURCE_ROOT}; printf %s {formula}"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert Path(done.stdout) == unprivileged_data_dir()
