"""A fitted model's files: model.json and model.npz beside a job's schema.json, never pickle.

Two formats share the file names, told apart by model.json's "format": "fedsynth-model" (the
marginal method's graphical model, below) and "fedsynth-generator" (the dpsgd method's
generator: its public training plan in model.json, `parameters` in model.npz, beside the same
per-column groupings and fine counts). model.json holds the format and its version, the sha256
of the schema's columns (so a model is never read against another schema.json), each column's
fine codes and model groups, the cliques, the total, the decoding floor, and the sha256 of
model.npz. model.npz holds numeric arrays only and is read with allow_pickle=False:
`potential_<i>` (clique i's log-potential, shaped by its columns' groups), `grouping_<j>`
(column j's fine code -> group) and `fine_counts_<j>` (its noisy fine 1-way counts). Every array
is checked against the schema before use; what does not fit is refused with the file's name and
every problem found.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.errors import FileProblems
from fedsynth.synthesis.encoding import Encoding, Grouping
from fedsynth.synthesis.schema import Schema, SchemaError

FORMAT, VERSION = "fedsynth-model", 1
GENERATOR_FORMAT, GENERATOR_VERSION = "fedsynth-generator", 1
VERSIONS = {FORMAT: VERSION, GENERATOR_FORMAT: GENERATOR_VERSION}
MAX_FLOOR = 1e12  # a decoding floor (noise sds of a count) far above any real one
MODEL_JSON, MODEL_NPZ, SCHEMA_JSON = "model.json", "model.npz", "schema.json"
FILES = (MODEL_JSON, MODEL_NPZ)

Potentials = list[tuple[tuple[int, ...], np.ndarray]]


class ModelFileError(FileProblems):
    """A saved model that is missing, of another format, altered, or not of its schema."""


def schema_digest(schema: Schema) -> str:
    """The sha256 of the schema's columns and public domains (computed as the job spec's
    `schema_sha256`, the value a party's policy pins)."""
    return schema.sha256()


def model_files(schema: Schema, groupings: Sequence[Grouping], fine_counts: Sequence[np.ndarray],
                floor: float, potentials: Potentials, total: float) -> dict[str, str | bytes]:
    """model.json (text) and model.npz (bytes) of the marginal method's model."""
    arrays = {f"potential_{i}": np.asarray(table, dtype=np.float64)
              for i, (_, table) in enumerate(potentials)}
    return _files(FORMAT, schema, groupings, fine_counts, floor, arrays,
                  {"cliques": [list(cols) for cols, _ in potentials], "total": float(total)})


SAMPLERS = ("herded", "independent")  # how a generator's rows are drawn (synthesis.herding)


def generator_files(schema: Schema, groupings: Sequence[Grouping],
                    fine_counts: Sequence[np.ndarray], floor: float, plan: dict[str, Any],
                    parameters: np.ndarray, sampler: str) -> dict[str, str | bytes]:
    """model.json (text) and model.npz (bytes) of a dpsgd generator."""
    return _files(GENERATOR_FORMAT, schema, groupings, fine_counts, floor,
                  {"parameters": np.asarray(parameters, dtype=np.float64)},
                  {"plan": plan, "sampler": sampler})


