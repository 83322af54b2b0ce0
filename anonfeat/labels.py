"""Video labels for auditing and adapter training: utility tasks, binary private attributes, splits.

Three formats are read (see `load_labels`):

* CSV, one row per video: ``video,split,action,<attribute>,...``. ``split`` is optional
  (train/attacker/test; files with train/test only are read as before); attribute columns hold 0/1.
* PA-HMDB51: a folder of ``<action>.json`` files (VITA-Group/PA-HMDB51 ``PrivacyAttributes``),
  ``{"<video>.avi": {"face": [[start, end, value], ...], ..., "review": bool, "note": str}}``.
  The multi-valued codes become binary attributes, each 1 when the value occurs in ANY frame range of
  the video (a person seen once has leaked):

  - face: a face is visible (code 1 partial or 2 complete)
  - skin_color: skin color is identifiable (code 1, 2 or 3)
  - gender: gender is identifiable (code 1 or 2)
  - nudity: some nudity (code 1 or 2)
  - relationship: a relationship is visible (code 1)
  - face_complete: a complete face (code 2)
  - skin_color_white / skin_color_brown_yellow / skin_color_black: code 1 / 2 / 3
  - gender_male / gender_female: code 1 / 2 for any of the people listed
  - nudity_level2: code 2

  The first five, named and defined like the VP-HMDB51/VP-UCF101 attributes, are the default set when
  no attributes are named (the papers' 5-attribute protocol); the finer ones can be chosen by name.
  Video ids are ``<action>/<video>`` (HMDB51's folder layout); the action is the file's stem. An entry
  may carry a ``"split": "train"|"attacker"|"test"`` field (anonfeat's addition, not in the release);
  then every entry must.
* VP-HMDB51 / VP-UCF101 (STPrivacy): a pickle ``{"<Class>/<video>.mp4": int64 array (1, 5)}``. The five
  columns are taken in the order public VP loaders use, ``face, skin_color, gender, nudity, relationship``
  (1 = identifiable); the file itself carries no names, so check this against your copy's documentation.
  The action is the ``<Class>`` folder. The pickle is read with `SafeUnpickler`, which builds numpy
  arrays and nothing else: a pickle that names any other global is refused before anything in it runs.

Without a split column every command derives the same split with `stratified_split` (see there):
50% train (the anonymizer's), 25% attacker (the audit's attackers and probes) and 25% test, seeded by
the split seed, stratified on the ``action`` column when the labels have one (else on the first task),
drawn over the label rows, so it does not depend on which videos a store holds.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import numpy as np

from anonfeat.errors import AnonfeatError

VIDEO, SPLIT = "video", "split"
SPLITS = ("train", "attacker", "test")
REQUIRED_SPLITS = ("train", "test")  # attacker is optional: old two-valued files, tiny label sets
SPLIT_FRACTIONS = (0.5, 0.25, 0.25)  # train, attacker, test of a derived split
STRATIFY_COLUMN = "action"
_TIE_ORDER = (0, 2, 1)  # indices into SPLITS: a left-over video prefers train, then test (required), then attacker
VP_ATTRIBUTES = ("face", "skin_color", "gender", "nudity", "relationship")

# PA-HMDB51: binary attribute -> (JSON field, codes that make it 1).
PA_HMDB51_ATTRIBUTES: dict[str, tuple[str, frozenset[int]]] = {
    "face": ("face", frozenset({1, 2})),
    "skin_color": ("skin_color", frozenset({1, 2, 3})),
    "gender": ("gender", frozenset({1, 2})),
    "nudity": ("nudity", frozenset({1, 2})),
    "relationship": ("relationship", frozenset({1})),
    "face_complete": ("face", frozenset({2})),
    "skin_color_white": ("skin_color", frozenset({1})),
    "skin_color_brown_yellow": ("skin_color", frozenset({2})),
    "skin_color_black": ("skin_color", frozenset({3})),
    "gender_male": ("gender", frozenset({1})),
    "gender_female": ("gender", frozenset({2})),
    "nudity_level2": ("nudity", frozenset({2})),
}
PA_RANGE = "[[start_frame, end_frame, value], ...]"  # every PA-HMDB51 format message shows this shape
PA_HMDB51_FIELDS = ("face", "gender", "skin_color", "nudity", "relationship")

_TRUE, _FALSE = {"1", "1.0", "true", "yes"}, {"0", "0.0", "false", "no"}


@dataclass
class Labels:
    """Labels of a set of videos, aligned by position.

    `tasks` hold raw class names (utility columns), `attributes` 0/1 int arrays (private attributes),
    `columns` raw strings of other columns kept on request (e.g. a bias grouping column).
    """

    source: Path
    videos: list[str]
    split: list[str]
    tasks: dict[str, list[str]]
    attributes: dict[str, np.ndarray]
    columns: dict[str, list[str]] = field(default_factory=dict)
    split_generated: bool = False
    split_seed: int | None = None  # the seed of a derived split (None: the split came from the labels)
    split_strata: str | None = None  # the column a derived split was stratified on
    # Columns left out of the default attributes because they hold class names, not 0/1 (e.g. synth's
    # `lighting`, or a `gender` column of words): the audit names them so none is dropped unseen.
    class_columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def attribute_names(self) -> list[str]:
        return list(self.attributes)

    def task_classes(self, task: str) -> list[str]:
        """Sorted class names of a utility task (over every video, so all stores share one index)."""
        return sorted(set(self.tasks[task]))

    def task_targets(self, task: str) -> np.ndarray:
        """Class indices (into `task_classes`) per video."""
        index = {name: i for i, name in enumerate(self.task_classes(task))}
        return np.array([index[v] for v in self.tasks[task]], dtype=np.int64)

    def attribute_matrix(self, names: Sequence[str] | None = None) -> np.ndarray:
        """(n_videos, k) int matrix of the named attributes (all by default)."""
        names = list(self.attributes) if names is None else list(names)
        if not names:
            return np.zeros((len(self), 0), dtype=np.int64)
        return np.stack([self.attributes[n] for n in names], axis=1)

    def indices(self, split: str) -> np.ndarray:
        return np.array([i for i, s in enumerate(self.split) if s == split], dtype=np.int64)

    def split_counts(self) -> dict[str, int]:
        """Label rows per split value, e.g. {"train": 50, "attacker": 25, "test": 25}."""
        return {name: self.split.count(name) for name in SPLITS}

    def split_summary(self) -> str:
        """One line saying where the split came from and its sizes (commands print it)."""
        counts = " / ".join(f"{n} {name}" for name, n in self.split_counts().items())
        if not self.split_generated:
            return f"{self.source}: split column: {counts}"
        return (f"{self.source}: no split column; derived split (--split-seed {self.split_seed}, stratified on "
                f"{self.split_strata!r}): {counts}")

    def group_values(self, column: str) -> list[str]:
        """Raw values of an attribute or kept column, as strings (for grouping, e.g. bias)."""
        if column in self.columns:
            return list(self.columns[column])
        if column in self.attributes:
            return [str(int(v)) for v in self.attributes[column]]
        if column in self.tasks:
            return list(self.tasks[column])
        raise AnonfeatError(f"{self.source}: no column {column!r}; "
                            f"choose one of {', '.join(self._all_columns())}")

    def _all_columns(self) -> list[str]:
        return [*self.tasks, *self.attributes, *self.columns]


# -- loading ------------------------------------------------------------------------------------
def load_labels(path: str | Path, tasks: Sequence[str] = ("action",), attributes: Sequence[str] | None = None,
                split_seed: int = 0, keep: Sequence[str] = (), require_attributes: bool = True) -> Labels:
    """Read labels from a CSV file, a PA-HMDB51 JSON folder or a VP pickle (chosen by the path).

    tasks: utility columns (class names); without an ``action`` column the first one stratifies a
        derived split.
    split_seed: seed of the derived split when the labels have no split column (`stratified_split`).
    attributes: private binary columns; None takes every other column holding 0/1 values (CSV) or the
        default set.
    keep: extra columns kept as raw strings in `Labels.columns` (e.g. a bias grouping column); a kept
        column that is not binary is left out of the default attributes instead of being an error.
    require_attributes: refuse labels without private attributes (audits need them; trainers with a
        self-supervised privacy loss do not).
    """
    path = Path(path)
    tasks = list(tasks)
    if not tasks:
        raise AnonfeatError("give at least one utility task (--task COLUMN, default action)")
    if not path.exists():
        raise AnonfeatError(f"{path}: no such labels file or folder; pass --labels LABELS.csv, a PA-HMDB51 "
                            "PrivacyAttributes folder or a VP .pkl")
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".json":
        rows, table_columns, defaults = _read_pa_hmdb51(path)
    elif suffix in (".pkl", ".pickle"):
        rows, table_columns, defaults = _read_vp_pickle(path)
    elif suffix in (".csv", ".tsv", ".txt"):
        rows, table_columns, defaults = _read_csv(path)
    else:
        raise AnonfeatError(f"{path}: unknown labels format {suffix or '(no suffix)'!r}; use a .csv file, "
                            "a folder of PA-HMDB51 <action>.json files or a VP-HMDB51/VP-UCF101 .pkl")
    return _build(path, rows, table_columns, defaults, tasks, attributes, list(keep), split_seed,
                  require_attributes)


def _build(path: Path, rows: list[dict[str, str]], columns: list[str], default_attributes: list[str] | None,
           tasks: list[str], attributes: Sequence[str] | None, keep: list[str], split_seed: int,
           require_attributes: bool = True) -> Labels:
    if not rows:
        raise AnonfeatError(f"{path}: no videos in the labels; add rows (video,split,action,...)")
    missing = [c for c in (VIDEO, *tasks) if c not in columns]
    if missing:
        hint = " (or choose existing ones with --task)" if any(c in tasks for c in missing) else ""
        raise AnonfeatError(f"{path}: missing column(s) {', '.join(missing)}; add them{hint}. "
                            f"Columns present: {', '.join(columns)}")
    unknown_keep = [c for c in keep if c not in columns]
    if unknown_keep:
        raise AnonfeatError(f"{path}: no column {', '.join(unknown_keep)}; choose among {', '.join(columns)}")
    reserved = {VIDEO, SPLIT, *tasks}
    class_columns: list[str] = []
    if attributes is None:
        pool = default_attributes if default_attributes is not None else columns
        # A column of class names (no 0/1 value at all, e.g. synth's `lighting`) is not a default attribute
        # (it is recorded in class_columns); one with a stray non-0/1 value stays an attribute and is
        # refused below, naming the value.
        candidates = [c for c in pool if c not in reserved and not (c in keep and not _is_binary(rows, c))]
        class_columns = [c for c in candidates if all(_parse_binary(r[c]) is None for r in rows)]
        attributes = [c for c in candidates if c not in class_columns]
    else:
        attributes = list(attributes)
        unknown = [c for c in attributes if c not in columns]
        if unknown:
            candidates = [c for c in columns if c not in reserved]
            raise AnonfeatError(f"{path}: no attribute column {', '.join(unknown)}; --attributes takes "
                                f"names among {', '.join(candidates)}")
        clash = [c for c in attributes if c in reserved]
        if clash:
            raise AnonfeatError(f"{path}: {', '.join(clash)} cannot be a private attribute (it is the video, "
                                "split or a --task column)")
    if not attributes and require_attributes:
        words = (f" ({', '.join(class_columns)} hold class names, not 0/1: binarize them)" if class_columns
                 else "")
        raise AnonfeatError(f"{path}: no private attribute columns{words}; add 0/1 columns next to "
                            "video,split,action or name them with --attributes")

    videos = [_normalize(r[VIDEO]) for r in rows]
    for i, video in enumerate(videos):
        if not video:
            raise AnonfeatError(f"{path}: row {i + 2}: empty video id; fill the video column")
    repeated = sorted((v, n) for v, n in Counter(videos).items() if n > 1)
    if repeated:
        raise AnonfeatError(f"{path}: video {repeated[0][0]!r} is listed {repeated[0][1]} times; "
                            "keep one row per video")
    task_values = {t: [r[t].strip() for r in rows] for t in tasks}
    for t, values in task_values.items():
        empty = [i for i, v in enumerate(values) if not v]
        if empty:
            raise AnonfeatError(f"{path}: column {t!r} is empty for video {videos[empty[0]]!r}; "
                                "give every video a class")
    attribute_values = {a: _binary_column(path, rows, a, videos) for a in attributes}

    strata = None
    if SPLIT in columns:
        split = [_parse_split(path, r[SPLIT], video) for r, video in zip(rows, videos)]
        generated = False
    else:
        strata = STRATIFY_COLUMN if STRATIFY_COLUMN in columns else tasks[0]
        split = stratified_split([r[strata].strip() for r in rows], split_seed)
        generated = True
    for name in REQUIRED_SPLITS:
        if name not in split:
            how = ("the generated split" if generated else "the split column")
            raise AnonfeatError(f"{path}: {how} has no {name} videos; put some rows in {name}"
                                + ("" if generated else " or drop the split column for a seeded split"))
    return Labels(
        source=path,
        videos=videos,
        split=split,
        tasks=task_values,
        attributes=attribute_values,
        columns={c: [r[c].strip() for r in rows] for c in keep},
        split_generated=generated,
        split_seed=split_seed if generated else None,
        split_strata=strata,
        class_columns=class_columns,
    )


def _normalize(video: str) -> str:
    video = video.strip().replace("\\", "/")
    while video.startswith("./"):
        video = video[2:]
    return video


def _parse_binary(value: str) -> int | None:
    text = str(value).strip().lower()
    return 1 if text in _TRUE else 0 if text in _FALSE else None


def _is_binary(rows: list[dict[str, str]], column: str) -> bool:
    return all(_parse_binary(r[column]) is not None for r in rows)


def _binary_column(path: Path, rows: list[dict[str, str]], column: str, videos: list[str]) -> np.ndarray:
    values = np.zeros(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        parsed = _parse_binary(row[column])
        if parsed is None:
            raise AnonfeatError(f"{path}: attribute {column!r} of video {videos[i]!r} (row {i + 2}) is "
                                f"{row[column]!r}, not 0/1; binarize it or leave the column out with "
                                "--attributes")
        values[i] = parsed
    return values


def _parse_split(path: Path, value: str, video: str) -> str:
    text = value.strip().lower()
    if text not in SPLITS:
        raise AnonfeatError(f"{path}: split of video {video!r} is {value!r}; use train, attacker or test "
                            "(validation is carved out of train by the trainers and of the fitting split by the "
                            "audit)")
    return text


def stratified_split(strata: Sequence[str], seed: int = 0,
                     fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> list[str]:
    """The derived split: "train", "attacker" or "test" per row, `fractions` of each stratum in each.

    Every command that reads labels without a split column calls this with the same strata (the
    ``action`` column, else the first task) and the split seed, so they all agree on every row.
    Per stratum (sorted by name) the members are shuffled with the seed; each split gets the floor of
    its share, and the videos left over go one by one to the split furthest below its share of all
    rows assigned so far (the global fractions stay within a video or two of the targets). A stratum of
    3 or more videos then has at least one in each split of positive fraction (moved from the largest);
    smaller strata cannot: 2 videos go to train and to whichever of test/attacker lags (test on a tie),
    1 video to whichever split lags most (train, then test, on a tie).
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or not abs(sum(fractions) - 1.0) < 1e-9:
        raise AnonfeatError(f"split fractions {fractions}: give {len(SPLITS)} non-negative shares summing to 1 "
                            f"({', '.join(SPLITS)})")
    rng = np.random.default_rng(seed)
    share = np.array(fractions, dtype=np.float64)
    split = [""] * len(strata)
    by_stratum: dict[str, list[int]] = {}
    for i, name in enumerate(strata):
        by_stratum.setdefault(name, []).append(i)
    assigned = np.zeros(len(SPLITS))
    for name in sorted(by_stratum):
        members = np.array(by_stratum[name])
        rng.shuffle(members)
        n = len(members)
        counts = np.floor(n * share).astype(int)
        for _ in range(n - counts.sum()):
            deficit = (assigned.sum() + n) * share - (assigned + counts)
            deficit[share == 0] = -np.inf
            counts[max(_TIE_ORDER, key=lambda j: deficit[j])] += 1  # ties: train, then test, then attacker
        positive = np.flatnonzero(share > 0)
        if n >= len(positive):
            for empty in positive[counts[positive] == 0]:
                counts[int(np.argmax(counts))] -= 1
                counts[empty] += 1
        assigned += counts
        start = 0
        for value, count in zip(SPLITS, counts):
            for i in members[start:start + count]:
                split[int(i)] = value
            start += count
    return split


