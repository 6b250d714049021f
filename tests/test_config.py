from __future__ import annotations

import json
from pathlib import Path

import pytest

from audiotag.config.files import apply_overrides, configs_root
from audiotag.config.schema import AudioRules, FeatureConfig, load_competition, load_ensemble
from audiotag.core.errors import ConfigError
from audiotag.train.experiment import ExperimentConfig, load_experiment

DEMO = configs_root() / "experiments" / "demo" / "cnn_small.yaml"


def test_default_experiment_composes_groups() -> None:
    cfg = load_experiment(DEMO)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == "cnn_small"
    assert cfg.competition.name == "demo"
    assert cfg.features.name == "logmel_16k_64" and cfg.features.n_mels == 64
    assert cfg.model.channels == [16, 32, 64, 128]


def test_overrides_change_values_and_swap_groups() -> None:
    cfg = load_experiment(DEMO, ["train.epochs=3", "model=cnn14", "train.specaugment.freq_masks=0"])
    assert cfg.train.epochs == 3
    assert cfg.model.channels == [64, 128, 256, 512, 1024, 2048]
    assert cfg.train.specaugment.freq_masks == 0


def test_group_with_base_and_changes(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("competition: demo\nfeatures: {base: logmel_16k_64, n_mels: 40}\nmodel: cnn_small\n")
    cfg = load_experiment(path)
    assert cfg.features.n_mels == 40 and cfg.features.sample_rate == 16000


def test_unknown_key_names_path_and_allowed_keys() -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment(DEMO, ["train.epoch=3"])
    text = str(info.value)
    assert "train.epoch: unknown key" in text
    assert "epochs" in text and "batch_size" in text


def test_wrong_type_names_path_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment(DEMO, ["train.batch_size=many"])
    assert "train.batch_size" in str(info.value) and "'many'" in str(info.value)


def test_literal_lists_allowed_values() -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment(DEMO, ["train.pad_mode=reflect"])
    assert (
        "train.pad_mode" in str(info.value)
        and "'constant'" in str(info.value)
        and "'wrap'" in str(info.value)
    )


def test_unknown_group_file_lists_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_experiment(DEMO, ["model=resnet9000"])
    assert "resnet9000" in str(info.value) and "cnn_small" in str(info.value)


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match=r"KEY\.PATH=VALUE"):
        load_experiment(DEMO, ["train.epochs"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"train": {"epochs": 3}}, ["train.epochs.x=1"])


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "missing.yaml")


def test_feature_validation_and_key() -> None:
    with pytest.raises(ValueError, match="Nyquist"):
        FeatureConfig(sample_rate=16000, fmax=9000)
    a = FeatureConfig()
    b = FeatureConfig(name="other")  # the name is a label, not a setting
    c = FeatureConfig(n_mels=128)
    assert a.key() == b.key() != c.key()
    assert FeatureConfig(fmax=None).key() == FeatureConfig(fmax=8000).key()  # same resolved fmax


def test_float16_scale_is_musicnns_and_keeps_older_keys() -> None:
    plain = FeatureConfig(scale="log10_1p", log_gain=10000)
    assert plain.key() == "3d111c19cc"  # as before the setting existed: existing caches stay valid
    assert plain.model_copy(update={"float16": True}).key() != plain.key()
    with pytest.raises(ValueError, match="float16 applies to scale: log10_1p only"):
        FeatureConfig(float16=True)


def test_vggish_front_end_settings_keep_older_keys() -> None:
    """power, mel_slopes and center_pad: none (VGGish's front-end) change the cache key; their
    defaults leave every existing key as it was."""
    plain = FeatureConfig(scale="log10_1p", log_gain=10000)
    assert plain.key() == "3d111c19cc"
    changed = [
        plain.model_copy(update=u).key()
        for u in ({"power": 1}, {"mel_slopes": "mel"}, {"center_pad": "none"})
    ]
    assert len({plain.key(), *changed}) == 4


def test_ensemble_config() -> None:
    cfg = load_ensemble(configs_root() / "ensembles" / "demo.yaml")
    assert cfg.members == ["cnn_small", "probe_aisfx"] and cfg.competition.name == "demo"
    with pytest.raises(ConfigError, match="method"):
        load_ensemble(configs_root() / "ensembles" / "demo.yaml", ["method=median"])


@pytest.mark.parametrize("path", sorted((configs_root() / "experiments").rglob("*.yaml")))
def test_every_shipped_experiment_validates(path: Path) -> None:
    load_experiment(path)


# ----------------------------------------------------------------------------- competition.audio_rules


