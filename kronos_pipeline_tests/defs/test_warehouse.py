"""The warehouse lake in one process: idempotent window writes, one file per day, holidays
that remove a day, refused schemas, all-or-nothing transactions, and the same code on an
fsspec ``memory://`` root."""

from __future__ import annotations

import datetime as dt
import pickle
import uuid

import fsspec
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from kronos_pipeline.warehouse import SchemaMismatch, Warehouse

DAY0 = dt.date(2020, 1, 1)


def frame_of(start: dt.date, days: int, tickers=("A", "B", "C"), scale=1.0) -> pl.DataFrame:
    """``days`` consecutive days from ``start``, one row per ticker, value = scale*(d+1)*(i+1)."""
    rows = [
        (start + dt.timedelta(days=d), t, scale * (d + 1) * (i + 1))
        for d in range(days)
        for i, t in enumerate(tickers)
    ]
    return pl.DataFrame(rows, schema=["date", "ticker", "value"], orient="row")


def _day(n: int) -> dt.date:
    return DAY0 + dt.timedelta(days=n)


def _content(db: Warehouse, table: str = "t") -> pl.DataFrame:
    return db.read_table(table).sort("date", "ticker")


@pytest.fixture(params=["local", "memory"])
def db(request, tmp_path) -> Warehouse:
    """A lake in a local folder, and one on fsspec's in-memory filesystem (object storage's
    stand-in: another protocol, the same code)."""
    if request.param == "local":
        yield Warehouse(tmp_path / "lake")
        return
    root = f"memory://lake-{uuid.uuid4().hex}"
    yield Warehouse(root)
    fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)


def test_replace_window_twice_with_the_same_frame_leaves_identical_content(db):
    frame = frame_of(DAY0, 10)
    assert db.replace_window("t", frame, DAY0, _day(9)) == 30
    first = _content(db)
    assert db.replace_window("t", frame, DAY0, _day(9)) == 30
    second = _content(db)
    assert_frame_equal(second, first, check_exact=True)
    assert_frame_equal(second, frame.sort("date", "ticker"), check_exact=True)
    assert second.select("date", "ticker").is_duplicated().sum() == 0


def test_each_day_is_one_file_of_its_partition(db):
    db.replace_window("t", frame_of(DAY0, 3), DAY0, _day(2))
    files = sorted(p.removeprefix(db.base) for p in db.fs.find(db.table_dir("t")))
    assert files == [
        "/t/_schema.parquet",
        "/t/date=2020-01-01/part.parquet",
        "/t/date=2020-01-02/part.parquet",
        "/t/date=2020-01-03/part.parquet",
    ]
    assert db.tables() == ["t"]
    assert db.table_schema("t") == {"date": "DATE", "ticker": "VARCHAR", "value": "DOUBLE"}


def test_distinct_dates_come_from_the_day_files_and_equal_the_query(db):
    db.replace_window("t", frame_of(DAY0, 10), DAY0, _day(9))
    db.replace_window("t", frame_of(_day(4), 0), _day(4), _day(4))  # a holiday: no file
    query = db.read("select distinct date from t order by date")
    assert db.distinct_dates("t").equals(query)
    assert query["date"].to_list() == [_day(n) for n in range(10) if n != 4]
    db.replace_table("whole", frame_of(DAY0, 2))  # stored whole: by the query
    assert db.distinct_dates("whole")["date"].to_list() == [DAY0, _day(1)]


def test_a_query_creates_the_views_of_the_tables_it_names_only(db):
    db.replace_window("t", frame_of(DAY0, 3), DAY0, _day(2))
    db.replace_window("u", frame_of(DAY0, 3), DAY0, _day(2))
    with db.connect("select * from t") as con:
        assert {
            r[0]
            for r in con.sql("select view_name from duckdb_views() where not internal").fetchall()
        } == {"t"}
    with db.connect() as con:  # a connection for any query: every view
        assert {
            r[0]
            for r in con.sql("select view_name from duckdb_views() where not internal").fetchall()
        } == {"t", "u"}
    assert db.read("select count(*) as n from t join u using (date, ticker)")["n"].item() == 9