# -- CSV ------------------------------------------------------------------------------------
def _read_csv(path: Path) -> tuple[list[dict[str, str]], list[str], None]:
    """Rows of a UTF-8 CSV. Other encodings are refused, not guessed: a wrongly decoded video name would
    silently match no video (or the wrong one)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise AnonfeatError(f"{path}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} on line {line}); save it as "
                            f"UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8.csv`") from None
    dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    rows = []
    try:
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if not columns:
            raise AnonfeatError(f"{path}: empty CSV; the first line must name the columns (video,split,action,...)")
        repeated = sorted(c for c, n in Counter(columns).items() if n > 1)
        if repeated:
            raise AnonfeatError(f"{path}: column {repeated[0]!r} appears {Counter(columns)[repeated[0]]} times in the "
                                "header; keep one column of each name")
        for line, raw in enumerate(reader, start=2):
            if None in raw or any(v is None for v in raw.values()):
                raise AnonfeatError(f"{path}: line {line} has {len([v for v in raw.values() if v is not None])} "
                                    f"fields, the header {len(columns)}; fix the row")
            rows.append({c.strip(): v for c, v in raw.items()})
    except csv.Error as exc:  # a field past csv's size limit (128 KiB), a NUL byte, ...
        raise AnonfeatError(f"{path}: line {reader.line_num + 1} cannot be read as CSV ({exc}); labels hold video "
                            "paths, classes and 0/1 values: fix that line") from None
    return rows, columns, None


# -- PA-HMDB51 ------------------------------------------------------------------------------
def _read_pa_hmdb51(path: Path) -> tuple[list[dict[str, str]], list[str], list[str]]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise AnonfeatError(f"{path}: no <action>.json files; pass PA-HMDB51's PrivacyAttributes folder")
    rows = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AnonfeatError(f"{file}: not valid JSON ({exc}); restore the PA-HMDB51 file, "
                                f"{{video: {{attribute: {PA_RANGE}, ...}}}}") from None
        if not isinstance(data, dict):
            raise AnonfeatError(f"{file}: expected {{video: {{attribute: {PA_RANGE}, ...}}}}; restore the "
                                "PA-HMDB51 file")
        for video, entry in sorted(data.items()):
            row = {VIDEO: f"{file.stem}/{video}", "action": file.stem}
            for name, (source_field, codes) in PA_HMDB51_ATTRIBUTES.items():
                seen = _pa_codes(file, video, entry, source_field)
                row[name] = "1" if seen & codes else "0"
            if SPLIT in entry:
                row[SPLIT] = str(entry[SPLIT])
            rows.append(row)
    with_split = sum(SPLIT in row for row in rows)
    if 0 < with_split < len(rows):
        first = next(row[VIDEO] for row in rows if SPLIT not in row)
        raise AnonfeatError(f"{path}: {with_split} of {len(rows)} entries have a \"split\" field but {first!r} has "
                            "none; give every entry a split (train, attacker or test) or none for a derived split")
    split_column = [SPLIT] if with_split else []
    return rows, [VIDEO, *split_column, "action", *PA_HMDB51_ATTRIBUTES], list(VP_ATTRIBUTES)


def _pa_codes(file: Path, video: str, entry: object, source_field: str) -> set[int]:
    """Every code that field takes in any frame range of the video (lists mean several people)."""
    if not isinstance(entry, dict):
        raise AnonfeatError(f"{file}: entry of {video!r} is not an object of attributes "
                            f"{{attribute: {PA_RANGE}, ...}}; fix or remove it")
    ranges = entry.get(source_field, [])
    codes: set[int] = set()
    try:
        for item in ranges:
            value = item[2]
            for code in value if isinstance(value, list) else [value]:
                codes.add(int(code))
    except (TypeError, IndexError, ValueError):
        raise AnonfeatError(f"{file}: {video!r} field {source_field!r} is not a list of "
                            f"{PA_RANGE}; fix or remove it") from None
    return codes


# -- VP pickle --------------------------------------------------------------------------------
def _numpy_globals() -> dict[tuple[str, str], object]:
    """The few globals a pickle of numpy arrays, dtypes and scalars refers to (numpy 1 and 2 names)."""
    core = getattr(np, "_core", None) or np.core
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,  # bytes in protocol-2 pickles
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array/dtype/scalar globals; any other global is refused.

    A pickle runs code by naming a callable global (os.system, builtins.eval, ...) and calling it. Refusing
    the lookup stops the load before the call, so nothing in a malicious file runs.
    """

    def __init__(self, file, source: str | Path = "<pickle>"):
        super().__init__(file)
        self.source = source
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise AnonfeatError(f"{self.source}: refused to load: the pickle calls {module}.{name}, and "
                                "only numpy arrays are allowed in a labels pickle; it may be malicious, "
                                "get the file from its original source") from None

    def persistent_load(self, pid):
        raise AnonfeatError(f"{self.source}: refused to load: the pickle uses persistent ids; "
                            "only numpy arrays are allowed")


