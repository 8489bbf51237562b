"""``tollgate db upgrade`` and ``tollgate db status`` as an operator runs them: subprocesses on a config file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tollgate.database import known_migrations

from ..support.processes import REPO, gateway_config

pytestmark = pytest.mark.process


def _config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config("http://127.0.0.1:9/v1", database={"url": url})))
    return path


def _db(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollgate", "db", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


def test_status_exits_1_while_pending_and_upgrade_applies_and_names_each_migration(
    database_url: str, tmp_path: Path
) -> None:
    config = str(_config(tmp_path, database_url))
    names = [m.name for m in known_migrations()]
    before = _db("status", "--config", config)
    assert before.returncode == 1, before.stderr
    assert "current: 0" in before.stdout and f"pending: {', '.join(names)}" in before.stdout

    upgraded = _db("upgrade", "--config", config)
    assert upgraded.returncode == 0, upgraded.stderr
    assert [line for line in upgraded.stdout.splitlines() if line.startswith("applied ")] == [
        f"applied {n}" for n in names
    ]

    after = _db("status", "--config", config)
    assert after.returncode == 0, after.stderr
    assert f"current: {known_migrations()[-1].version}" in after.stdout and "pending: none" in after.stdout
    again = _db("upgrade", "--config", config)
    assert again.returncode == 0 and "nothing to apply" in again.stdout


def test_the_commands_name_the_database_with_its_password_masked(postgres_url: str, tmp_path: Path) -> None:
    url = postgres_url.replace("postgres@", "postgres:hunter2-secret@")  # trust auth ignores the password
    done = _db("status", "--config", str(_config(tmp_path, url)))
    assert done.returncode == 1, done.stderr
    assert "postgres:***@127.0.0.1" in done.stdout
    assert "hunter2-secret" not in done.stdout + done.stderr


def test_a_relative_sqlite_path_is_next_to_the_config_file(tmp_path: Path) -> None:
    done = _db("upgrade", "--config", str(_config(tmp_path, "sqlite:///data/tollgate.db")))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "tollgate.db").exists()


def test_a_config_without_database_url_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config("http://127.0.0.1:9/v1")))
    done = _db("status", "--config", str(path))
    assert done.returncode == 2 and "no database.url" in done.stderr


def test_a_bad_database_url_fails_naming_database_url(tmp_path: Path) -> None:
    done = _db("upgrade", "--config", str(_config(tmp_path, "mysql://root@localhost/db")))
    assert done.returncode == 2
    assert "database.url:" in done.stderr
