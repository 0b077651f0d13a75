"""The config model: defaults, durations, targets, and errors that name file, field and problem."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from egresswatch.cli import main
from egresswatch.model import Role, Scheme
from egresswatch.settings import (
    ConfigError,
    Settings,
    format_duration,
    json_schema,
    load_settings,
    parse_duration,
    settings_from_dict,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), ("14d", 1209600), ("1.5s", 1.5)],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("bad", ["30", "", "s", "10x", "1m 3", "-5s", 30, None])
def test_bad_durations_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def _problems(data: Mapping[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(data, origin="cfg.yaml")
    return caught.value.problems


def test_defaults_and_target_overrides() -> None:
    settings = settings_from_dict(
        {
            "probes": {"interval": "1m", "timeout": "20s"},
            "targets": [
                {"name": "web", "url": "https://Example.test/health", "expect_status": "200,204"},
                {"name": "db", "address": "db.example.test:5432", "interval": "2m"},
                {"name": "ctl", "url": "http://ctl.test:8080", "role": "control"},
            ],
        }
    )
    web, db, ctl = settings.targets
    assert web.endpoint.host == "example.test" and web.endpoint.path == "/health"
    assert web.expect_status is not None
    assert 204 in web.expect_status and 200 in web.expect_status and 301 not in web.expect_status
    assert settings.timing(web) == (60.0, 20.0, 5.0)
    assert db.endpoint.scheme is Scheme.TCP and db.endpoint.port == 5432
    assert settings.timing(db) == (120.0, 20.0, 5.0)
    assert ctl.role is Role.CONTROL and ctl.endpoint.port == 8080
    assert settings.dns.upstream is None  # never guessed


def test_targets_by_name_follow_the_targets_list() -> None:
    """`target` and `detection_for` answer from a lookup (the staleness sweep asks once per
    target); a copy with other targets answers for those, never from the old list."""
    settings = settings_from_dict(
        {
            "detection": {"fail_after": 2},
            "targets": [
                {"name": "a", "address": "127.0.0.1:1", "detection": {"fail_after": 5}},
                {"name": "b", "address": "127.0.0.1:2"},
            ],
        }
    )
    a, b = settings.targets
    assert settings.target("a") is a and settings.target("b") is b and settings.target("c") is None
    assert settings.detection_for(a).fail_after == 5 and settings.detection_for(b).fail_after == 2
    assert settings.detection_for(a) is settings.detection_for(a)
    other = a.model_copy(update={"detection": a.detection.model_copy(update={"fail_after": 7})})
    assert settings.detection_for(other).fail_after == 7  # not ours: merged, not remembered
    copy = settings.model_copy(update={"targets": [other]})
    assert copy.target("a") is other and copy.target("b") is None
    assert copy.detection_for(other).fail_after == 7
    assert settings.target("a") is a


def test_a_target_by_name_skips_pydantics_getattr(monkeypatch: pytest.MonkeyPatch) -> None:
    """`target` is asked three times a round: it reads its lookup without BaseModel's
    `__getattr__` (3 µs a call, for a private attribute)."""
    settings = settings_from_dict({"targets": [{"name": "a", "address": "127.0.0.1:1"}]})
    asked: list[str] = []
    pydantics = Settings.__getattr__  # type: ignore[attr-defined]  # pydantic: TYPE_CHECKING only

    def counting(self: Settings, name: str) -> object:
        asked.append(name)
        return pydantics(self, name)

    monkeypatch.setattr(Settings, "__getattr__", counting)
    for _ in range(3):
        assert settings.target("a") is settings.targets[0] and settings.target("b") is None
    assert asked == []


def test_every_error_is_reported_with_its_field_path() -> None:
    problems = _problems(
        {
            "probes": {"interval": "3x"},
            "dns": {"upstream": "not-an-ip"},
            "targets": [
                {"name": "a", "url": "ftp://x.test"},
                {"name": "b", "address": "x.test:99999"},
                {"name": "c", "url": "https://x.test", "interval": "5s", "timeout": "10s"},
                {"name": "d", "url": "https://x.test", "colour": "red"},
                {"name": "e", "url": "https://x.test", "address": "x.test:1"},
                {"name": "f", "url": "https://x.test", "expect_status": "700"},
            ],
        }
    )
    text = "\n".join(problems)
    assert all(p.startswith("cfg.yaml: ") for p in problems)
    assert "probes.interval: bad duration '3x'" in text
    assert "dns.upstream:" in text
    assert "targets[0].url: unsupported scheme 'ftp'" in text
    assert "targets[1].address: bad port '99999'" in text
    assert "targets[2]: timeout 10s is longer than its interval 5s" in text
    assert "targets[3].colour: Extra inputs are not permitted" in text
    assert "targets[4]: give exactly one of url or address" in text
    assert "targets[5].expect_status: bad status range '700'" in text
    assert len(problems) == 8


def test_inherited_timeout_longer_than_interval() -> None:
    problems = _problems(
        {
            "probes": {"timeout": "20s"},
            "targets": [{"name": "a", "url": "https://x.test", "interval": "10s"}],
        }
    )
    assert problems == [
        "cfg.yaml: targets[0] (a): timeout 20s is longer than its interval 10s: "
        "rounds would overlap"
    ]


def test_duplicate_names_and_bad_urls() -> None:
    assert (
        "duplicate target name 'a'"
        in _problems(
            {"targets": [{"name": "a", "url": "https://x.test"}, {"name": "a", "url": "https://y"}]}
        )[0]
    )
    assert "no host" in _problems({"targets": [{"name": "a", "url": "https://"}]})[0]
    assert "bad host name" in _problems({"targets": [{"name": "a", "url": "https://a b"}]})[0]
    assert (
        "targets[0].name" in _problems({"targets": [{"name": "Bad Name", "url": "https://x"}]})[0]
    )


def test_proxy_password_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EW_TEST_PROXY_PW", raising=False)
    config = {"proxy": {"url": "http://127.0.0.1:3128", "password_env": "EW_TEST_PROXY_PW"}}
    assert "EW_TEST_PROXY_PW is not set" in _problems(config)[0]
    monkeypatch.setenv("EW_TEST_PROXY_PW", "s3cret")
    settings = settings_from_dict(config)
    assert settings.proxy is not None and settings.proxy.password() == "s3cret"
    assert "s3cret" not in settings.model_dump_json()
    assert "proxy.url" in _problems({"proxy": {"url": "ftp://proxy:1"}})[0]


def test_database_url_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`database_env` (the chart's Secret): the URL from the variable, checked like `database`;
    unset, or beside a different `database`, is an error naming the field."""
    url = "postgresql+asyncpg://ew:s3cret@db.example:5432/ew"
    monkeypatch.delenv("EW_TEST_DB", raising=False)
    config = {"database_env": "EW_TEST_DB"}
    assert _problems(config) == [
        "cfg.yaml: database_env: environment variable EW_TEST_DB is not set"
    ]
    monkeypatch.setenv("EW_TEST_DB", url)
    settings = settings_from_dict(config)
    assert settings.database == url
    # a dump validated again (egresswatch check does it) holds both, agreeing
    assert settings_from_dict(settings.model_dump(mode="json")).database == url
    assert "not both" in _problems({**config, "database": "sqlite:///x.db"})[0]
    assert "database_env" in _problems({"database_env": "1 bad"})[0]
    monkeypatch.setenv("EW_TEST_DB", "mysql://db.example/ew")
    assert _problems(config)[0].startswith("cfg.yaml: database_env: EW_TEST_DB: unsupported")
    # db upgrade reads it through the config file too
    monkeypatch.setenv("EW_TEST_DB", f"sqlite+aiosqlite:///{tmp_path}/ew.db")
    path = tmp_path / "config.yaml"
    path.write_text("database_env: EW_TEST_DB\n")
    assert main(["db", "upgrade", "--config", str(path)]) == 0
    assert "is at the newest schema" in capsys.readouterr().out
    assert (tmp_path / "ew.db").exists()


def test_yaml_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("targets:\n  - name: a\n    url: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.problems[0].startswith(f"{path}: line ")
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(path)


@pytest.mark.parametrize("name", ["example.yaml", "demo.yaml"])
def test_shipped_configs_validate(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "validate", str(ROOT / "config" / name)]) == 0
    assert "ok" in capsys.readouterr().out


def test_config_validate_prints_every_error_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "probes:\n  interval: soon\ntargets:\n  - name: a\n    url: gopher://x\n    extra: 1\n"
    )
    assert main(["config", "validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"{path}: probes.interval: bad duration 'soon': use e.g. '30s', '1m30s', '500ms', "
        "'2h', '14d'",
        f"{path}: targets[0].url: unsupported scheme 'gopher': use https://, http:// or host:port",
        f"{path}: targets[0].extra: Extra inputs are not permitted",
    ]


def test_schema_file_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    """config/egresswatch.schema.json is generated: regenerate it with
    `egresswatch config schema > config/egresswatch.schema.json`."""
    shipped = json.loads((ROOT / "config" / "egresswatch.schema.json").read_text())
    assert shipped == json_schema(), "stale schema: run egresswatch config schema"
    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == shipped