def test_audio_rules_default_to_the_decoders_rules() -> None:
    """Left out of the YAML, the section gives ``DEFAULT_RULES`` exactly, with the values (and so the
    cache hash) the decoder has always had."""
    from audiotag.data.audio import DEFAULT_RULES

    for path in sorted((configs_root() / "competitions").glob("*.yaml")):
        assert load_competition(path.stem).audio_rules == DEFAULT_RULES, path.name
    assert load_experiment(DEMO).competition.audio_rules is not None
    assert json.dumps(DEFAULT_RULES.model_dump(), sort_keys=True) == json.dumps(
        {
            "fill_seconds": 1.0,
            "max_nonfinite": 0.01,
            "max_rate": 768000,
            "max_seconds": 600.0,
            "min_rate": 1000,
            "silence_peak": 1e-05,
            "truncation_slack": 1024,
        },
        sort_keys=True,
    )
    assert len({DEFAULT_RULES, AudioRules()}) == 1  # frozen and hashable: caches are keyed by it


def test_audio_rules_are_settable(tmp_path: Path) -> None:
    cfg = load_experiment(
        DEMO, ["competition.audio_rules.max_seconds=30", "competition.audio_rules.min_rate=8000"]
    )
    assert cfg.competition.audio_rules == AudioRules(max_seconds=30.0, min_rate=8000)
    path = tmp_path / "exp.yaml"
    path.write_text(
        "competition: {base: demo, audio_rules: {max_nonfinite: 0.05, truncation_slack: 0}}\n"
        "features: logmel_16k_64\nmodel: cnn_small\n"
    )
    assert load_experiment(path).competition.audio_rules == AudioRules(max_nonfinite=0.05, truncation_slack=0)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["max_seconds=0"],
            r"competition\.audio_rules\.max_seconds: Input should be greater than 0 \(got 0\)",
        ),
        (["max_seconds=-5"], r"competition\.audio_rules\.max_seconds: Input should be greater than 0"),
        (["max_seconds=.inf"], r"competition\.audio_rules\.max_seconds: Input should be a finite number"),
        (
            ["max_nonfinite=1.5"],
            r"competition\.audio_rules\.max_nonfinite: Input should be less than or equal to 1",
        ),
        (
            ["max_nonfinite=-0.1"],
            r"competition\.audio_rules\.max_nonfinite: Input should be greater than or equal",
        ),
        (
            ["silence_peak=-1"],
            r"competition\.audio_rules\.silence_peak: Input should be greater than or equal",
        ),
        (["fill_seconds=0"], r"competition\.audio_rules\.fill_seconds: Input should be greater than 0"),
        (
            ["truncation_slack=-1"],
            r"competition\.audio_rules\.truncation_slack: Input should be greater than or equal",
        ),
        (
            ["truncation_slack=1.5"],
            r"competition\.audio_rules\.truncation_slack: Input should be a valid integer",
        ),
        (["min_rate=0"], r"competition\.audio_rules\.min_rate: Input should be greater than 0"),
        (["max_rate=lots"], r"competition\.audio_rules\.max_rate: Input should be a valid integer.*'lots'"),
        (
            ["min_rate=48000", "max_rate=16000"],
            r"competition\.audio_rules: Value error, min_rate \(48000\) must be below max_rate \(16000\)",
        ),
        (
            ["max_seconds=0.5"],
            r"competition\.audio_rules: Value error, fill_seconds \(1\) must not exceed max_seconds \(0\.5\)",
        ),
        (
            ["max_secs=30"],
            r"competition\.audio_rules\.max_secs: unknown key; allowed keys here: .*max_seconds",
        ),
    ],
)
def test_bad_audio_rule_names_the_key(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_experiment(DEMO, [f"competition.audio_rules.{o}" for o in overrides])


def test_audio_rules_do_not_change_the_clip_table_fingerprint() -> None:
    """The rules decide the feature cache, not which clips the table holds (``TABLE_NEUTRAL``)."""
    from audiotag.competitions import get_competition
    from audiotag.runs.prepare import table_fingerprint

    base = table_fingerprint(get_competition(load_competition("demo")))
    changed = load_competition("demo", ["audio_rules.max_seconds=5", "audio_rules.silence_peak=0.1"])
    assert table_fingerprint(get_competition(changed)) == base


def test_the_table_format_version_enters_the_clip_table_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables written by code with other parsing rules (e.g. before CSV names were confined to the
    audio folder) are rebuilt, not reused."""
    from audiotag.competitions import get_competition
    from audiotag.runs import prepare

    comp = get_competition(load_competition("demo"))
    now = prepare.table_fingerprint(comp)
    monkeypatch.setattr(prepare, "TABLE_FORMAT", prepare.TABLE_FORMAT - 1)
    assert prepare.table_fingerprint(comp) != now
