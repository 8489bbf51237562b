"""The container image's layout, run without a Docker engine: the wheel built from exactly what the Dockerfile
copies, installed into a fresh environment, serving config/gateway.example.yaml from a read-only config folder as
the Dockerfile's numeric user, with the Dockerfile's data folder and environment.

Every state path of the example config is relative; the gateway must write them under the data folder (a volume in
the image), never beside the read-only config: admin writes and the spend log work, and nothing says "Permission
denied". The same layout without the data folder's variable is refused at start, so this test can fail.
"""

from __future__ import annotations

import importlib.machinery
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from ..support.processes import REPO, free_port, wait_for_port

pytestmark = [pytest.mark.process, pytest.mark.slow]

ADMIN_TOKEN = "layout-test-admin-token-0123456789"


@dataclass(frozen=True)
class Image:
    """What the Dockerfile says about the runtime image."""

    uid: int
    gid: int
    data_dir: str
    workdir: str
    volumes: tuple[str, ...]
    copied: tuple[str, ...]
    env: dict[str, str]
    compiled: bool  # the build stage's TOLLGATE_COMPILE default: the wheel's hot path compiled by mypyc


def read_dockerfile() -> Image:
    text = (REPO / "Dockerfile").read_text()
    runtime = text.split("\nFROM ")[-1]  # the last stage is the image
    user = re.search(r"(?m)^USER (\S+)$", runtime)
    assert user is not None, "the image names no USER"
    uid_text, _, gid_text = user.group(1).partition(":")
    assert uid_text.isdigit() and gid_text.isdigit(), "USER must be numeric (runAsNonRoot checks a number)"
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"(?ms)^ENV (.*?)(?<!\\)$", runtime))))
    workdir = re.findall(r"(?m)^WORKDIR (\S+)$", runtime)[-1]
    volumes = tuple(re.findall(r'"([^"]+)"', " ".join(re.findall(r"(?m)^VOLUME (.*)$", runtime))))
    copied = tuple(
        name for line in re.findall(r"(?m)^COPY (.*)$", text) for name in line.split()[:-1] if not name.startswith("-")
    )
    compile_arg = re.search(r"(?m)^ARG TOLLGATE_COMPILE=([01])$", text)
    assert compile_arg is not None, "the Dockerfile sets no TOLLGATE_COMPILE default"
    compiled = compile_arg.group(1) == "1"
    return Image(int(uid_text), int(gid_text), env["TOLLGATE_DATA_DIR"], workdir, volumes, copied, env, compiled)


def test_the_docker_context_holds_exactly_what_the_dockerfile_copies_and_no_checkout_build() -> None:
    """.dockerignore is an allow-list: every COPY source must pass it (a name it leaves out fails the build), and a
    checkout's own compiled build (scripts/compile) must not, or the image would carry it."""
    lines = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert set(read_dockerfile().copied) <= allowed, set(read_dockerfile().copied) - allowed
    assert {"**/*.so", "tollgate/compiled.json"} <= set(lines)


