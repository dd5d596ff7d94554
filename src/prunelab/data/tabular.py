"""Tabular data from files (ARFF, CSV/TSV, libsvm) and the named sets madelon, colon, leukemia.

Readers are small and written for this project: dense float output, NaN for missing values,
DataError naming the file (and line) for anything malformed. `load_tabular_file` turns a file
into a Dataset with a seeded stratified split, imputation and standardisation fit on train only.

Nominal ARFF feature columns are encoded as follows: a two-category attribute becomes one 0/1
column (the index of its category); an attribute with three or more categories is one-hot
encoded into columns named `attr=category`. A missing nominal value is NaN in every column
it spans (so missing="mean" imputes category frequencies).
"""

from __future__ import annotations

import csv
import io
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from prunelab.data.base import (
    Dataset,
    data_dirs,
    encode_labels,
    find_data_file,
    read_file_bytes,
    stratified_split,
    to_dataset,
)
from prunelab.data.base import standardize as standardize_columns
from prunelab.errors import ConfigError, DataError, check_range

MISSING_CHOICES = ("reject", "mean")
MISSING_TOKENS = frozenset({"", "?", "NA", "N/A", "na", "n/a", "NaN", "nan"})
ARFF_SUFFIXES = (".arff", ".arff.gz")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")
LIBSVM_SUFFIXES = (".libsvm", ".svm", ".svmlight", ".libsvm.gz", ".svm.gz", ".svmlight.gz")
LABEL_NAMES = ("class", "label", "target")
_QUOTES = ("'", '"')
_NUMERIC_TYPES = frozenset({"numeric", "real", "integer"})


# ---------------------------------------------------------------------------------------------
# shared helpers


def _read_text(path: str | Path) -> str:
    """Whole file as text; gunzipped when it starts with the gzip magic bytes."""
    raw = read_file_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _unquote(token: str) -> str:
    if len(token) >= 2 and token[0] in _QUOTES and token[-1] == token[0]:
        q = token[0]
        return token[1:-1].replace("\\" + q, q).replace("\\\\", "\\")
    return token


def _closes(token: str, quote: str) -> bool:
    """Whether a stripped token that opened with `quote` ends with an unescaped `quote`."""
    if len(token) < 2 or not token.endswith(quote):
        return False
    n_backslashes = len(token[:-1]) - len(token[:-1].rstrip("\\"))
    return n_backslashes % 2 == 0


def _split_values(text: str) -> list[str]:
    """Split a comma-separated ARFF value list; quoted values may contain commas.

    Returns stripped, unquoted values. Raises ValueError on an unterminated quote.
    """
    parts = text.split(",")
    if "'" not in text and '"' not in text:
        return [p.strip() for p in parts]
    out: list[str] = []
    pending: str | None = None
    quote = ""
    for part in parts:
        if pending is None:
            tok = part.strip()
            if tok[:1] in _QUOTES and not _closes(tok, tok[0]):
                pending, quote = part, tok[0]
            else:
                out.append(_unquote(tok))
        else:
            pending += "," + part
            tok = pending.strip()
            if _closes(tok, quote):
                out.append(_unquote(tok))
                pending = None
    if pending is not None:
        raise ValueError(f"unterminated quote in {pending.strip()[:40]!r}")
    return out


def _to_float(token: str) -> float:
    """One value as float: NaN for a missing marker, ValueError otherwise if not a number."""
    if token in MISSING_TOKENS:
        return float("nan")
    return float(_unquote(token))


def _coerce_labels(labels: list[str]) -> np.ndarray:
    """Labels as int64 when all are integers, float64 when all are numbers, else str.

    Numeric labels then sort numerically in encode_labels ("2" before "10").
    """
    try:
        as_float = np.array([float(v) for v in labels], dtype=np.float64)
    except ValueError:
        return np.array(labels, dtype=str)
    if np.all(np.isfinite(as_float)) and np.all(as_float == np.round(as_float)):
        return as_float.astype(np.int64)
    return as_float


# ---------------------------------------------------------------------------------------------
# ARFF


