"""data_dir: the folder relative state paths are read under: the file's data_dir (relative to the file's folder),
else $TOLLGATE_DATA_DIR, else the file's folder; absolute paths stay as written."""

from __future__ import annotations

from pathlib import Path

from tollgate.config import config_from_dict, load_config

MINIMAL = "upstreams:\n  u: {base_url: 'http://127.0.0.1:9/v1'}\nmodels:\n  m: {deployments: [{upstream: u}]}\n"


def write(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "conf" / "gateway.yaml"
    path.parent.mkdir()
    path.write_text(extra + MINIMAL)
    return path


def test_without_data_dir_or_variable_state_paths_are_beside_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path), env={})
    assert config.data_dir == str(tmp_path / "conf")
    assert config.state_path("data/x.db") == tmp_path / "conf" / "data" / "x.db"
    assert config.state_path("/abs/x.db") == Path("/abs/x.db")


def test_the_variable_names_the_folder_when_the_file_does_not(tmp_path: Path) -> None:
    config = load_config(write(tmp_path), env={"TOLLGATE_DATA_DIR": str(tmp_path / "var")})
    assert config.state_path("data/x.db") == tmp_path / "var" / "data" / "x.db"


def test_the_file_s_data_dir_wins_and_a_relative_one_is_under_the_file_s_folder(tmp_path: Path) -> None:
    path = write(tmp_path, "data_dir: state\n")
    config = load_config(path, env={"TOLLGATE_DATA_DIR": str(tmp_path / "var")})
    assert config.data_dir == str(tmp_path / "conf" / "state")
    other = tmp_path / "conf" / "abs.yaml"
    other.write_text(f"data_dir: {tmp_path / 'elsewhere'}\n" + MINIMAL)
    assert load_config(other, env={}).data_dir == str(tmp_path / "elsewhere")


def test_a_config_from_no_file_keeps_relative_paths_relative_to_the_working_folder() -> None:
    doc = {
        "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"deployments": [{"upstream": "u"}]}},
    }
    config = config_from_dict(doc, env={})
    assert config.data_dir is None
    assert config.state_path("x.db") == Path("x.db")
