"""Made-up datasets in the layouts ``kind: table`` reads, for the tests of your-own-data competitions.

Each builder writes tiny WAV files (tones whose frequency tells the class, plus a little noise, so a
small CNN learns something in one epoch) and the CSVs of one layout under ``root``, and returns the
competition YAML it wrote (or, for UrbanSound8K, the data folder for ``--data-dir``). Class names are
made up and deliberately not sorted.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import yaml

RATE = 16000
CLASSES = ["zorp", "blip", "whirr"]
FREQS = {"zorp": 300.0, "blip": 1200.0, "whirr": 3000.0}

# The tiny training run every end-to-end test uses (the generic table experiment, narrowed).
TINY_TRAIN = (
    "model.channels=[8,16]",
    "model.embedding_dim=16",
    "train.epochs=1",
    "train.batch_size=16",
    "train.patience=1",
)


def tone(labels: list[str], seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(RATE * seconds)) / RATE
    wave = sum(np.sin(2 * np.pi * FREQS[name] * t) for name in labels) * 0.2
    return (wave + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, rate: int = RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, rate)


def write_yaml(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli_args(competition: str | Path, *stages: str, extra: tuple[str, ...] = ()) -> list[str]:
    out = [*stages, "-c", str(competition), "--workers", "1"]
    for item in (*TINY_TRAIN, *extra):
        out += ["--set", item]
    return out


# ----------------------------------------------------------------------------- (a) one CSV, groups


def grouped_single_label(root: Path, name: str = "own_grouped") -> Path:
    """train.csv (clip,tag,session): 6 clips a class, sessions of 2 clips; test/ and a sample
    submission whose id column is ``clip``; top-1 labels, accuracy."""
    rows = []
    for c, label in enumerate(CLASSES):
        for i in range(6):
            clip = f"{label}_{i}.wav"
            write_wav(root / "audio" / clip, tone([label], 0.6, seed=10 * c + i))
            rows.append({"clip": clip, "tag": label, "session": f"{label}-s{i // 2}"})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test = [f"t{i}.wav" for i in range(4)]
    for i, clip in enumerate(test):
        write_wav(root / "test" / clip, tone([CLASSES[i % 3]], 0.6, seed=100 + i))
    pd.DataFrame({"clip": test, "prediction": ""}).to_csv(root / "sample_submission.csv", index=False)
    spec = {
        "name": name,
        "kind": "table",
        "data_dir": str(root),
        "train_csv": "train.csv",
        "audio_dir": "audio",
        "test_dir": "test",
        "sample_submission": "sample_submission.csv",
        "file_column": "clip",
        "label_column": "tag",
        "group_column": "session",
        "metric": "accuracy",
        "submission": {"kind": "top_k_labels", "k": 1, "id_column": "clip"},
        "n_folds": 3,
    }
    return write_yaml(root / "comp.yaml", spec)


# ----------------------------------------------------------------------------- (b) curated + noisy


SAMPLE_ORDER = ["whirr", "zorp", "blip"]  # the sample's class columns: neither sorted nor CLASSES' order


def curated_noisy(root: Path, name: str = "own_curated_noisy") -> Path:
    """FSDKaggle2019-style: train_curated.csv and train_noisy.csv (fname,labels, comma-separated) with
    their folders, test/ and a sample submission of class columns in its own order (sample_columns)."""
    for subset, n in (("curated", 4), ("noisy", 3)):
        rows = []
        for c, label in enumerate(CLASSES):
            for i in range(n):
                labels = [label, CLASSES[(c + 1) % 3]] if i % 2 else [label]
                fname = f"{subset[0]}{c}{i}.wav"
                write_wav(root / f"train_{subset}" / fname, tone(labels, 0.6, seed=len(rows) + 50 * n))
                rows.append({"fname": fname, "labels": ",".join(labels)})
        pd.DataFrame(rows).to_csv(root / f"train_{subset}.csv", index=False)
    test = [f"x{i}.wav" for i in range(3)]
    for i, fname in enumerate(test):
        write_wav(root / "test" / fname, tone([CLASSES[i]], 0.6, seed=200 + i))
    sample = pd.DataFrame(0.0, index=range(len(test)), columns=SAMPLE_ORDER)
    sample.insert(0, "fname", test)
    sample.to_csv(root / "sample_submission.csv", index=False)
    spec = {
        "name": name,
        "kind": "table",
        "data_dir": str(root),
        "train_csv": {"curated": "train_curated.csv", "noisy": "train_noisy.csv"},
        "audio_dir": {"curated": "train_curated", "noisy": "train_noisy"},
        "noisy_subsets": ["noisy"],
        "test_dir": "test",
        "sample_submission": "sample_submission.csv",
        "label_column": "labels",
        "multi_label": True,
        "metric": "lwlrap",
        "submission": {"kind": "sample_columns"},
        "n_folds": 3,
    }
    return write_yaml(root / "comp.yaml", spec)


# ----------------------------------------------------------------------------- (c) UrbanSound8K


US8K_COLUMNS = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
US8K_CLASSES = {"dog_bark": 3, "siren": 8, "jackhammer": 7}  # UrbanSound8K names and classIDs


def urbansound8k_rows(n_folds: int = 10) -> tuple[pd.DataFrame, dict[str, bytes]]:
    """Per fold, two slices of one Freesound recording per class (as UrbanSound8K keeps a recording's
    slices in one fold); start/end are positions in that recording (past the slices' own ends)."""
    rows, files = [], {}
    for fold in range(1, n_folds + 1):
        for c, (label, class_id) in enumerate(US8K_CLASSES.items()):
            fs_id = 1000 * fold + c
            for slice_id in range(2):
                name = f"{fs_id}-{class_id}-0-{slice_id}.wav"
                start = 60.0 + 4 * slice_id
                rows.append([name, fs_id, start, start + 4.0, 1, fold, class_id, label])
                buf = io.BytesIO()
                sf.write(buf, tone([CLASSES[c]], 0.5, seed=len(rows)), RATE, format="WAV")
                files[f"audio/fold{fold}/{name}"] = buf.getvalue()
    return pd.DataFrame(rows, columns=US8K_COLUMNS), files


def urbansound8k_folder(root: Path, n_folds: int = 10) -> Path:
    """The UrbanSound8K layout under ``root/UrbanSound8K``; that folder (for --data-dir)."""
    meta, files = urbansound8k_rows(n_folds)
    top = root / "UrbanSound8K"
    (top / "metadata").mkdir(parents=True, exist_ok=True)
    meta.to_csv(top / "metadata" / "UrbanSound8K.csv", index=False)
    for rel, data in files.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(data)
    return top


def urbansound8k_tar_gz(n_folds: int = 10) -> bytes:
    """The same files as UrbanSound8K.tar.gz holds them: under a top folder UrbanSound8K/."""
    meta, files = urbansound8k_rows(n_folds)
    files = {"metadata/UrbanSound8K.csv": meta.to_csv(index=False).encode(), **files}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(f"UrbanSound8K/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# ----------------------------------------------------------------------------- (d) segments


SEGMENT_SECONDS = 0.8


def segments_table(root: Path, name: str = "own_segments") -> Path:
    """Recordings of 3 events each (one class per 0.8 s stretch, silence-free), listed as segments
    (file,start,end,label) grouped by recording; test/ holds whole short files, no sample submission:
    scores in vocabulary order."""
    rows = []
    for r in range(6):
        order = [CLASSES[(r + k) % 3] for k in range(3)]
        recording = f"rec{r}.wav"
        wave = np.concatenate(
            [tone([label], SEGMENT_SECONDS, seed=10 * r + k) for k, label in enumerate(order)]
        )
        write_wav(root / "recordings" / recording, wave)
        for k, label in enumerate(order):
            start = round(k * SEGMENT_SECONDS, 3)
            rows.append(
                {"file": recording, "start": start, "end": round(start + SEGMENT_SECONDS, 3), "label": label}
            )
    pd.DataFrame(rows).to_csv(root / "segments.csv", index=False)
    for i in range(3):
        write_wav(root / "test" / f"q{i}.wav", tone([CLASSES[i]], SEGMENT_SECONDS, seed=300 + i))
    spec = {
        "name": name,
        "kind": "table",
        "data_dir": str(root),
        "train_csv": "segments.csv",
        "audio_dir": "recordings",
        "test_dir": "test",
        "file_column": "file",
        "start_column": "start",
        "end_column": "end",
        "group_column": "file",
        "metric": "lwlrap",
        "submission": {"kind": "scores"},
        "n_folds": 3,
    }
    return write_yaml(root / "comp.yaml", spec)