def _parse_attribute(rest: str, path: Path, lineno: int) -> tuple[str, str, list[str] | None]:
    """(name, "numeric"|"nominal", categories) from the text after '@attribute'."""
    rest = rest.strip()
    if not rest:
        raise DataError(f"{path}, line {lineno}: @attribute without a name")
    if rest[0] in _QUOTES:
        q, end = rest[0], 1
        while end < len(rest) and rest[end] != q:
            end += 2 if rest[end] == "\\" else 1
        if end >= len(rest):
            raise DataError(f"{path}, line {lineno}: unterminated quote in attribute name")
        name = _unquote(rest[: end + 1])
        type_spec = rest[end + 1 :].strip()
    else:
        cut = len(rest)
        for i, ch in enumerate(rest):
            if ch.isspace() or ch == "{":
                cut = i
                break
        name, type_spec = rest[:cut], rest[cut:].strip()
    if not type_spec:
        raise DataError(f"{path}, line {lineno}: attribute '{name}' has no type")
    if type_spec.startswith("{"):
        if not type_spec.endswith("}"):
            raise DataError(
                f"{path}, line {lineno}: nominal attribute '{name}' lacks a closing '}}'"
            )
        try:
            cats = _split_values(type_spec[1:-1])
        except ValueError as exc:
            raise DataError(f"{path}, line {lineno}: {exc}") from None
        if not cats or any(c == "" for c in cats):
            raise DataError(
                f"{path}, line {lineno}: nominal attribute '{name}' has an empty category"
            )
        return name, "nominal", cats
    kind = type_spec.split()[0].lower()
    if kind in _NUMERIC_TYPES:
        return name, "numeric", None
    if kind in ("string", "date", "relational"):
        raise DataError(
            f"{path}, line {lineno}: attribute '{name}' has type {kind}, which prunelab does "
            "not support (only numeric/real/integer and nominal {...})"
        )
    raise DataError(f"{path}, line {lineno}: attribute '{name}' has unknown type '{type_spec}'")