def test_replace_window_touches_only_its_window(db):
    db.replace_window("t", frame_of(DAY0, 10), DAY0, _day(9))
    # The rewrite of days 3..5 has only one ticker: the others' rows in the window go away.
    db.replace_window("t", frame_of(_day(3), 3, ("A",), scale=-1.0), _day(3), _day(5))
    out = _content(db)
    assert out.height == 30 - 9 + 3
    inside = out.filter(pl.col("date").is_between(_day(3), _day(5)))
    assert inside["ticker"].to_list() == ["A"] * 3
    assert inside["value"].to_list() == [-1.0, -2.0, -3.0]
    outside = out.filter(~pl.col("date").is_between(_day(3), _day(5)))
    expected = frame_of(DAY0, 10).filter(~pl.col("date").is_between(_day(3), _day(5)))
    assert_frame_equal(outside, expected.sort("date", "ticker"), check_exact=True)


def test_a_holiday_in_the_window_removes_that_days_rows(db):
    db.replace_window("t", frame_of(DAY0, 5), DAY0, _day(4))
    holiday = _day(2)
    db.replace_window("t", frame_of(DAY0, 5).filter(pl.col("date") != holiday), DAY0, _day(4))
    assert holiday not in _content(db)["date"].to_list()
    assert _content(db).height == 12
    assert not db.fs.exists(f"{db.table_dir('t')}/date={holiday}/part.parquet")
    # The view skips a day's folder left without its file, the first one's too.
    db.replace_window("t", frame_of(_day(1), 4).filter(pl.col("date") != holiday), DAY0, _day(4))
    assert db.read("select count(*) as n, min(date) as first from t").row(0) == (9, _day(1))
    assert db.read_table("t", DAY0, _day(3)).select(pl.len(), pl.col("date").min()).row(0) == (
        6,
        _day(1),
    )
    # A window with no rows at all empties its days; the table and its columns remain.
    db.replace_window("t", frame_of(DAY0, 0), DAY0, _day(4))
    assert _content(db).height == 0
    assert db.table_schema("t") == {"date": "DATE", "ticker": "VARCHAR", "value": "DOUBLE"}


def test_undated_rows_have_their_own_partition_rewritten_with_the_window(db):
    dated = frame_of(DAY0, 2)
    undated = pl.DataFrame({"date": [None], "ticker": ["Z"], "value": [9.0]}).cast(dated.schema)
    db.replace_window("q", pl.concat([dated, undated]), DAY0, _day(1), include_null_dates=True)
    assert db.read("select count(*) from q where date is null").item() == 1
    db.replace_window("q", dated, DAY0, _day(1), include_null_dates=True)
    assert db.read("select count(*) from q where date is null").item() == 0
    with pytest.raises(ValueError, match="rows without a date"):
        db.replace_window("q", pl.concat([dated, undated]), DAY0, _day(1))


def test_replace_window_refuses_rows_outside_the_window_and_leaves_table_unchanged(db):
    db.replace_window("t", frame_of(DAY0, 5), DAY0, _day(4))
    before = _content(db)
    with pytest.raises(ValueError, match="1 rows fall outside the window"):
        db.replace_window("t", frame_of(_day(4), 2, ("A",)), DAY0, _day(4))
    assert_frame_equal(_content(db), before, check_exact=True)


def test_a_value_the_column_type_cannot_hold_is_refused_and_nothing_changes(db):
    db.replace_window("t", frame_of(DAY0, 5), DAY0, _day(4))
    before = _content(db)
    bad = frame_of(DAY0, 5).with_columns(value=pl.lit("not a number"))
    with pytest.raises(SchemaMismatch, match="do not fit its column types"):
        db.replace_window("t", bad, DAY0, _day(4))
    assert_frame_equal(_content(db), before, check_exact=True)
    assert not [p for p in db.fs.find(db.table_dir("t")) if ".tmp-" in p]


def test_a_frame_with_other_columns_than_the_table_is_refused_by_name(db):
    db.replace_window("t", frame_of(DAY0, 5), DAY0, _day(4))
    before = _content(db)
    for bad in (frame_of(DAY0, 5).with_columns(extra=pl.lit(1)), frame_of(DAY0, 5).drop("value")):
        with pytest.raises(SchemaMismatch, match="warehouse table t has columns"):
            db.replace_window("t", bad, DAY0, _day(4))
    assert_frame_equal(_content(db), before, check_exact=True)