def safe_load_pickle(path: str | Path) -> object:
    """Load a pickle holding plain containers and numpy arrays only (see `SafeUnpickler`)."""
    path = Path(path)
    with open(path, "rb") as handle:
        try:
            return SafeUnpickler(handle, path).load()
        except AnonfeatError:
            raise
        except Exception as exc:  # truncated or corrupt files raise many kinds of errors
            raise AnonfeatError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); "
                                "re-download the labels file") from None


def _read_vp_pickle(path: Path) -> tuple[list[dict[str, str]], list[str], list[str]]:
    data = safe_load_pickle(path)
    if not isinstance(data, dict):
        raise AnonfeatError(f"{path}: expected a dict {{'<Class>/<video>': array of {len(VP_ATTRIBUTES)} 0/1}}, "
                            f"got {type(data).__name__}")
    rows = []
    for key, value in sorted(data.items(), key=lambda kv: str(kv[0])):
        video = _normalize(str(key))
        parts = PurePosixPath(video).parts
        if len(parts) < 2:
            raise AnonfeatError(f"{path}: key {key!r} has no <Class>/ folder to take the action from")
        try:
            values = np.asarray(value).reshape(-1)
        except Exception:
            raise AnonfeatError(f"{path}: value of {key!r} is not an array of 0/1") from None
        if values.shape[0] != len(VP_ATTRIBUTES) or not np.isin(values, (0, 1)).all():
            raise AnonfeatError(f"{path}: value of {key!r} is {values.tolist()}; expected "
                                f"{len(VP_ATTRIBUTES)} values of 0/1 ({', '.join(VP_ATTRIBUTES)})")
        row = {VIDEO: video, "action": parts[-2]}
        row.update({name: str(int(v)) for name, v in zip(VP_ATTRIBUTES, values)})
        rows.append(row)
    return rows, [VIDEO, "action", *VP_ATTRIBUTES], list(VP_ATTRIBUTES)