def read_arff(path: str | Path) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Read an ARFF file (gzip or plain) into a float array, attribute names and attribute info.

    Numeric values are floats, nominal values their category index, missing '?' NaN.
    info = {"relation": str, "types": ["numeric"|"nominal", ...], "categories": [list|None, ...]}.
    """
    path = Path(path)
    lines = _read_text(path).splitlines()
    relation = ""
    names: list[str] = []
    types: list[str] = []
    categories: list[list[str] | None] = []
    data_start = None
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        low = line[:10].lower()
        if low.startswith("@relation"):
            relation = _unquote(line[9:].strip())
        elif low.startswith("@attribute"):
            name, kind, cats = _parse_attribute(line[10:], path, i + 1)
            names.append(name)
            types.append(kind)
            categories.append(cats)
        elif low.startswith("@data"):
            data_start = i + 1
            break
        elif low.startswith("@"):
            raise DataError(f"{path}, line {i + 1}: unsupported ARFF keyword {line.split()[0]}")
        else:
            raise DataError(f"{path}, line {i + 1}: unexpected text before @data: {line[:40]!r}")
    if not names:
        raise DataError(f"{path} is not an ARFF file: no @attribute declarations found")
    if data_start is None:
        raise DataError(f"{path} is not a complete ARFF file: no @data section found")

    n_attr = len(names)
    numeric_idx = [j for j, t in enumerate(types) if t == "numeric"]
    nominal_idx = [j for j, t in enumerate(types) if t == "nominal"]
    lookups = {j: {c: float(k) for k, c in enumerate(categories[j] or [])} for j in nominal_idx}
    get_num = itemgetter(*numeric_idx) if numeric_idx else None
    rows: list[np.ndarray] = []

    def bad(lineno: int, msg: str) -> DataError:
        return DataError(f"{path}, line {lineno}: {msg}")

    for i in range(data_start, len(lines)):
        line = lines[i].strip()
        if not line or line.startswith("%"):
            continue
        lineno = i + 1
        if line.startswith("{"):
            rows.append(_sparse_arff_row(line, n_attr, types, names, lookups, bad, lineno))
            continue
        try:
            values = _split_values(line)
        except ValueError as exc:
            raise bad(lineno, str(exc)) from None
        if len(values) != n_attr:
            raise bad(lineno, f"expected {n_attr} values, found {len(values)}")
        row = np.empty(n_attr, dtype=np.float64)
        if get_num is not None:
            nums = get_num(values)
            if len(numeric_idx) == 1:
                nums = (nums,)
            try:
                row[numeric_idx] = np.fromiter(map(float, nums), np.float64, len(nums))
            except ValueError:
                for j in numeric_idx:
                    try:
                        row[j] = _to_float(values[j])
                    except ValueError:
                        raise bad(
                            lineno, f"value {values[j]!r} of numeric attribute '{names[j]}' "
                            "is not a number"
                        ) from None
        for j in nominal_idx:
            v = values[j]
            if v == "?":
                row[j] = np.nan
                continue
            code = lookups[j].get(v)
            if code is None:
                raise bad(
                    lineno, f"value {v!r} is not a category of nominal attribute '{names[j]}' "
                    f"({', '.join(categories[j] or [])})"
                )
            row[j] = code
        rows.append(row)
    data = np.vstack(rows) if rows else np.empty((0, n_attr), dtype=np.float64)
    return data, names, {"relation": relation, "types": types, "categories": categories}


def _sparse_arff_row(
    line: str,
    n_attr: int,
    types: list[str],
    names: list[str],
    lookups: dict[int, dict[str, float]],
    bad: Any,
    lineno: int,
) -> np.ndarray:
    """A sparse row '{i v, j w}': absent values are 0 (numeric) or the first category."""
    if not line.endswith("}"):
        raise bad(lineno, "sparse row lacks a closing '}'")
    row = np.zeros(n_attr, dtype=np.float64)
    inner = line[1:-1].strip()
    if not inner:
        return row
    try:
        entries = _split_values(inner)
    except ValueError as exc:
        raise bad(lineno, str(exc)) from None
    for entry in entries:
        pieces = entry.split(None, 1)
        if len(pieces) != 2 or not pieces[0].isdigit():
            raise bad(lineno, f"sparse entry {entry!r} is not 'index value'")
        j = int(pieces[0])
        if j >= n_attr:
            raise bad(lineno, f"sparse index {j} is out of range (file has {n_attr} attributes)")
        v = _unquote(pieces[1].strip())
        if types[j] == "numeric":
            try:
                row[j] = _to_float(v)
            except ValueError:
                raise bad(
                    lineno, f"value {v!r} of numeric attribute '{names[j]}' is not a number"
                ) from None
        elif v == "?":
            row[j] = np.nan
        elif v in lookups[j]:
            row[j] = lookups[j][v]
        else:
            raise bad(lineno, f"value {v!r} is not a category of attribute '{names[j]}'")
    return row


# ---------------------------------------------------------------------------------------------
# CSV


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _detect_delimiter(sample: list[str], path: Path) -> str | None:
    """Tab, semicolon or comma if it appears equally often (>0) on every sample line;
    None means split on whitespace."""
    if path.name.lower().endswith((".tsv", ".tsv.gz")):
        return "\t"
    for delim in ("\t", ";", ","):
        counts = {line.count(delim) for line in sample}
        if len(counts) == 1 and counts.pop() > 0:
            return delim
    for delim in ("\t", ";", ","):
        if all(delim in line for line in sample):
            return delim
    return None


def _resolve_column(label_column: int | str, header: list[str] | None, n_cols: int) -> int:
    if isinstance(label_column, str):
        if header is None:
            raise ConfigError(
                f"label_column {label_column!r} is a name but the file has no header row; "
                "give a column index instead"
            )
        if label_column in header:
            return header.index(label_column)
        folded = [h.lower() for h in header]
        if label_column.lower() in folded:
            return folded.index(label_column.lower())
        shown = ", ".join(header[:20]) + (", ..." if len(header) > 20 else "")
        raise ConfigError(f"label_column {label_column!r} is not a column; columns: {shown}")
    if isinstance(label_column, bool) or not isinstance(label_column, (int, np.integer)):
        raise ConfigError(f"label_column must be a column index or name, got {label_column!r}")
    if not -n_cols <= int(label_column) < n_cols:
        raise ConfigError(
            f"label_column must be in [{-n_cols}, {n_cols - 1}] for a file with {n_cols} "
            f"columns, got {label_column}"
        )
    return int(label_column) % n_cols


def read_csv(
    path: str | Path, *, label_column: int | str = -1, header: bool | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a delimited text file into (X float64, raw labels, feature names).

    Delimiter (tab/semicolon/comma/whitespace) and header (first row non-numeric) are detected;
    empty, '?' and 'NA' features are NaN.
    """
    path = Path(path)
    numbered = [(i + 1, ln) for i, ln in enumerate(_read_text(path).splitlines()) if ln.strip()]
    if not numbered:
        raise DataError(f"{path} is empty")
    delim = _detect_delimiter([ln for _, ln in numbered[:20]], path)
    if delim is None:
        rows = [ln.split() for _, ln in numbered]
    else:
        try:
            rows = [
                [c.strip() for c in r]
                for r in csv.reader([ln for _, ln in numbered], delimiter=delim)
            ]
        except csv.Error as exc:
            raise DataError(f"{path} is not valid CSV: {exc}") from None
    linenos = [n for n, _ in numbered]
    n_cols = len(rows[0])
    if isinstance(label_column, str) and header is None:
        header = True
    if header is None:
        first = rows[0]
        second = rows[1] if len(rows) > 1 else None
        header = any(
            not _is_number(a) and a not in MISSING_TOKENS
            and (second is None or (j < len(second) and _is_number(second[j])))
            for j, a in enumerate(first)
        )
    names = [_unquote(h) for h in rows[0]] if header else None
    body, body_lines = (rows[1:], linenos[1:]) if header else (rows, linenos)
    if n_cols < 2:
        raise DataError(
            f"{path} has {n_cols} column per row; need at least one feature and a label"
        )
    label_j = _resolve_column(label_column, names, n_cols)
    feature_j = [j for j in range(n_cols) if j != label_j]
    x = np.empty((len(body), len(feature_j)), dtype=np.float64)
    labels: list[str] = []
    for r, (row, lineno) in enumerate(zip(body, body_lines, strict=True)):
        if len(row) != n_cols:
            raise DataError(f"{path}, line {lineno}: expected {n_cols} values, found {len(row)}")
        lab = row[label_j]
        if lab in MISSING_TOKENS:
            raise DataError(f"{path}, line {lineno}: the label is missing")
        labels.append(_unquote(lab))
        for c, j in enumerate(feature_j):
            try:
                x[r, c] = _to_float(row[j])
            except ValueError:
                col = names[j] if names else f"column {j}"
                raise DataError(
                    f"{path}, line {lineno}: value {row[j]!r} in {col} is not a number "
                    "(feature columns must be numeric)"
                ) from None
    if names is not None:
        feature_names = [names[j] for j in feature_j]
    else:
        feature_names = [f"x{c}" for c in range(len(feature_j))]
    return x, _coerce_labels(labels), feature_names


