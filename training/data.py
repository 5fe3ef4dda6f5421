"""Reading and validating a table of numeric features and a target from CSV or Parquet."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from training.errors import DataError
from training.normalize import Normalizer, fit_normalizer

logger = logging.getLogger(__name__)

PARQUET_SUFFIXES = (".parquet", ".pq")
# beyond this, float32 training overflows: (t_p - t)^2 exceeds float32's 3.4e38 when |t| > 1.8e19
LARGEST_VALUE = 1e18
CSV_SUFFIXES = (".csv", ".txt", ".tsv")


def file_digest(path: str | Path) -> str:
    """Return the SHA-256 of a file's bytes (the data version recorded with every run)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_frame(path: Path, source: str) -> pd.DataFrame:
    if "://" in source:
        raise DataError(
            source,
            "is a URL; data paths name files on the machine that runs the flow (allow_urls=True reads URLs)",
        )
    if not path.exists():
        raise DataError(source, "file not found")
    if path.is_dir():
        raise DataError(source, "is a directory; expected a CSV or Parquet file")
    if path.stat().st_size == 0:
        raise DataError(source, "the file is empty; expected a header row and at least one data row")
    suffix = path.suffix.lower()
    try:
        if suffix in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
        if suffix in CSV_SUFFIXES:
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except pd.errors.EmptyDataError as exc:
        raise DataError(source, "the file has no columns (empty or blank)") from exc
    except pd.errors.ParserError as exc:
        raise DataError(source, f"not a well-formed CSV file: {str(exc).strip()}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(source, f"not a text CSV file (cannot decode it as UTF-8: {exc.reason})") from exc
    except (OSError, ValueError) as exc:
        # pyarrow reports a corrupt or foreign Parquet file as ArrowInvalid (a ValueError) or OSError
        raise DataError(source, f"cannot read the file: {exc}") from exc
    supported = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
    raise DataError(source, f"unsupported file type '{suffix or '(none)'}'; expected one of {supported}")


def _numeric_column(frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
    raw = frame[column]
    if pd.api.types.is_bool_dtype(raw):
        raise DataError(source, f"holds booleans ({raw.dtype}); expected numbers", column)
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna() & raw.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(source, f"non-numeric value {raw.iloc[row]!r} in data row {row + 1}", column)
    missing = values.isna()
    if missing.any():
        raise DataError(source, f"missing value in data row(s) {_first_rows(missing.to_numpy())}", column)
    array = values.to_numpy(dtype=np.float64)
    infinite = ~np.isfinite(array)
    if infinite.any():
        raise DataError(source, f"infinite value in data row(s) {_first_rows(infinite)}", column)
    huge = np.abs(array) > LARGEST_VALUE
    if huge.any():
        row = int(np.flatnonzero(huge)[0])
        raise DataError(
            source,
            f"value {array[row]:g} in data row {row + 1} is too large to train on (beyond {LARGEST_VALUE:g}, "
            "the squared loss overflows float32); rescale the column",
            column,
        )
    return array


def _first_rows(where: np.ndarray, limit: int = 5) -> str:
    rows = (np.flatnonzero(where) + 1).tolist()  # data rows count from 1
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def load_table(
    path: str | Path,
    features: list[str],
    target: str | None = None,
    keep_other_columns: bool = False,
    allow_urls: bool = False,
) -> pd.DataFrame:
    """Read a CSV or Parquet file and return its feature and target columns as float64.

    Args:
        path: the data file; the suffix picks the reader (.csv/.txt/.tsv or .parquet/.pq).
        features: input column names, in the order the model sees them.
        target: the column to predict; None for inputs to a prediction.
        keep_other_columns: also return the file's other columns, unchanged.
        allow_urls: read ``scheme://`` paths with pandas instead of refusing them.

    Returns:
        A frame with ``features + [target]`` as float64, finite, at least one row (and with
        ``keep_other_columns``, every column of the file in its order).

    Raises:
        DataError: naming the file, the column and the problem, for a missing, empty, unreadable or
            malformed file, a URL (unless allowed), a missing column, a non-numeric, missing, infinite or
            overflowing value.
    """
    source = str(path)
    if allow_urls and "://" in source:
        frame = pd.read_parquet(source) if source.lower().endswith(PARQUET_SUFFIXES) else pd.read_csv(source)
    else:
        frame = _read_frame(Path(path), source)
    wanted = [*features, *([target] if target is not None else [])]
    absent = [c for c in wanted if c not in frame.columns]
    if absent:
        available = ", ".join(repr(str(c)) for c in frame.columns)
        hint = ""
        if len(frame.columns) == 1 and any(d in str(frame.columns[0]) for d in ";\t|"):
            hint = (
                " (one column whose name holds ';', tab or '|': is the delimiter something other than ','?)"
            )
        raise DataError(source, f"column not found; the file has columns: {available}{hint}", absent[0])
    if len(frame) == 0:
        raise DataError(source, "the file has a header but no data rows")
    columns = {c: _numeric_column(frame, c, source) for c in wanted}
    logger.info("loaded %s: %d rows, features %s, target %s", source, len(frame), features, target)
    if keep_other_columns:  # every column, in the file's order, the checked ones as float64
        return pd.DataFrame({c: columns.get(c, frame[c].to_numpy()) for c in frame.columns})
    return pd.DataFrame(columns)


def to_tensors(
    frame: pd.DataFrame, features: list[str], target: str, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a validated frame into inputs ``(n, features)`` and targets ``(n,)``."""
    # features in another order than the frame's columns come out of pandas with a negative stride
    x = torch.tensor(np.ascontiguousarray(frame[features].to_numpy()), dtype=dtype)  # (n, features)
    y = torch.tensor(frame[target].to_numpy(), dtype=dtype)  # (n,)
    return x, y


def split_indices(
    n: int, val_fraction: float, seed: int, source: str = "<data>"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle ``n`` row indices with a seeded generator and cut off ``int(val_fraction * n)`` for validation.

    The book's rule (``n_val = int(0.2 * n)``) with an explicit ``torch.Generator`` instead of global state.
    Training needs at least two rows; a split with ``val_fraction > 0`` needs at least one validation row.

    Raises:
        DataError: when the table has too few rows for the requested split.
    """
    n_val = int(val_fraction * n)
    if val_fraction > 0 and n_val == 0:
        need = math.ceil(1 / val_fraction)
        need += int(val_fraction * need) < 1  # 1 / val_fraction may round below the true quotient
        raise DataError(
            source,
            f"{n} data rows are too few for val_fraction={val_fraction}: it needs at least {need} rows "
            "to hold one validation row (or set val_fraction=0)",
        )
    if n - n_val < 2:
        raise DataError(source, f"{n} data rows leave {n - n_val} for training; training needs at least 2")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    return order[: n - n_val], order[n - n_val :]  # the book keeps the last n_val for validation


def chosen_split(
    n: int, val_indices: Sequence[int], source: str = "<data>"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation rows named by position (0 = the first data row), the other rows for training.

    The training rows keep the file's order; the validation rows keep the order given. With the book's
    ``[7, 10]`` on the thermometer data this is chapter 6's split.

    Raises:
        DataError: for a position beyond the table, or fewer than two rows left for training.
    """
    beyond = [i for i in val_indices if not 0 <= i < n]
    if beyond:
        raise DataError(source, f"val_indices {beyond} are beyond the {n} data rows (positions 0 to {n - 1})")
    held_out = set(val_indices)
    train = [i for i in range(n) if i not in held_out]
    if len(train) < 2:
        raise DataError(source, f"{n} data rows leave {len(train)} for training; training needs at least 2")
    return torch.tensor(train, dtype=torch.long), torch.tensor(list(val_indices), dtype=torch.long)


def check_training_split(
    x: torch.Tensor, y: torch.Tensor, features: list[str], target: str, source: str = "<data>"
) -> None:
    """Refuse training inputs ``x`` (n, features) that carry no information of their own about ``y`` (n,).

    Checked on the training rows, as the model sees them, whatever the normalisation: a constant feature
    (its weight and the bias are not determined; zscore and minmax would divide by zero), two identical
    features (only the sum of their weights is determined) and a feature identical to the target (a copy of
    the answer).

    Raises:
        DataError: naming the file and the column (for two identical features, both columns).
    """
    for j, name in enumerate(features):
        column = x[:, j]  # (n,)
        if bool((column == column[0]).all()):
            value = float(column[0])
            raise DataError(
                source,
                f"is constant on the training split (all {len(column)} training rows hold {value:g}), so it "
                "carries no information and the fitted weights are not unique (zscore and minmax would "
                "divide by zero); drop it from features",
                name,
            )
    for j, name in enumerate(features):
        for i in range(j):
            if torch.equal(x[:, i], x[:, j]):
                raise DataError(
                    source,
                    f"is identical to column '{features[i]}' on the training split, so only the sum of their "
                    "weights can be fitted; drop one of the two from features",
                    name,
                )
    for j, name in enumerate(features):
        if torch.equal(x[:, j], y):
            raise DataError(
                source,
                f"is identical to the target '{target}' on the training split: the model would learn to copy "
                "it; drop it from features",
                name,
            )


@dataclass(frozen=True)
class Prepared:
    """A train/validation split: normalised inputs (float32), targets, and the rows in original units."""

    x_train: torch.Tensor  # (n_train, k), normalised
    y_train: torch.Tensor  # (n_train,)
    x_val: torch.Tensor  # (n_val, k), normalised; n_val may be 0
    y_val: torch.Tensor  # (n_val,)
    train_frame: pd.DataFrame  # original units, for plots and examples
    val_frame: pd.DataFrame
    normalizer: Normalizer
    train_index: torch.Tensor | None = None  # positions of the training rows in the file
    val_index: torch.Tensor | None = None

    @property
    def has_val(self) -> bool:
        """True when there is a validation split."""
        return len(self.y_val) > 0


def split_frame(
    frame: pd.DataFrame,
    val_fraction: float,
    seed: int,
    source: str = "<data>",
    val_indices: Sequence[int] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, torch.Tensor, torch.Tensor]:
    """The training and validation rows (re-indexed from 0) and their positions in ``frame``: the rows
    ``val_indices`` names, else a seeded ``val_fraction`` of them."""
    if val_indices is not None:
        train_idx, val_idx = chosen_split(len(frame), val_indices, source=source)
    else:
        train_idx, val_idx = split_indices(len(frame), val_fraction, seed, source=source)
    train = frame.iloc[train_idx.numpy()].reset_index(drop=True)
    return train, frame.iloc[val_idx.numpy()].reset_index(drop=True), train_idx, val_idx


def prepare(
    frame: pd.DataFrame,
    features: list[str],
    target: str,
    normalize: str,
    scale: float,
    val_fraction: float,
    seed: int,
    source: str = "<data>",
    val_indices: Sequence[int] | None = None,
) -> Prepared:
    """Split the rows (with the seed, or as ``val_indices`` names them), check that every feature carries
    information on the training rows, fit normalisation on the training rows only, apply it to both splits.

    Raises:
        DataError: for too few rows for the split, or a feature that ``check_training_split`` refuses.
    """
    train_frame, val_frame, train_idx, val_idx = split_frame(frame, val_fraction, seed, source, val_indices)
    x_train, y_train = to_tensors(train_frame, features, target)
    check_training_split(x_train, y_train, features, target, source)
    x_val, y_val = to_tensors(val_frame, features, target)
    normalizer = fit_normalizer(x_train, features, normalize, scale)
    return Prepared(
        x_train=normalizer.apply(x_train),
        y_train=y_train,
        x_val=normalizer.apply(x_val),
        y_val=y_val,
        train_frame=train_frame,
        val_frame=val_frame,
        normalizer=normalizer,
        train_index=train_idx,
        val_index=val_idx,
    )
