"""The backend settings module: every problem listed at once, with the file to fix."""

from pathlib import Path

import pytest

from backend.settings import SettingsError, load_settings, validate

pytestmark = pytest.mark.unit
GOOD = {"LIVEKIT_URL": "ws://localhost:7880", "LIVEKIT_API_KEY": "devkey", "LIVEKIT_API_SECRET": "s" * 32}


def test_valid_settings_load() -> None:
    settings = validate(GOOD)
    assert settings.http_url == "http://localhost:7880"
    assert settings.ws_url == "ws://localhost:7880"
    assert settings.warnings == ()


def test_all_missing_variables_are_listed_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        validate({}, [Path("backend/.env")])
    assert info.value.problems == [
        "LIVEKIT_URL is not set",
        "LIVEKIT_API_KEY is not set",
        "LIVEKIT_API_SECRET is not set",
    ]
    assert "backend/.env" in str(info.value)


def test_url_without_scheme_is_rejected() -> None:
    with pytest.raises(SettingsError, match="has no ws://, wss://, http:// or https:// scheme"):
        validate({**GOOD, "LIVEKIT_URL": "localhost:7880"})


def test_short_secret_warns_in_development() -> None:
    settings = validate({**GOOD, "LIVEKIT_API_SECRET": "devsecret"})
    assert settings.warnings == ("LIVEKIT_API_SECRET is 9 characters; LiveKit expects at least 32",)


def test_short_secret_is_refused_outside_development() -> None:
    with pytest.raises(SettingsError, match=r"refused because APP_ENV='production'"):
        validate({**GOOD, "LIVEKIT_API_SECRET": "devsecret", "APP_ENV": "production"})


def test_problems_accumulate_across_kinds() -> None:
    env = {"LIVEKIT_URL": "localhost", "LIVEKIT_API_SECRET": "short", "APP_ENV": "staging"}
    with pytest.raises(SettingsError) as info:
        validate(env)
    assert len(info.value.problems) == 3


def test_env_file_is_read_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / ".env"
    env.write_text("LIVEKIT_URL=ws://from-file:7880\nLIVEKIT_API_KEY=filekey\nLIVEKIT_API_SECRET=" + "f" * 32)
    for name in ("LIVEKIT_URL", "LIVEKIT_API_SECRET"):  # in-process workers may have exported these
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIVEKIT_API_KEY", "envkey")
    settings = load_settings([env])
    assert (settings.livekit_url, settings.api_key) == ("ws://from-file:7880", "envkey")


def test_repr_hides_the_secret() -> None:
    assert "s" * 32 not in repr(validate(GOOD))