# ---------------------------------------------------------------------------------------------
# libsvm


MAX_DENSE_BYTES = 4 * 1024**3  # a libsvm file densified beyond this is refused


def read_libsvm(
    path: str | Path, *, n_features: int | None = None, max_dense_bytes: int = MAX_DENSE_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """Read 'label idx:val ...' lines (1-based indices) into dense X (float64) and labels.

    The file is parsed into a sparse matrix by scikit-learn's `load_svmlight_file` and only
    densified when rows x features x 8 bytes fits `max_dense_bytes` (else a DataError says
    how much it would take). n_features defaults to the largest index present; absent
    entries are 0. A malformed file is reported with the line of its first bad entry.
    """
    from sklearn.datasets import load_svmlight_file

    path = Path(path)
    if n_features is not None:
        if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)):
            raise ConfigError(f"n_features must be an integer, got {n_features!r}")
        check_range("n_features", int(n_features), 1)
    raw = read_file_bytes(path)
    try:
        x_sparse, y = load_svmlight_file(io.BytesIO(raw), zero_based=False, dtype=np.float64)
    except ValueError as exc:
        _locate_libsvm_error(path, raw.decode("utf-8", errors="replace"))
        raise DataError(f"{path}: not a libsvm file ({' '.join(str(exc).split())})") from None
    if x_sparse.shape[0] == 0:
        raise DataError(f"{path} has no data lines")
    max_idx = x_sparse.shape[1]
    if n_features is not None and max_idx > n_features:
        raise DataError(f"{path} has feature index {max_idx}, above n_features={n_features}")
    d = int(n_features) if n_features is not None else max_idx
    need = x_sparse.shape[0] * d * 8
    if need > max_dense_bytes:
        raise DataError(f"{path}: {x_sparse.shape[0]} rows x {d} features need "
                        f"{need / 1024**3:.1f} GiB as a dense array, above the "
                        f"{max_dense_bytes / 1024**3:.1f} GiB limit")
    x = np.zeros((x_sparse.shape[0], d), dtype=np.float64)
    x[:, :max_idx] = x_sparse.toarray()
    return x, (y.astype(np.int64) if np.all(y == np.round(y)) else y)


