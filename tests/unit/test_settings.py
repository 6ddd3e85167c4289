from pathlib import Path

import pytest

from corral.errors import SettingsError
from corral.settings import Settings, load_settings


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(environ={}, cwd=tmp_path)
    assert settings == Settings()
    assert settings.home == Path.home() / ".local/share/corral"


def test_environment_over_file_over_defaults(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text('[settings]\nmemory = "1G"\npids = 64\nhome = "/srv/corral"\n')
    sub = tmp_path / "project" / "deep"
    sub.mkdir(parents=True)
    settings = load_settings(environ={"CORRAL_PIDS": "32", "CORRAL_TIMEOUT": "5m"}, cwd=sub)
    assert settings.memory == 1 << 30  # from the file, found in a parent directory
    assert settings.pids == 32  # the environment wins
    assert settings.timeout == 300.0
    assert settings.home == Path("/srv/corral")
    assert settings.cpus is None  # default


def test_corral_config_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text("[settings]\nsandbox_slots = 8\n")
    assert load_settings(environ={"CORRAL_CONFIG": str(config)}, cwd=tmp_path).sandbox_slots == 8


def test_none_clears_a_default(tmp_path: Path) -> None:
    assert load_settings(environ={"CORRAL_MEMORY": "none"}, cwd=tmp_path).memory is None


def test_unknown_key_is_an_error_naming_key_and_file(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text("[settings]\nmemroy = '1G'\n")
    with pytest.raises(SettingsError, match=r"'memroy' in .*corral.toml is unknown") as err:
        load_settings(environ={}, cwd=tmp_path)
    assert err.value.exit_code == 3


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({"CORRAL_PIDS": "lots"}, "CORRAL_PIDS has the value 'lots'"),
        ({"CORRAL_MEMORY": "big"}, "'memory' from CORRAL_MEMORY is invalid: The setting 'memory' 'big' is not a size"),
    ],
)
def test_bad_values_are_errors(tmp_path: Path, environ: dict[str, str], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        load_settings(environ=environ, cwd=tmp_path)


def test_broken_toml(tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text("[settings\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(environ={}, cwd=tmp_path)


def test_runtime_dir(tmp_path: Path) -> None:
    assert Settings(runtime_dir=tmp_path).runtime == tmp_path