def test_columns_in_another_order_land_in_the_tables_order(db):
    db.replace_window("t", frame_of(DAY0, 2), DAY0, _day(1))
    db.replace_window("t", frame_of(_day(2), 1).select("value", "date", "ticker"), _day(2), _day(2))
    assert db.read_table("t").columns == ["date", "ticker", "value"]
    assert _content(db).height == 9


def test_a_transaction_publishes_all_its_tables_or_none(db):
    with db.transaction() as tx:
        tx.replace_window("t", frame_of(DAY0, 5), DAY0, _day(4))
        tx.replace_table("side", pl.DataFrame({"k": [1]}))
    before = (_content(db), db.read_table("side"))
    with pytest.raises(RuntimeError, match="crash between writes"):
        with db.transaction() as tx:
            tx.replace_window("t", frame_of(DAY0, 5, scale=-1.0), DAY0, _day(4))
            tx.replace_table("side", pl.DataFrame({"k": [2]}))
            tx.replace_window("new_table", frame_of(DAY0, 1), DAY0, DAY0)
            raise RuntimeError("crash between writes")
    assert_frame_equal(_content(db), before[0], check_exact=True)
    assert_frame_equal(db.read_table("side"), before[1], check_exact=True)
    assert db.tables() == ["side", "t"]
    assert not [p for p in db.fs.find(db.base) if ".tmp-" in p]


def test_staged_files_are_invisible_to_readers_until_the_publish(db):
    db.replace_window("t", frame_of(DAY0, 1), DAY0, DAY0)
    with db.transaction() as tx:
        tx.replace_window("t", frame_of(DAY0, 1, scale=5.0), DAY0, DAY0)
        assert [p for p in db.fs.find(db.table_dir("t")) if ".tmp-" in p]
        assert _content(db)["value"].to_list() == [1.0, 2.0, 3.0]
    assert _content(db)["value"].to_list() == [5.0, 10.0, 15.0]


def test_replace_table_stores_one_file_and_replaces_an_earlier_partitioned_layout(db):
    db.replace_window("t", frame_of(DAY0, 3), DAY0, _day(2))
    db.replace_table("t", pl.DataFrame({"other": [1, 2]}))
    assert [p.removeprefix(db.base) for p in db.fs.find(db.table_dir("t"))] == ["/t/part.parquet"]
    assert db.read_table("t", columns="other")["other"].to_list() == [1, 2]
    with pytest.raises(ValueError, match="stored whole"):
        db.replace_window("t", frame_of(DAY0, 1), DAY0, DAY0)


def test_drop_table_removes_every_file_of_the_table_at_the_publish(db):
    db.replace_window("t", frame_of(DAY0, 2), DAY0, _day(1))
    db.replace_table("side", pl.DataFrame({"k": [1]}))
    with db.transaction() as tx:
        tx.drop_table("t")
        tx.drop_table("never_written")
        assert db.tables() == ["side", "t"]
    assert db.tables() == ["side"]


def test_replace_where_replaces_the_partitions_of_its_values(db):
    frame = pl.DataFrame({"fold": [1, 1, 2], "value": [1.0, 2.0, 3.0]})
    db.replace_where("by_fold", frame, "fold", [1, 2])
    db.replace_where("by_fold", pl.DataFrame({"fold": [2], "value": [9.0]}), "fold", [2, 3])
    assert db.read("select * from by_fold order by value").rows() == [(1, 1.0), (1, 2.0), (2, 9.0)]
    with pytest.raises(ValueError, match="have a fold not in"):
        db.replace_where("by_fold", frame, "fold", [1])


def test_a_query_joins_tables_of_the_lake_through_duckdb_views(db):
    db.replace_window("t", frame_of(DAY0, 2), DAY0, _day(1))
    db.replace_table("names", pl.DataFrame({"ticker": ["A", "B"], "name": ["Alpha", "Beta"]}))
    out = db.read(
        "select n.name, sum(t.value) as total from t join names n using (ticker) "
        "where t.date >= ? group by n.name order by n.name",
        [DAY0],
    )
    assert out.rows() == [("Alpha", 3.0), ("Beta", 6.0)]
    with db.connect() as con:
        views = con.execute("select table_name, table_type from information_schema.tables")
        assert sorted(views.fetchall()) == [("names", "VIEW"), ("t", "VIEW")]