def _files(fmt: str, schema: Schema, groupings: Sequence[Grouping],
           fine_counts: Sequence[np.ndarray], floor: float, arrays: dict[str, np.ndarray],
           fields: dict[str, Any]) -> dict[str, str | bytes]:
    arrays = dict(arrays)
    for j, (grp, counts) in enumerate(zip(groupings, fine_counts, strict=True)):
        arrays[f"grouping_{j}"] = np.asarray(grp.index, dtype=np.int64)
        arrays[f"fine_counts_{j}"] = np.asarray(counts, dtype=np.float64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    npz = buf.getvalue()
    doc = {"format": fmt, "version": VERSIONS[fmt], "schema_sha256": schema_digest(schema),
           "columns": [{"name": c.name, "fine_codes": len(g.index), "groups": g.size}
                       for c, g in zip(schema.columns, groupings, strict=True)],
           **fields, "floor": float(floor), "model_npz_sha256": hashlib.sha256(npz).hexdigest()}
    return {MODEL_JSON: json.dumps(doc, indent=2) + "\n", MODEL_NPZ: npz}


def write_folder(folder: str | Path, schema: Schema, files: dict[str, str | bytes]) -> Path:
    """Write schema.json and a model's files into `folder` (made if needed)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / SCHEMA_JSON).write_text(schema.to_json(), encoding="utf-8")
    for name, content in files.items():
        if isinstance(content, bytes):
            (out / name).write_bytes(content)
        else:
            (out / name).write_text(content, encoding="utf-8")
    return out


def saved_format(folder: Path) -> str:
    """The format model.json in `folder` names (FORMAT or GENERATOR_FORMAT); ModelFileError
    when the folder or its files are missing or model.json is not a fedsynth model."""
    paths = _paths(folder)
    return str(_json(paths[MODEL_JSON])["format"])


def read_model(folder: Path) -> tuple[Schema, list[Grouping], list[np.ndarray], float,
                                      list[int], Potentials, float]:
    """(schema, groupings, fine counts, floor, group sizes, potentials, total) from a folder."""
    schema, doc, arrays, path = _open(folder, FORMAT)
    problems = []
    if not isinstance(doc.get("cliques"), list) or not all(
            isinstance(c, list) and c and all(isinstance(i, int) and 0 <= i < len(schema.names)
                                              for i in c) and len(set(c)) == len(c)
            for c in doc["cliques"]):
        problems.append("'cliques' must be lists of distinct column positions")
    if not _number(doc.get("total"), 1e-300):
        problems.append("'total' must be a finite number above 0")
    if problems:
        raise ModelFileError("model file", folder / MODEL_JSON, problems)
    return _checked(path, schema, doc, arrays)


def read_generator(folder: Path) -> tuple[Schema, list[Grouping], list[np.ndarray], float,
                                          dict[str, Any], np.ndarray, str]:
    """(schema, groupings, fine counts, floor, training plan, parameters, sampler) of a saved
    dpsgd generator; the parameters' count against the plan is the caller's check (synthesis.
    dpsgd). A file without 'sampler' was written before rows were herded: "independent", so
    that its seed still gives its job's rows."""
    schema, doc, arrays, path = _open(folder, GENERATOR_FORMAT)
    problems = []
    if not isinstance(doc.get("plan"), dict):
        problems.append("'plan' (the training plan) must be an object")
    sampler = doc.get("sampler", "independent")
    if sampler not in SAMPLERS:
        problems.append(f"'sampler' must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    params = arrays.get("parameters")
    if params is None or params.ndim != 1 or params.dtype != np.float64 \
            or not np.isfinite(params).all():
        problems.append("'parameters' must be one row of finite numbers")
    groupings, counts, _ = _columns(Encoding.from_schema(schema), doc, arrays, problems)
    expected = {"parameters"} | {f"{k}_{j}" for j in range(len(schema.names))
                                 for k in ("grouping", "fine_counts")}
    if set(arrays) - expected:
        problems.append(f"unexpected arrays {sorted(set(arrays) - expected)}")
    if problems:
        raise ModelFileError("model file", path, problems)
    assert params is not None
    return (schema, groupings, counts, float(doc["floor"]), doc["plan"],
            params.astype(np.float64), str(sampler))


def _paths(folder: Path) -> dict[str, Path]:
    paths = {name: folder / name for name in (SCHEMA_JSON, MODEL_JSON, MODEL_NPZ)}
    if not folder.is_dir():
        raise ModelFileError("model folder", folder, ["no such folder: give a job's output "
                                                      "folder (it holds model.json)"])
    absent = [n for n, p in paths.items() if not p.is_file()]
    if absent:
        raise ModelFileError("model folder", folder, [
            f"{', '.join(absent)} missing: give the output folder of a job run with this "
            "version of fedsynth (older versions did not save the model; run the job again)"])
    return paths


def _open(folder: Path, fmt: str) -> tuple[Schema, dict[str, Any], dict[str, np.ndarray], Path]:
    """The schema, model.json and model.npz's arrays of a folder, checked against each other."""
    paths = _paths(folder)
    try:
        schema = Schema.load(paths[SCHEMA_JSON])
    except SchemaError as exc:
        raise ModelFileError("schema", paths[SCHEMA_JSON], exc.problems) from None
    doc = _doc(paths[MODEL_JSON], schema, fmt)
    npz_bytes = paths[MODEL_NPZ].read_bytes()
    if hashlib.sha256(npz_bytes).hexdigest() != doc["model_npz_sha256"]:
        raise ModelFileError("model file", paths[MODEL_NPZ], [
            "its sha256 is not the one model.json records: it was altered or comes from "
            "another job"])
    return schema, doc, _arrays(paths[MODEL_NPZ], npz_bytes), paths[MODEL_NPZ]


def _number(v: object, least: float) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) \
        and v >= least


def _json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError("model file", path, [f"not valid JSON: {exc}"]) from None
    if not isinstance(doc, dict) or doc.get("format") not in VERSIONS:
        raise ModelFileError("model file", path, [f"not a fedsynth model (no \"format\": "
                                                  f"\"{FORMAT}\" or \"{GENERATOR_FORMAT}\")"])
    return doc


def _doc(path: Path, schema: Schema, fmt: str) -> dict[str, Any]:
    doc = _json(path)
    if doc["format"] != fmt:
        raise ModelFileError("model file", path, [
            f"a {doc['format']!r} file where a {fmt!r} one was expected"])
    if doc.get("version") != VERSIONS[fmt]:
        raise ModelFileError("model file", path, [
            f"format version {doc.get('version')!r}; this fedsynth reads version "
            f"{VERSIONS[fmt]} (use the fedsynth version that wrote it, or run the job again)"])
    problems = []
    if doc.get("schema_sha256") != schema_digest(schema):
        problems.append("it was saved with another schema than the schema.json beside it "
                        "(schema sha256 differs)")
    cols = doc.get("columns")
    if not isinstance(cols, list) or [c.get("name") if isinstance(c, dict) else None
                                      for c in cols] != schema.names:
        problems.append(f"its columns are not the schema's ({', '.join(schema.names)})")
    if not _number(doc.get("floor"), 0.0) or doc["floor"] > MAX_FLOOR:
        problems.append(f"'floor' must be a number from 0 to {MAX_FLOOR:g}")
    if not isinstance(doc.get("model_npz_sha256"), str):
        problems.append("'model_npz_sha256' is missing")
    if problems:
        raise ModelFileError("model file", path, problems)
    return doc


def _arrays(path: Path, data: bytes) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ModelFileError("model file", path, [f"not a numeric array file ({exc})"]) from None


def _columns(enc: Encoding, doc: dict[str, Any], arrays: dict[str, np.ndarray],
             problems: list[str]) -> tuple[list[Grouping], list[np.ndarray], list[int]]:
    """Each column's grouping and fine counts from the arrays; what does not fit goes to
    `problems`."""
    groupings: list[Grouping] = []
    counts: list[np.ndarray] = []
    sizes: list[int] = []
    for j, codec in enumerate(enc.codecs):
        name = codec.column.name
        g, c = arrays.get(f"grouping_{j}"), arrays.get(f"fine_counts_{j}")
        if g is None or c is None:
            problems.append(f"column {name!r}: grouping_{j} or fine_counts_{j} is missing")
            continue
        if g.shape != (codec.size,) or g.dtype.kind not in "iu" or c.shape != (codec.size,) \
                or c.dtype.kind != "f" or not np.isfinite(c).all():
            problems.append(f"column {name!r}: its grouping and fine counts must be "
                            f"{codec.size} whole numbers and {codec.size} finite numbers")
            continue
        if g.min() < 0 or set(np.unique(g).tolist()) != set(range(int(g.max()) + 1)):
            problems.append(f"column {name!r}: its groups must be numbered 0, 1, ... without "
                            "gaps")
            continue
        groupings.append(Grouping(g.astype(np.int64)))
        counts.append(c.astype(np.float64))
        sizes.append(groupings[-1].size)
        if doc["columns"][j].get("groups") != sizes[-1]:
            problems.append(f"column {name!r}: {sizes[-1]} groups, model.json says "
                            f"{doc['columns'][j].get('groups')!r}")
    return groupings, counts, sizes


def _checked(path: Path, schema: Schema, doc: dict[str, Any], arrays: dict[str, np.ndarray]
             ) -> tuple[Schema, list[Grouping], list[np.ndarray], float, list[int], Potentials,
                        float]:
    enc = Encoding.from_schema(schema)
    problems: list[str] = []
    groupings, counts, sizes = _columns(enc, doc, arrays, problems)
    potentials: Potentials = []
    if not problems:
        for i, cols in enumerate(doc["cliques"]):
            t = arrays.get(f"potential_{i}")
            shape = tuple(sizes[c] for c in cols)
            if t is None or t.shape != shape or t.dtype.kind != "f" or not np.isfinite(t).all():
                problems.append(f"potential_{i}: must be finite numbers of shape {shape} (the "
                                f"groups of columns {cols})")
            else:
                potentials.append((tuple(cols), t.astype(np.float64)))
        expected = {f"potential_{i}" for i in range(len(doc["cliques"]))} | {
            f"{k}_{j}" for j in range(len(enc.codecs)) for k in ("grouping", "fine_counts")}
        if set(arrays) - expected:
            problems.append(f"unexpected arrays {sorted(set(arrays) - expected)}")
    if problems:
        raise ModelFileError("model file", path, problems)
    return (schema, groupings, counts, float(doc["floor"]), sizes, potentials,
            float(doc["total"]))
