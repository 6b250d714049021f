"""`weights verify`: a checkpoint's top AudioSet labels and embedding statistics on a few clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audiotag.cli.main import main
from audiotag.core.errors import DataError
from audiotag.models import verify
from tests.golden_weights import fixture_state, load_fixture


def test_audioset_labels_are_the_527_classes() -> None:
    labels = verify.audioset_labels()
    assert len(labels) == 527 and labels[0] == "Speech" and "Sine wave" in labels


@pytest.mark.slow
def test_real_aisfx_weights_give_embedding_statistics(capsys: pytest.CaptureFixture[str]) -> None:
    main(["weights", "verify", "aisfx"])
    out = capsys.readouterr().out
    assert "no AudioSet head" in out and "sine_440Hz" in out and "embeddings: dim 512" in out


@pytest.mark.slow
def test_panns_checkpoint_prints_top_audioset_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CNN10 with the golden fixture's seeded weights (official layout) on clips from a folder."""
    weights = tmp_path / "Cnn10_mAP=0.380.pth"
    torch.save({"model": fixture_state(load_fixture("panns_cnn10"))}, weights)
    audio = tmp_path / "clips"
    audio.mkdir()
    rng = np.random.default_rng(0)
    sf.write(audio / "noise.wav", 0.1 * rng.standard_normal(44100), 44100)  # resampled to 32 kHz
    sf.write(audio / "tone.flac", 0.3 * np.sin(np.arange(16000) * 0.2), 16000)
    results, notes = verify.run_checkpoint("cnn10", verify.audio_clips(audio, 32000, 8), weights, top_k=3)
    assert [r.name for r in results] == ["noise.wav", "tone.flac"]
    assert [r.seconds for r in results] == pytest.approx([1.0, 1.0])
    labels = set(verify.audioset_labels())
    for r in results:
        assert len(r.top) == 3 and all(label in labels for label, _ in r.top)
        assert r.top[0][1] >= r.top[1][1] >= r.top[2][1]
        assert r.embedding.shape == (512,)
    assert "0 adapted" in notes[0]
    main(["weights", "verify", "cnn10", "--weights", str(weights), "--audio", str(audio), "--top", "2"])
    out = capsys.readouterr().out
    assert "top 2 AudioSet labels" in out and "tone.flac" in out


def test_audio_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        verify.audio_clips(tmp_path / "absent", 16000, 8)
    with pytest.raises(DataError, match="no audio files"):
        verify.audio_clips(tmp_path, 16000, 8)