def test_read_table_of_a_window_reads_the_days_of_the_window(db):
    db.replace_window("t", frame_of(DAY0, 10), DAY0, _day(9))
    full = _content(db)
    for start, end in ((_day(3), _day(5)), (_day(8), None), (None, _day(1)), (_day(20), _day(30))):
        expected = full.filter(
            (pl.col("date") >= (start or DAY0)) & (pl.col("date") <= (end or _day(9)))
        )
        got = db.read_table("t", start, end).sort("date", "ticker")
        assert_frame_equal(got, expected, check_exact=True)
    assert db.read_table("t", _day(20), _day(30), columns="ticker").columns == ["ticker"]


def test_a_windows_read_has_the_querys_rows_types_and_order(db):
    """``read_table`` of a window (polars' reader on a local lake, DuckDB elsewhere) returns
    what the SQL query over the table's view returns: every column type, every value, the same
    row order (day by day, each day in its stored order), and a column subset."""
    frame = pl.DataFrame({
        "date": [_day(d) for d in (0, 0, 1, 2, 2, 2)],
        "ticker": ["B", "A", "C", "C", "A", "B"],  # stored order within a day kept
        "value": [1.5, None, 3.25, -4.0, 5.0, 6.0],
        "count": pl.Series([1, 2, None, 4, 5, 6], dtype=pl.Int64),
        "flag": [True, False, None, True, True, False],
        "stamp": [dt.datetime(2020, 1, 1, 9, 30), None, dt.datetime(2020, 1, 2, 16), None,
               dt.datetime(2020, 1, 3, 1, 2, 3), dt.datetime(2020, 1, 3)],
        "small": pl.Series([1, 2, 3, 4, 5, 6], dtype=pl.Int32),
    })  # fmt: skip
    db.replace_window("t", frame, _day(0), _day(2))
    for start, end in ((_day(0), _day(2)), (_day(1), None), (None, _day(1)), (_day(5), None)):
        where = " and ".join(
            [f"date >= DATE '{start}'"] * (start is not None)
            + [f"date <= DATE '{end}'"] * (end is not None)
        )
        expected = db.read(f"select * from t where {where}")  # the view: day files in order
        got = db.read_table("t", start, end)
        assert got.schema == expected.schema
        assert_frame_equal(got, expected, check_exact=True)
        cols = db.read_table("t", start, end, columns="ticker, stamp")
        assert_frame_equal(cols, expected.select("ticker", "stamp"), check_exact=True)


def _file_schemas(db: Warehouse, table: str) -> dict[str, object]:
    import pyarrow.parquet as pq

    out = {}
    for path in db.fs.find(db.table_dir(table)):
        with db.fs.open(path, "rb") as handle:
            out[path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1]] = pq.read_schema(handle)
    return out


@pytest.mark.parametrize("same_transaction", [False, True])
def test_a_column_first_written_all_null_takes_the_type_of_its_first_values_in_every_file(
    db, same_transaction
):
    import pyarrow as pa

    first = frame_of(DAY0, 2).with_columns(note=pl.lit(None))  # polars Null: Arrow null type
    later = frame_of(_day(2), 2).with_columns(note=pl.lit("x"))
    if same_transaction:
        with db.transaction() as tx:
            tx.replace_window("t", first, DAY0, _day(1))
            tx.replace_window("t", later, _day(2), _day(3))
    else:
        db.replace_window("t", first, DAY0, _day(1))
        assert db.stored_schema("t").field("note").type == pa.null()
        db.replace_window("t", later, _day(2), _day(3))
    schemas = _file_schemas(db, "t")
    assert len(schemas) == 5  # the schema file and four days
    assert all(s.field("note").type == pa.large_string() for s in schemas.values()), schemas
    # The view binds from any one file: every day reads, the early ones null.
    got = db.read("select date, note from t order by date, ticker")
    assert got["note"].to_list() == [None] * 6 + ["x"] * 6
    # Written all-null again later: cast to the table's type, not a null column again.
    db.replace_window("t", first, DAY0, _day(1))
    assert all(s.field("note").type == pa.large_string() for s in _file_schemas(db, "t").values())


