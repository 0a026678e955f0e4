"""`tcc serve --workers N` hands its settings to the workers as TCC_* variables: each must come
back exactly, secrets included."""

from __future__ import annotations

import pytest

from coordinator.settings import Settings


def test_as_environment__every_setting_comes_back_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = Settings(
        insecure=True,
        participant_allow="127.0.0.0/8",
        alert_webhook="http://127.0.0.1:9/alerts",
        alert_secret="sixteen-or-more-characters",
        alert_after_rounds=0,
        retention_days=30,
        otlp_endpoint="http://127.0.0.1:4318/v1/traces",
        session_secret="s" * 40,
        dtm_api=False,
        log_level="debug",
    )
    env = given.as_environment()
    assert env["TCC_ALERT_SECRET"] == "sixteen-or-more-characters"
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"TCC_{name.upper()}", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    again = Settings()
    assert again == given
    assert again.alert_secret is not None
    assert again.alert_secret.get_secret_value() == "sixteen-or-more-characters"
