"""The discrete and datetime kinds: drafting, the schema document, validation and encoding.

Numbers with few values must come out as those values (not thousands of values drawn inside
bins, nor impossible whole numbers between them), and dates as dates: never as public
categories holding real rows' dates, never dropped as identifiers.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from fedsynth.protocols.spec import schema_sha256
from fedsynth.synthesis.encoding import ColumnCodec, Encoding
from fedsynth.synthesis.schema import (
    MAX_DISCRETE_VALUES,
    MIN_CATEGORY_ROWS,
    Column,
    DataValidationError,
    Schema,
    SchemaError,
    draft_schema_with_notes,
    validate_frame,
)


def _draft(**columns: object) -> tuple[Schema, list[str]]:
    return draft_schema_with_notes(pd.DataFrame(columns))


def _dates(n: int, seed: int = 0, *, start: str = "2015-01-10", days: int = 900) -> list[str]:
    rng = np.random.default_rng(seed)
    t = pd.Timestamp(start) + pd.to_timedelta(rng.integers(0, days, n), unit="D")
    return [d.strftime("%Y-%m-%d") for d in t]


# --- drafting numbers ------------------------------------------------------------------------


def test_sparse_whole_numbers_are_drafted_discrete_with_their_values_as_ints() -> None:
    rng = np.random.default_rng(0)
    schema, notes = _draft(term=rng.choice([36, 60], 500), code=rng.choice([3, 7, 19, 250], 500))
    assert schema["term"].kind == "discrete" and schema["term"].values == (36, 60)
    assert schema["code"].values == (3, 7, 19, 250)
    assert all(isinstance(v, int) for v in schema["code"].values) and not notes


def test_floats_with_few_values_are_discrete_and_keep_their_float_values() -> None:
    rng = np.random.default_rng(1)
    logs = np.log(np.arange(1, 15))
    schema, _ = _draft(log_size=rng.choice(logs, 2000))
    col = schema["log_size"]
    assert col.kind == "discrete" and len(col.values) == 14
    assert all(isinstance(v, float) for v in col.values)
    assert (col.lower, col.upper) == (col.values[0], col.values[-1])


def test_dense_whole_numbers_stay_integer() -> None:
    rng = np.random.default_rng(2)
    schema, _ = _draft(flag=rng.choice([0.0, 1.0, np.nan], 3000),
                       school=rng.integers(0, 21, 3000))
    assert schema["flag"].kind == "integer" and schema["flag"].nullable
    assert schema["school"].kind == "integer"


def test_many_values_stay_binned() -> None:
    rng = np.random.default_rng(3)
    vals = np.round(rng.normal(size=MAX_DISCRETE_VALUES + 1), 3)
    schema, _ = _draft(x=np.repeat(vals, MIN_CATEGORY_ROWS))
    assert schema["x"].kind == "continuous"


def test_a_rare_value_inside_the_range_keeps_the_column_binned_with_a_note() -> None:
    x = [0.5] * 10 + [1.5] * (MIN_CATEGORY_ROWS - 1) + [2.5] * 10
    schema, notes = _draft(x=x)
    assert schema["x"].kind == "continuous"
    assert f"fewer than {MIN_CATEGORY_ROWS} rows" in notes[0] and "1.5" not in notes[0]


def test_a_rare_smallest_or_largest_value_is_public_anyway_as_a_bound() -> None:
    term = [6] * 30 + [36] * 900 + [60] * 1900 + [72]  # one 72-month loan: the upper bound
    schema, notes = _draft(term=term)
    assert schema["term"].values == (6, 36, 60, 72) and not notes


# --- drafting dates --------------------------------------------------------------------------


def test_iso_dates_are_drafted_datetime_with_bounds_coarsened_to_months() -> None:
    dates = _dates(3000)
    schema, notes = _draft(opened=dates)
    col = schema["opened"]
    assert col.kind == "datetime" and col.resolution == "day"
    d = col.to_dict()
    assert (d["lower"], d["upper"]) == ("2015-01-01", pd.Timestamp(max(dates)).to_period(
        "M").end_time.strftime("%Y-%m-%d"))
    assert "months of the earliest and latest" in notes[0] and min(dates) not in notes[0]
    assert min(dates) not in schema.to_json() and max(dates) not in schema.to_json()


def test_many_distinct_dates_are_not_left_out_as_an_identifier() -> None:
    dates = _dates(400, days=20000)  # nearly every row its own date
    schema, _ = _draft(born=dates, n=np.arange(400) % 3)
    assert schema["born"].kind == "datetime" and not schema.ignored


def test_date_times_get_a_resolution_of_a_second_and_datetime64_columns_are_dates() -> None:
    stamps = ["2020-02-03 08:15:00", "2020-02-04T17:01:59", "2020-03-01 00:00:00"] * 5
    schema, _ = _draft(at=stamps, d=pd.to_datetime(_dates(15)))
    assert schema["at"].resolution == "second"
    assert schema["at"].to_dict()["upper"] == "2020-03-31T23:59:59"
    assert schema["d"].kind == "datetime" and schema["d"].resolution == "day"


@pytest.mark.parametrize("values", [
    ["2015", "2016", "2017"] * 10,  # years as text: plain numbers
    ["20150301", "20150302", "20150303"] * 10,
    ["2015-03-01", "soon", "2015-03-02"] * 10,
])
def test_numbers_and_mixed_text_are_not_dates(values: list[str]) -> None:
    schema, _ = _draft(x=values)
    assert schema["x"].kind == "categorical"


def test_integer_columns_are_never_dates() -> None:
    schema, _ = _draft(x=[20150301, 20150302, 20150310] * 10)
    assert schema["x"].kind != "datetime"


def test_dates_in_a_local_layout_are_left_out_so_none_becomes_public() -> None:
    schema, notes = _draft(d=["03/01/2015", "04/01/2015", "12/31/2016"] * 10, n=[1, 2, 3] * 10)
    assert schema.ignored == ["d"] and "YYYY-MM-DD" in notes[0]


# --- the schema document ---------------------------------------------------------------------


def _new_kinds() -> Schema:
    return Schema((
        Column("term", "discrete", values=(60, 36)),
        Column("ratio", "discrete", values=(0.5, 0.25), nullable=True),
        Column("day", "datetime", lower=16436.0, upper=16635.0, resolution="day"),
        Column("at", "datetime", lower=16436.25, upper=16437.5, resolution="second",
               nullable=True),
    ))


def test_new_kinds_round_trip_through_json_with_the_same_hash() -> None:
    schema = _new_kinds()
    text = schema.to_json()
    back = Schema.from_json(text)
    assert back == schema and back.to_json() == text and schema_sha256(back) == schema_sha256(
        schema)
    doc = json.loads(text)["columns"]
    assert doc[0]["values"] == [36, 60] and doc[1]["values"] == [0.25, 0.5]
    assert isinstance(doc[0]["values"][0], int)
    assert doc[2] == {"name": "day", "kind": "datetime", "nullable": False,
                      "lower": "2015-01-01", "upper": "2015-07-19", "resolution": "day"}
    assert (doc[3]["lower"], doc[3]["upper"]) == ("2015-01-01T06:00:00", "2015-01-02T12:00:00")


def test_the_hash_of_a_schema_without_new_kinds_is_unchanged() -> None:
    schema = Schema((Column("a", "categorical", ("x", "y")),
                     Column("n", "integer", lower=0, upper=9, nullable=True),
                     Column("v", "continuous", lower=-1.5, upper=2.5)))
    assert schema_sha256(schema) == (
        "464b5d8a5e705e409f393beffbee2499490a3732376bf738bbb0ad3ac7ba7596")


@pytest.mark.parametrize("column,needle", [
    ({"kind": "discrete"}, "non-empty list of its 'values'"),
    ({"kind": "discrete", "values": []}, "non-empty list of its 'values'"),
    ({"kind": "discrete", "values": "1,2"}, "'values' must be a list of numbers"),
    ({"kind": "discrete", "values": [1, "two"]}, "finite numbers; not 'two'"),
    ({"kind": "discrete", "values": [True, False]}, "finite numbers"),
    ({"kind": "discrete", "values": [1, 1.0]}, "lists a number twice"),
    ({"kind": "datetime", "lower": "2015-01-01", "upper": "2016-01-01"}, "needs a resolution"),
    ({"kind": "datetime", "lower": "2015-01-01", "upper": "2016-01-01", "resolution": "hour"},
     "needs a resolution"),
    ({"kind": "datetime", "lower": 0, "upper": 10, "resolution": "day"}, "is not an ISO date"),
    ({"kind": "datetime", "lower": "01/02/2015", "upper": "2016-01-01", "resolution": "day"},
     "is not an ISO date"),
    ({"kind": "datetime", "lower": "2016-01-01", "upper": "2015-01-01", "resolution": "day"},
     "lower bound '2016-01-01' is above upper bound '2015-01-01'"),
    ({"kind": "datetime", "upper": "2015-01-01", "resolution": "day"}, "finite lower and upper"),
    ({"kind": "datetime", "lower": "2015-01-01T06:00", "upper": "2015-01-01T07:00",
      "resolution": "day"}, "'2015-01-01T06:00:00' is not a whole day"),
])
def test_bad_discrete_lists_and_datetime_bounds_are_schema_errors(column: dict[str, object],
                                                                  needle: str) -> None:
    with pytest.raises(SchemaError, match="problem") as err:
        Schema.from_dict({"columns": [{"name": "a", **column}]})
    assert any(needle in p for p in err.value.problems), err.value.problems


# --- validation ------------------------------------------------------------------------------


def test_values_not_in_the_list_are_reported_like_unknown_categories() -> None:
    schema = Schema((Column("term", "discrete", values=(36, 60)),))
    df = pd.DataFrame({"term": [36, 48, 60, 72, 36]})
    with pytest.raises(DataValidationError) as err:
        validate_frame(df, schema, source="t")
    msg = err.value.problems[0]
    assert "2 row(s) (file lines 3, 5) hold values not in the schema's value list" in msg
    assert "['48', '72']" in msg and "add them to its value list" in msg
    assert err.value.kinds == ["column 'term': values that are not in the schema's value list"]
    with pytest.raises(DataValidationError, match="holds only its listed values"):
        validate_frame(df, schema, source="t", fold_unknown=False)
    with pytest.raises(DataValidationError) as hidden:
        validate_frame(df, schema, source="t", show_values=False)
    assert "48" not in str(hidden.value)


def test_float_values_read_back_from_csv_match_their_list() -> None:
    schema = Schema((Column("r", "discrete", values=(0.1, 1 / 3)),))
    text = pd.DataFrame({"r": [0.1, 1 / 3, 0.1]}).to_csv(index=False)
    out = validate_frame(pd.read_csv(io.StringIO(text)), schema, source="t")
    assert out["r"].tolist() == [0.1, 1 / 3, 0.1]


def test_dates_are_parsed_and_checked_against_their_bounds() -> None:
    col = Column("d", "datetime", lower=16436.0, upper=16800.0, resolution="day",
                 nullable=True)  # 2015-01-01 .. 2015-12-31
    df = pd.DataFrame({"d": ["2015-02-01", "yesterday", None, "2016-02-01", "2015-03-04"]})
    with pytest.raises(DataValidationError) as err:
        validate_frame(df, Schema((col,)), source="t")
    problems = err.value.problems
    assert "1 row(s) (file lines 3) are not dates" in problems[0] and "yesterday" in problems[0]
    assert "lie outside the declared bounds [2015-01-01, 2015-12-31]" in problems[1]
    out = validate_frame(df.iloc[[0, 2, 4]], Schema((col,)), source="t")
    assert str(out["d"].dtype) == "datetime64[ns]" and out["d"].isna().tolist() == [
        False, True, False]


def test_zoned_times_are_read_in_utc() -> None:
    col = Column("t", "datetime", lower=16436.0, upper=16437.0, resolution="second")
    out = validate_frame(pd.DataFrame({"t": ["2015-01-01T10:00:00+02:00"]}), Schema((col,)),
                         source="t")
    assert out["t"][0] == pd.Timestamp("2015-01-01 08:00:00")


# --- encoding --------------------------------------------------------------------------------


def test_discrete_and_date_values_encode_and_decode_exactly() -> None:
    schema = _new_kinds()
    df = pd.DataFrame({"term": [36, 60, 36], "ratio": [0.25, None, 0.5],
                       "day": ["2015-01-01", "2015-03-14", "2015-07-19"],
                       "at": ["2015-01-01 06:00:00", None, "2015-01-02T11:59:59"]})
    checked = validate_frame(df, schema, source="t")
    enc = Encoding.from_schema(schema)
    codes = enc.encode(checked)
    assert codes[:, 0].tolist() == [0, 1, 0] and codes[:, 1].tolist() == [0, 2, 1]
    rng = np.random.default_rng(0)
    back = pd.DataFrame({c.column.name: c.decode(codes[:, j], rng)
                         for j, c in enumerate(enc.codecs)})
    assert back["term"].dtype == np.int64 and back["term"].tolist() == [36, 60, 36]
    assert back["ratio"].dtype == float and back["ratio"].isna().tolist() == [False, True, False]
    assert back["day"].tolist() == checked["day"].tolist()  # 200 days: one code a day
    csv = back.to_csv(index=False).splitlines()
    assert csv[1].split(",")[2] == "2015-01-01"  # dates come back written as dates
    assert csv[1].split(",")[3] == "2015-01-01 06:00:00"


def test_dates_over_a_long_range_are_binned_and_decode_to_whole_days() -> None:
    col = Column("d", "datetime", lower=0.0, upper=20000.0, resolution="day")
    codec = ColumnCodec.for_column(col)
    assert codec.edges is not None and not codec.exact
    out = codec.decode(np.arange(codec.size), np.random.default_rng(0))
    assert (out == out.dt.normalize()).all()
    assert out.min() >= pd.Timestamp("1970-01-01") and out.max() <= pd.Timestamp("2024-10-04")


def test_timestamps_all_at_midnight_are_dates() -> None:
    # a database's export of dates: a second's resolution would invent times of day
    stamps = ["2020-02-03 00:00:00", "2020-02-04T00:00:00", "2020-03-01 00:00:00"] * 5
    schema, _ = _draft(at=stamps)
    assert schema["at"].resolution == "day"


@pytest.mark.parametrize("columns", [["at", "n"], ["at"]])  # Arrow's writer, and pandas'
def test_a_column_of_seconds_is_written_with_times_even_when_all_at_midnight(
        columns: list[str]) -> None:
    from fedsynth.synthesis.datetimes import with_layout
    from fedsynth.synthesis.table_file import csv_text

    schema = Schema((Column("at", "datetime", lower=0.0, upper=20000.0, resolution="second"),
                     Column("n", "integer", lower=0.0, upper=9.0)))
    df = pd.DataFrame({"at": pd.to_datetime(["2016-01-01", "2016-01-02"]), "n": [1, 2]})
    text = csv_text(with_layout(df[columns], schema.columns))
    assert "2016-01-01 00:00:00" in text and "2016-01-02 00:00:00" in text
    day = Schema((Column("at", "datetime", lower=0.0, upper=20000.0, resolution="day"),))
    assert "00:00:00" not in csv_text(with_layout(df[columns], day.columns))


def test_amounts_in_cents_are_drafted_with_two_decimals_and_decoded_in_cents() -> None:
    rng = np.random.default_rng(3)
    amounts = rng.lognormal(4, 1.5, 2000).round(2)
    schema, _ = _draft(amount=amounts, x=rng.normal(size=2000))
    assert schema["amount"].decimals == 2 and schema["x"].decimals is None
    doc = schema.to_dict()
    assert doc["columns"][0]["decimals"] == 2 and "decimals" not in doc["columns"][1]
    assert Schema.from_dict(doc) == schema
    codec = ColumnCodec.for_column(schema["amount"])
    fine = np.arange(codec.size).repeat(20)
    out = codec.decode(fine, np.random.default_rng(0)).to_numpy(dtype=float)
    assert np.array_equal(np.round(out, 2), out)
    col = schema["amount"]
    assert col.lower is not None and col.upper is not None
    assert (out >= col.lower).all() and (out <= col.upper).all()


def test_a_range_condition_draws_on_the_columns_decimal_grid() -> None:
    from fedsynth.synthesis.conditions import redraw_in_range

    col = Column("v", "continuous", lower=0.0, upper=100.0, decimals=1)
    codec = ColumnCodec.for_column(col)
    fine = np.arange(1, codec.size).repeat(5)
    fine = fine[codec.in_bins(fine)]
    out = redraw_in_range(codec, fine, (10.0, 20.0), np.random.default_rng(1))
    inside = (codec.edges[fine - 1] <= 20.0) & (codec.edges[fine] >= 10.0)
    got = out[inside]
    assert len(got) and np.array_equal(np.round(got, 1), got)
    assert (got >= 10.0).all() and (got <= 20.0).all()


@pytest.mark.parametrize("bad", [-1, 13, 1.5, True, "2"])
def test_decimals_must_be_a_small_whole_number_on_a_continuous_column(bad: object) -> None:
    doc = {"columns": [{"name": "v", "kind": "continuous", "lower": 0, "upper": 1,
                        "decimals": bad}]}
    with pytest.raises(SchemaError, match="'decimals' must be a whole number"):
        Schema.from_dict(doc)
    with pytest.raises(SchemaError, match="'decimals'"):
        Schema.from_dict({"columns": [{"name": "v", "kind": "integer", "lower": 0,
                                       "upper": 1, "decimals": 1}]})


def _interval_of(said: str, resolution: str, lower: str, upper: str) -> tuple[str, str]:
    """The condition's interval on a datetime column, as its two ends' timestamps."""
    from fedsynth.synthesis import datetimes
    from fedsynth.synthesis.conditions import parse_conditions

    col = Column(said.split("=")[0], "datetime", lower=datetimes.parse_bound(lower),
                 upper=datetimes.parse_bound(upper), resolution=resolution)
    keep = parse_conditions(Encoding.from_schema(Schema((col,))), [said])[0]
    assert keep.interval is not None
    unit = pd.Timedelta(datetimes.UNIT_NS[resolution], unit="ns")
    lo, hi = (pd.Timestamp(0) + v * unit for v in keep.interval)
    return str(lo), str(hi)


@pytest.mark.parametrize(("said", "first", "last"), [
    ("ts=2016-01-02", "2016-01-02 00:00:00", "2016-01-02 23:59:59"),
    ("ts=2016-01-01..2016-01-02", "2016-01-01 00:00:00", "2016-01-02 23:59:59"),
    ("ts=2016-01-01T06:00:00..2016-01-02T06:00:00", "2016-01-01 06:00:00",
     "2016-01-02 06:00:00"),
])
def test_a_date_given_to_a_column_of_seconds_means_the_whole_day(said: str, first: str,
                                                                  last: str) -> None:
    assert _interval_of(said, "second", "2015-01-01", "2017-12-31") == (first, last)


def test_one_or_two_rows_with_more_digits_do_not_set_the_drafted_decimals() -> None:
    rng = np.random.default_rng(4)
    v = rng.normal(100, 20, 1000).round(2)
    v[:2] = [100.123456, 99.654321]  # two rows alone would make it six digits
    schema, _ = _draft(v=v)
    assert schema["v"].decimals == 2
    v[2] = 101.5555
    assert _draft(v=v)[0]["v"].decimals == 4  # three rows do, as three rows list a category


@pytest.mark.parametrize("scale", ["linear", "log"])
def test_values_on_the_decimal_grid_stay_in_their_bin_and_off_the_lower_bound(scale: str
                                                                               ) -> None:
    col = Column("v", "continuous", lower=0.0, upper=100.0, decimals=2, scale=scale)
    codec = ColumnCodec.for_column(col)
    fine = np.arange(1, codec.size).repeat(200)  # every bin, none the lower bound's code
    out = codec.decode(fine, np.random.default_rng(2))
    vals = out.to_numpy(dtype=float)
    assert np.array_equal(np.round(vals, 2), vals)
    again = codec.encode(out)
    has_grid = (np.ceil(np.round(codec.edges[:-1] * 100, 6)) + (np.arange(
        len(codec.edges) - 1) == 0) <= np.ceil(np.round(codec.edges[1:] * 100, 6)) - 1)
    kept = has_grid[fine - 1]  # bins holding a grid point keep every value they draw
    assert (again[kept] == fine[kept]).all() and kept.mean() > 0.5
    assert (vals > 0).all()  # never the lower bound's exact code


def test_times_with_a_zone_are_said_to_be_read_as_utc() -> None:
    stamps = ["2021-01-01T00:00:00+02:00", "2021-02-01T10:00:00+02:00", "2021-03-01T08:00:00Z"]
    _, notes = _draft(t=stamps * 3, d=["2021-01-01", "2021-01-02", "2021-01-03"] * 3)
    assert "read as UTC" in notes[0] and not any("UTC" in n for n in notes[1:])


@pytest.mark.parametrize("stamps", [
    ["2022-09-08 19:31", "2022-09-09 07:05", "2022-10-01 00:00"],  # minutes only
    ["2022-09-08 19:31:00", "2022-09-09T07:05:00", "2022-10-01 00:00:00"],  # zero seconds
])
def test_times_without_seconds_get_a_minutes_resolution_and_never_invented_seconds(
        stamps: list[str]) -> None:
    from fedsynth.synthesis.datetimes import with_layout
    from fedsynth.synthesis.table_file import csv_text

    schema, notes = _draft(at=stamps * 5)
    col = schema["at"]
    assert col.resolution == "minute" and "a minute" in notes[0]
    assert col.to_dict()["upper"] == "2022-10-31T23:59"
    assert Schema.from_dict(schema.to_dict()) == schema
    enc = Encoding.from_schema(schema)
    codec = enc.codecs[0]
    fine = np.arange(codec.size).repeat(3)
    out = codec.decode(fine, np.random.default_rng(0))
    assert (out.dropna() == out.dropna().dt.floor("min")).all()
    text = csv_text(with_layout(pd.DataFrame({"at": out}), schema.columns)).splitlines()
    assert text[0] == "at" and all(len(v) == 16 for v in text[1:] if v), text[:5]
    # the table's own values come back as written
    back = validate_frame(pd.DataFrame({"at": stamps}), schema, source="t")
    rows = csv_text(with_layout(back, schema.columns)).splitlines()[1:]
    assert rows == [s.replace("T", " ")[:16] for s in stamps]
    # one value with seconds: the column is of seconds
    assert _draft(at=stamps * 5 + ["2022-09-08 19:31:07"])[0]["at"].resolution == "second"


def test_a_date_given_to_a_column_of_minutes_means_the_whole_day() -> None:
    assert _interval_of("ts=2016-01-02", "minute", "2015-01-01", "2017-12-31") == (
        "2016-01-02 00:00:00", "2016-01-02 23:59:00")


def test_an_impossible_date_condition_shows_the_range_in_the_columns_layout() -> None:
    from fedsynth.synthesis import datetimes
    from fedsynth.synthesis.conditions import ConditionError, parse_conditions

    col = Column("d", "datetime", lower=datetimes.parse_bound("2015-01-01"),
                 upper=datetimes.parse_bound("2017-12-31"), resolution="day")
    with pytest.raises(ConditionError, match=r"values \(2015-01-01 to 2017-12-31\)"):
        parse_conditions(Encoding.from_schema(Schema((col,))), ["d=2030-01-01"])


def test_a_bound_off_a_minute_columns_grid_is_refused_naming_it() -> None:
    with pytest.raises(SchemaError, match="'2022-09-01T00:00:30' is not a whole minute"):
        Schema.from_dict({"columns": [{"name": "t", "kind": "datetime",
                                       "lower": "2022-09-01T00:00:30",
                                       "upper": "2022-10-31T23:59", "resolution": "minute"}]})


@pytest.mark.parametrize(("said", "first", "last"), [
    # a low end with seconds starts at the next whole minute, a high end stops at its minute
    ("t=2022-09-15 10:30:45..2022-09-15 10:32:10", "2022-09-15 10:31:00",
     "2022-09-15 10:32:00"),
    ("t=2022-09-15 10:30", "2022-09-15 10:30:00", "2022-09-15 10:30:00"),
])
def test_condition_ends_with_seconds_move_inward_on_a_column_of_minutes(
        said: str, first: str, last: str) -> None:
    assert _interval_of(said, "minute", "2022-09-01", "2022-10-31T23:59") == (first, last)


def test_one_time_off_a_minute_columns_grid_is_refused() -> None:
    from fedsynth.synthesis import datetimes
    from fedsynth.synthesis.conditions import ConditionError, parse_conditions

    col = Column("t", "datetime", lower=datetimes.parse_bound("2022-09-01"),
                 upper=datetimes.parse_bound("2022-10-31T23:59"), resolution="minute")
    with pytest.raises(ConditionError, match="holds whole minutes"):
        parse_conditions(Encoding.from_schema(Schema((col,))), ["t=2022-09-15 10:30:45"])