# -- matching labels to store keys ----------------------------------------------------------------
@dataclass
class Match:
    """Label rows paired with store keys; `pairs` are (label index, store key), in label order."""

    pairs: list[tuple[int, str]]
    unmatched_labels: int
    unmatched_store: int

    @property
    def label_indices(self) -> np.ndarray:
        return np.array([i for i, _ in self.pairs], dtype=np.int64)

    @property
    def keys(self) -> list[str]:
        return [k for _, k in self.pairs]


def _without_suffix(path: str) -> str:
    posix = PurePosixPath(path)
    return str(posix.with_suffix("")) if posix.suffix else path


def match_videos(labels: Labels, store_keys: Iterable[str]) -> Match:
    """Pair label videos with store keys: same relative path, then same path without extension
    (labels list .mp4 where the store was extracted from .avi), then same stem when unique on both sides.
    """
    keys = [_normalize(k) for k in store_keys]
    original = dict(zip(keys, store_keys))
    free_keys = set(keys)
    found: dict[int, str] = {}

    def stage(norm) -> None:
        key_map: dict[str, list[str]] = {}
        for key in free_keys:
            key_map.setdefault(norm(key), []).append(key)
        label_map: dict[str, list[int]] = {}
        for i, video in enumerate(labels.videos):
            if i not in found:
                label_map.setdefault(norm(video), []).append(i)
        for name, rows in label_map.items():
            candidates = key_map.get(name, [])
            if len(rows) == 1 and len(candidates) == 1:
                found[rows[0]] = candidates[0]
                free_keys.discard(candidates[0])

    stage(lambda p: p)
    stage(_without_suffix)
    stage(lambda p: PurePosixPath(p).stem)
    pairs = [(i, original[found[i]]) for i in sorted(found)]
    return Match(pairs=pairs, unmatched_labels=len(labels) - len(pairs), unmatched_store=len(free_keys))