def _locate_libsvm_error(path: Path, text: str) -> None:
    """Raise a DataError naming the line of the first malformed entry (if one is found)."""
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        if ":" in tokens[0] or "," in tokens[0]:
            raise DataError(
                f"{path}, line {lineno}: expected a single label first, found {tokens[0]!r}")
        for tok in tokens[1:]:
            key, sep, val = tok.partition(":")
            try:
                if not sep:
                    raise ValueError
                i = int(key) if key != "qid" else 1
                float(val)
            except ValueError:
                raise DataError(
                    f"{path}, line {lineno}: entry {tok!r} is not 'index:value'") from None
            if i < 1:
                raise DataError(f"{path}, line {lineno}: feature index {i} is not >= 1 "
                                "(indices are 1-based)")


# ---------------------------------------------------------------------------------------------
# files -> Dataset


def _file_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(ARFF_SUFFIXES):
        return "arff"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(LIBSVM_SUFFIXES):
        return "libsvm"
    supported = ", ".join(ARFF_SUFFIXES + CSV_SUFFIXES + LIBSVM_SUFFIXES)
    raise DataError(f"{path}: unsupported file type; supported suffixes: {supported}")


def _dataset_name(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    return Path(name).stem or name


def _arff_columns(
    path: Path, label_column: int | str | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(X, raw labels, feature names) from an ARFF file, nominal features encoded."""
    data, names, info = read_arff(path)
    types, cats = info["types"], info["categories"]
    if len(names) < 2:
        raise DataError(f"{path} has only {len(names)} attribute; need features and a label")
    if label_column is None:
        lowered = [n.lower() for n in names]
        hits = [lowered.index(n) for n in LABEL_NAMES if n in lowered]
        label_j = hits[0] if hits else len(names) - 1
    else:
        label_j = _resolve_column(label_column, names, len(names))
    y_col = data[:, label_j]
    missing_labels = int(np.isnan(y_col).sum())
    if missing_labels:
        raise DataError(f"{path}: {missing_labels} rows have a missing label '?'")
    if types[label_j] == "nominal":
        labels = _coerce_labels([cats[label_j][int(v)] for v in y_col])
    else:
        labels = y_col.astype(np.int64) if np.all(y_col == np.round(y_col)) else y_col
    blocks: list[np.ndarray] = []
    feature_names: list[str] = []
    for j, name in enumerate(names):
        if j == label_j:
            continue
        col = data[:, j : j + 1]
        if types[j] == "nominal" and len(cats[j]) > 2:
            onehot = (col == np.arange(len(cats[j]))).astype(np.float64)
            onehot[np.isnan(col[:, 0])] = np.nan
            blocks.append(onehot)
            feature_names.extend(f"{name}={c}" for c in cats[j])
        else:
            blocks.append(col)
            feature_names.append(name)
    x = np.hstack(blocks) if blocks else np.empty((len(data), 0))
    return x, labels, feature_names


def load_tabular_file(
    path: str | Path,
    *,
    label_column: int | str | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
    standardize: bool = True,
    missing: str = "reject",
    name: str | None = None,
) -> Dataset:
    """A Dataset from an ARFF, CSV/TSV or libsvm file: seeded stratified split, then
    imputation (missing="mean") and standardisation fit on the training rows only."""
    path = Path(path)
    if missing not in MISSING_CHOICES:
        raise ConfigError(
            f"missing must be one of {', '.join(MISSING_CHOICES)}, got {missing!r}"
        )
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise ConfigError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    check_range("test_fraction", test_fraction, 0.0, 1.0, low_inclusive=False,
                high_inclusive=False)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    check_range("seed", int(seed), 0)
    kind = _file_kind(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    if kind == "arff":
        x, raw_labels, feature_names = _arff_columns(path, label_column)
    elif kind == "csv":
        x, raw_labels, feature_names = read_csv(
            path, label_column=-1 if label_column is None else label_column
        )
    else:
        if label_column is not None:
            raise ConfigError("label_column does not apply to libsvm files (the label is first)")
        x, raw_labels = read_libsvm(path)
        feature_names = [f"f{j + 1}" for j in range(x.shape[1])]
    if x.shape[0] < 2:
        raise DataError(f"{path} has {x.shape[0]} data rows; need at least 2")
    if x.shape[1] == 0:
        raise DataError(f"{path} has no feature columns besides the label")
    y, class_names = encode_labels(raw_labels)
    if len(class_names) < 2:
        raise DataError(f"{path} has a single class ({class_names[0]}); need at least 2")

    nan = np.isnan(x)
    n_missing = int(nan.sum())
    if n_missing and missing == "reject":
        n_cols = int(nan.any(axis=0).sum())
        raise DataError(
            f"{path} has {n_missing} missing values in {n_cols} columns; "
            "impute them with training-column means: --data-option missing=mean "
            "(missing=\"mean\" in Python)"
        )
    train_idx, test_idx = stratified_split(y, test_fraction, int(seed))
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise DataError(
            f"{path} has too few rows ({len(y)}) for a train/test split with "
            f"test_fraction={test_fraction}"
        )
    x_train, x_test = x[train_idx], x[test_idx]
    if n_missing:
        with np.errstate(all="ignore"):
            counts = (~np.isnan(x_train)).sum(axis=0)
            means = np.where(counts > 0, np.nansum(x_train, axis=0) / np.maximum(counts, 1), 0.0)
        x_train = np.where(np.isnan(x_train), means, x_train)
        x_test = np.where(np.isnan(x_test), means, x_test)
    if standardize:
        x_train, x_test, _ = standardize_columns(x_train, x_test)
    meta: dict[str, Any] = {
        "path": str(path),
        "format": kind,
        "test_fraction": float(test_fraction),
        "seed": int(seed),
        "standardize": bool(standardize),
        "missing": missing,
        "n_missing": n_missing,
    }
    return to_dataset(
        name or _dataset_name(path),
        x_train.astype(np.float32), y[train_idx], x_test.astype(np.float32), y[test_idx],
        num_classes=len(class_names), feature_names=feature_names, relevant_features=None,
        class_names=class_names, meta=meta,
    )


# ---------------------------------------------------------------------------------------------
# named data sets


def _find_named(name: str, data_dir: str | Path | None) -> Path:
    rel = f"tabular/{name}.arff.gz"
    candidates = [rel, f"tabular/{name}.arff", f"{name}.arff.gz", f"{name}.arff"]
    try:
        return find_data_file(candidates, data_dir, get_with=f"a copy of {name}.arff.gz")
    except DataError:
        where = ", ".join(str(d) for d in data_dirs(data_dir))
        raise DataError(
            f"data file '{rel}' not found in {where}; point --data-dir or PRUNELAB_DATA at "
            f"a directory containing {rel}"
        ) from None


def _load_named(
    name: str,
    data_dir: str | Path | None,
    seed: int,
    test_fraction: float,
    standardize: bool,
    **meta: Any,
) -> Dataset:
    path = _find_named(name, data_dir)
    ds = load_tabular_file(
        path, test_fraction=test_fraction, seed=seed, standardize=standardize, name=name
    )
    ds.meta.update(source=str(path.parent), **meta)
    return ds


def load_madelon(
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.3,
    standardize: bool = True,
) -> Dataset:
    """Madelon (Guyon 2003): 2000 x 500, XOR-like, 20 informative columns (not identified)."""
    return _load_named(
        "madelon", data_dir, seed, test_fraction, standardize, known_informative_count=20
    )


def load_colon(
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.3,
    standardize: bool = True,
) -> Dataset:
    """Colon cancer gene expression (Alon et al. 1999): 62 x 2000, classes 1/2."""
    return _load_named("colon", data_dir, seed, test_fraction, standardize)


def load_leukemia(
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.3,
    standardize: bool = True,
) -> Dataset:
    """ALL/AML leukemia gene expression (Golub et al. 1999): 72 x 7129."""
    return _load_named("leukemia", data_dir, seed, test_fraction, standardize)