def test_a_date_filter_on_a_view_never_opens_the_other_days_files(db):
    db.replace_window("t", frame_of(DAY0, 5), DAY0, _day(4))
    broken = f"{db.table_dir('t')}/date={_day(1).isoformat()}/part.parquet"
    with db.fs.open(broken, "wb") as handle:  # not Parquet: reading it fails the query
        handle.write(b"not a parquet file")
    assert db.read("select count(*) from t where date = ?", [_day(3)]).item() == 3
    assert db.read("select count(*) from t where date >= ?", [_day(2)]).item() == 9
    with pytest.raises(Exception, match="(?i)parquet|magic"):
        db.read("select count(*) from t")  # a scan that needs that day does open it


def test_undated_rows_of_a_lake_written_before_the_null_rename_are_read_then_replaced(db):
    dated = frame_of(DAY0, 2)
    undated = pl.DataFrame({"date": [None], "ticker": ["Z"], "value": [9.0]}).cast(dated.schema)
    db.replace_window("q", pl.concat([dated, undated]), DAY0, _day(1), include_null_dates=True)
    folder = db.table_dir("q")
    db.fs.makedirs(f"{folder}/date=__null__", exist_ok=True)
    db.fs.mv(f"{folder}/date=NULL/part.parquet", f"{folder}/date=__null__/part.parquet")
    assert db.read("select count(*) from q where date is null").item() == 1
    assert db.read("select count(*) from q").item() == 7
    db.replace_window("q", pl.concat([dated, undated]), DAY0, _day(1), include_null_dates=True)
    files = {p.removeprefix(folder) for p in db.fs.find(folder)}
    assert "/date=NULL/part.parquet" in files and "/date=__null__/part.parquet" not in files
    assert db.read("select count(*) from q where date is null").item() == 1


def test_a_table_partitioned_by_a_text_column_keeps_its_null_partition_null(db):
    frame = pl.DataFrame({"fold": ["2020-01", None], "value": [1.0, 2.0]})
    db.replace_where("f", frame, "fold", ["2020-01", None])
    got = db.read("select fold, value from f order by value")
    assert got["fold"].to_list() == ["2020-01", None]


def test_a_lake_whose_files_differ_in_a_column_first_written_all_null_still_reads(db):
    """As the lake of 2026-12-04 wrote them: the schema file and the first days with a null
    column, a later day with the column typed."""
    import pyarrow.parquet as pq

    db.replace_window("t", frame_of(DAY0, 3).with_columns(note=pl.lit(None)), DAY0, _day(2))
    typed = frame_of(_day(2), 1).with_columns(note=pl.lit("x")).to_arrow()
    with db.fs.open(f"{db.table_dir('t')}/date={_day(2).isoformat()}/part.parquet", "wb") as h:
        pq.write_table(typed, h)
    expected = [None] * 6 + ["x"] * 3
    assert db.read("select note from t order by date, ticker")["note"].to_list() == expected
    got = db.read_table("t", DAY0, _day(2)).sort("date", "ticker")["note"].to_list()
    assert got == expected


def test_queries_see_each_others_writes_but_never_each_others_views(db):
    """Every query of a process opens a cursor of one in-memory database: its views are its
    own (temporary), gone when it ends, and bound at its start, so a write between two
    queries is seen by the second."""
    db.replace_window("t", frame_of(DAY0, 3), DAY0, _day(2))
    db.replace_window("u", frame_of(DAY0, 2), DAY0, _day(1))
    views = "select view_name from duckdb_views() where not internal"
    with db.connect("select * from t") as outer:
        with db.connect("select * from u") as inner:
            assert {r[0] for r in inner.sql(views).fetchall()} == {"u"}
            assert inner.sql("select count(*) from u").fetchall()[0][0] == 6
        assert {r[0] for r in outer.sql(views).fetchall()} == {"t"}
        assert outer.sql("select count(*) from t").fetchall()[0][0] == 9
    db.replace_window("t", frame_of(DAY0, 5), DAY0, _day(4))
    assert db.read("select count(*) as n from t")["n"].item() == 15
    with db.connect("select 1") as con:
        assert con.sql(views).fetchall() == []
    # Its open database stays behind when it is pickled (into another process).
    assert db._database is not None and db.__getstate__()["_database"] is None
    assert pickle.dumps(db)