def test_the_dockerfile_declares_a_numeric_user_a_data_volume_and_pinned_dependencies() -> None:
    image = read_dockerfile()
    assert image.uid != 0 and image.gid != 0
    assert image.data_dir == "/var/lib/tollgate" and image.data_dir in image.volumes
    assert image.workdir == image.data_dir
    assert "constraints.txt" in image.copied and "--constraint constraints.txt" in (REPO / "Dockerfile").read_text()
    pinned = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }

    for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = re.split(r"[\[<>=;~ ]", dep, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} is not pinned in constraints.txt"


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """A fresh environment with the wheel built from what the Dockerfile copies (dependencies from the suite's)."""
    image = read_dockerfile()
    root = Path(tempfile.mkdtemp(prefix="tollgate-image-"))
    root.chmod(0o755)  # the image's user must reach what is inside
    try:
        src = root / "src"
        src.mkdir()
        for name in image.copied:
            path = REPO / name
            if path.is_dir():  # what .dockerignore lets through: no bytecode, no checkout build
                shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "compiled.json"))
            else:
                shutil.copy2(path, src / name)
        wheels = root / "wheels"
        # As the build stage does: compiled by mypyc, with the suite's setuptools and mypy (the compile extra).
        isolation = ["--no-build-isolation"] if image.compiled else []
        env = {**os.environ, "TOLLGATE_COMPILE": "1" if image.compiled else "0"}
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "--wheel-dir", str(wheels), str(src)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert built.returncode == 0, built.stderr[-3000:]
        venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        site = Path(
            subprocess.run(
                [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
        )
        (wheel,) = wheels.glob("tollgate-*.whl")
        keep = os.environ.get("TOLLGATE_TEST_KEEP_WHEEL")  # scripts/test: its compiled run takes the extensions
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy2(wheel, keep)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        # The dependencies: the suite's own (the image installs the same packages at constraints.txt's versions).
        (site / "zz-suite-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        script = venv / "bin" / "tollgate"
        script.write_text(
            f"#!{venv / 'bin' / 'python'}\nfrom tollgate.process.cli import main\nraise SystemExit(main())\n"
        )
        script.chmod(0o755)
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o044 | (0o011 if path.is_dir() else 0))
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_image_user(image: Image) -> list[str]:
    """The command prefix that runs as the image's user: setpriv when root (reading the interpreter's files under
    /root is allowed, every write is checked as that user), nothing otherwise (then the current user, to whom the
    read-only config folder is just as read-only)."""
    if os.getuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to run as the image's user")
    return [
        setpriv,
        f"--reuid={image.uid}",
        f"--regid={image.gid}",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
    ]


def layout(root: Path, image: Image, mock: str, port: int, admin_port: int) -> tuple[Path, Path]:
    """/etc/tollgate (read-only, the example config pointed at the mock) and /var/lib/tollgate (the user's) under
    ``root``."""
    etc = root / "etc" / "tollgate"
    data = root / image.data_dir.lstrip("/")
    for folder in (etc, data):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    text = (REPO / "config" / "gateway.example.yaml").read_text()
    text = re.sub(r"base_url: https://api\.anthropic\.com", f"base_url: {mock}", text)  # its API root
    text = re.sub(r"base_url: https?://\S+/v1\b", f"base_url: {mock}/v1", text)
    text = re.sub(r"base_url: https://\S+", f"base_url: {mock}", text)  # Azure resource endpoints
    text = text.replace("port: 8081", f"port: {admin_port}")
    (etc / "gateway.yaml").write_text(text)
    (etc / "gateway.yaml").chmod(0o444)
    etc.chmod(0o555)
    if os.getuid() == 0:
        os.chown(data, image.uid, image.gid)
    data.chmod(0o750)
    return etc, data


def serve(root: Path, image: Image, etc: Path, data: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = (root / f"gateway-{port}.log").open("wb")
    return subprocess.Popen(
        [
            *as_image_user(image),
            *(str(root / "venv" / "bin" / "tollgate"), "serve", "--config", str(etc / "gateway.yaml")),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        cwd=data,
        env={"PATH": "/usr/bin:/bin", "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )


async def test_the_example_config_serves_from_a_read_only_folder_writing_only_under_the_data_volume(
    installed: Path, mock_url: str
) -> None:
    image = read_dockerfile()
    port, admin_port = free_port(), free_port()
    etc, data = layout(installed, image, mock_url, port, admin_port)
    env = {"TOLLGATE_DATA_DIR": str(data)}  # the image's ENV, at the layout's data folder
    proc = serve(installed, image, etc, data, port, env)
    log_file = installed / f"gateway-{port}.log"
    try:
        try:
            wait_for_port(port, proc=proc, timeout=30)
        except RuntimeError:
            raise AssertionError(log_file.read_text()) from None
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with aiohttp.ClientSession() as s:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            key = {"Authorization": "Bearer tg_example_only_ci_key_0123456789abcdef"}
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers=key) as r:
                assert r.status == 200, await r.text()
            tenant = {"id": "layout", "name": "Layout", "plan": "personal"}
            async with s.post(f"http://127.0.0.1:{admin_port}/admin/tenants", json=tenant, headers=admin) as r:
                assert r.status in (200, 201), await r.text()  # an admin write lands in the database
            async with s.get(f"http://127.0.0.1:{admin_port}/readyz") as r:
                ready = await r.json()
            assert "database" not in str(ready.get("degraded", "")), ready
        time.sleep(1.5)  # a spend-log flush or two
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=40)
    log = log_file.read_text()
    assert code == 0, log
    assert "Permission denied" not in log and "Traceback" not in log, log
    database = data / "data" / "tollgate.db"  # the example's sqlite:///data/tollgate.db, under the data folder
    assert database.is_file()
    if os.getuid() == 0:
        assert database.stat().st_uid == image.uid  # written by the image's user
    assert list(etc.iterdir()) == [etc / "gateway.yaml"]  # nothing written beside the config
    with sqlite3.connect(database) as db:
        names = [name for (name,) in db.execute("SELECT name FROM registry_records WHERE doc IS NOT NULL")]
        assert any("layout" in name for name in names), names
        assert db.execute("SELECT count(*) FROM spend_log").fetchone()[0] >= 1


def in_image(installed: Path, code: str) -> str:
    """What ``code`` prints, run by the installed environment's Python; it must succeed."""
    out = subprocess.run(
        [str(installed / "venv" / "bin" / "python"), "-c", code], cwd=installed, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_image_runs_its_hot_path_compiled(installed: Path) -> None:
    """The wheel built as the Dockerfile builds it imports its compiled modules, not their sources beside them."""
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["tollgate"]["compile"]["modules"]
    code = (
        "import tollgate.edge.server as server\n"
        "from tollgate import compiled\n"
        "print(server.__file__)\n"
        "print(compiled.describe())\n"
    )
    module_file, description = in_image(installed, code).splitlines()
    assert read_dockerfile().compiled
    assert module_file.endswith(importlib.machinery.EXTENSION_SUFFIXES[0]), module_file
    assert description == f"{len(expected)} modules compiled"


def test_the_installed_wheel_reads_every_lua_script_it_ships(installed: Path) -> None:
    """The wheel's lua/ is a data folder (a namespace package once installed): every script loads from it, the
    scaling leader's lease scripts under lua/scaling/ included (they are read when the store is Redis)."""
    code = (
        "from tollgate.limiter.store.scripts import load_scripts\n"
        "from tollgate.scaling.lease import lease_script\n"
        "names = sorted(load_scripts())\n"
        "assert 'admit' in names and 'settle' in names, names\n"
        "assert lease_script('lease_renew') and lease_script('lease_release')\n"
        "print(len(names))\n"
    )
    assert int(in_image(installed, code)) >= 6


def test_without_the_data_folder_the_read_only_config_folder_is_refused_at_start(installed: Path) -> None:
    image = read_dockerfile()
    port, admin_port = free_port(), free_port()
    etc, data = layout(installed, image, "http://127.0.0.1:9", port, admin_port)
    proc = serve(installed, image, etc, data, port, {})  # no TOLLGATE_DATA_DIR: state would go beside the config
    try:
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (installed / f"gateway-{port}.log").read_text()
    assert code != 0, log
    assert str(etc) in log and "Traceback" not in log, log  # the refusal names where it could not write
