"""Running on a Hugging Face Space: where votes and ratings are kept."""

from __future__ import annotations

from medchat.settings import Settings


def test_on_a_space_votes_go_to_persistent_storage_or_the_tabs_say_they_are_lost(
    tmp_path, monkeypatch
):
    import medchat.settings as settings_module

    storage = tmp_path / "data"
    monkeypatch.setattr(settings_module, "SPACE_STORAGE", storage)
    monkeypatch.setenv("SPACE_ID", "someone/medchat")
    assert Settings.from_env(env={"SPACE_ID": "someone/medchat"}).storage_warning  # no /data
    storage.mkdir()
    on_space = Settings.from_env(env={"SPACE_ID": "someone/medchat"})
    assert on_space.data_dir == storage / "medchat" and on_space.storage_warning == ""
    chosen = Settings.from_env(env={"SPACE_ID": "x", "MEDCHAT_DATA_DIR": str(tmp_path / "d")})
    assert chosen.data_dir == tmp_path / "d" and "lost" in chosen.storage_warning
    monkeypatch.delenv("SPACE_ID")
    assert Settings.from_env(env={}).storage_warning == ""  # not a Space: nothing to say
