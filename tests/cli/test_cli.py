"""``python -m loader`` run in a subprocess on caches made by ``loader.write_cache``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import loader

REPO = Path(__file__).resolve().parents[2]
ROWS = 600


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m loader ARGS`` from the repository root (``env``: extra environment variables)."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "loader", *map(str, args)], capture_output=True, text=True, env=env, cwd=REPO
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The ``larder: error:`` line of a failed run (there must be exactly one)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("larder: error: ")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def cli_table(n: int = ROWS) -> pa.Table:
    """Rows with a non-null id, a long list every 50th row, strings, bytes and a label."""
    rng = np.random.default_rng(7)
    lengths = np.where(np.arange(n) % 50 == 0, 30, rng.integers(0, 5, n))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    schema = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("title", pa.string()),
            pa.field("image", pa.binary()),
            pa.field("ids", pa.list_(pa.int32())),
            pa.field("label", pa.int32()),
        ]
    )
    return pa.table(
        {
            "id": np.arange(n, dtype=np.int64),
            "title": [f"상품 {i} " + "x" * (i % 90) for i in range(n)],
            "image": [bytes(range(i % 7, i % 7 + 20 + i % 11)) for i in range(n)],
            "ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(0, 999, offsets[-1]), pa.int32())),
            "label": (np.arange(n) % 3).astype(np.int32),
        },
        schema=schema,
    )


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> tuple[pa.Table, loader.Dataset]:
    """A read-only cache of ``cli_table()`` with several files, a vocabulary and a fingerprint."""
    table = cli_table()
    ds = loader.write_cache(
        table,
        tmp_path_factory.mktemp("cli") / "cache",
        "products",
        row_group_bytes=3_000,
        vocabularies={"label": ["shoes", "bags", "hats"]},
        fingerprint="0123456789abcdef",
        source={
            "table": "demo.products",
            "where": "dt = '2026-11-23'",
            "snapshot": {"files": 3, "deep": {"a": {"b": 1}}},
        },
    )
    assert len(ds.files) > 3
    return table, ds


def key_values(text: str) -> dict[str, str]:
    """Top-level ``key: value`` lines of ``inspect`` output."""
    out = {}
    for line in text.splitlines():
        if not line.startswith(" ") and ": " in line:
            key, value = line.split(": ", 1)
            out[key] = value
    return out


def test_inspect_prints_schema_sizes_version_and_source(published):
    table, ds = published
    proc = run("inspect", Path(ds.version_path).parent)
    assert proc.returncode == 0, proc.stderr
    kv = key_values(proc.stdout)
    assert kv["dataset"] == "products"
    assert kv["version"] == ds.version
    assert int(kv["rows"]) == table.num_rows
    assert int(kv["files"]) == len(ds.files)
    assert int(kv["row_groups"]) == ds.num_row_groups
    assert int(kv["bytes"].split()[0]) == sum(os.path.getsize(ds.file_path(f)) for f in ds.files)
    assert kv["source.table"] == "demo.products"
    assert kv["source.fingerprint"] == "0123456789abcdef"
    assert kv["source.snapshot.files"] == "3"
    assert kv["source.snapshot.deep"] == '{"a": {"b": 1}}'  # three keys deep at most, then JSON
    assert kv["created_by.job"] == "loader.write_cache"
    sizes = ds.row_group_sizes()
    assert kv["row_group_rows"] == f"min {min(sizes)} / median {int(np.median(sizes))} / max {max(sizes)}"
    cols = proc.stdout.split("\ncolumns:\n", 1)[1].split("\nvocabularies:", 1)[0].splitlines()
    assert cols == [f"  {f.name}: {f.type}{'' if f.nullable else ' not null'}" for f in table.schema]
    assert "  id: int64 not null" in cols and "  ids: list<item: int32>" in cols
    assert "  label: 3 values (shoes, bags, hats)" in proc.stdout


def test_inspect_json_matches_the_manifest(published):
    table, ds = published
    proc = run("inspect", ds.version_path, "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["rows"] == table.num_rows and d["files"] == len(ds.files) and d["row_groups"] == ds.num_row_groups
    assert [(c["name"], c["type"], c["nullable"]) for c in d["columns"]] == [
        (f.name, str(f.type), f.nullable) for f in table.schema
    ]
    groups = [g.compressed_bytes for f in ds.files for g in f.row_groups]
    assert d["row_group_bytes"] == {"min": min(groups), "median": int(np.median(groups)), "max": max(groups)}
    assert d["vocabularies"] == {"label": {"size": 3, "head": ["shoes", "bags", "hats"]}}
    assert d["source"]["fingerprint"] == "0123456789abcdef"


def test_head_json_gives_the_first_rows_truncated(published):
    table, ds = published
    proc = run("head", ds.version_path, "-n", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    expected = table.slice(0, 3).to_pylist()
    assert [r["id"] for r in rows] == [e["id"] for e in expected]
    assert [r["title"] for r in rows] == [e["title"] for e in expected]
    # row 0 has a 30-item list: 8 shown, then a note of what was cut
    assert rows[0]["ids"][:8] == expected[0]["ids"][:8]
    assert rows[0]["ids"][8] == "... +22 more (30 items)"
    assert rows[1]["ids"] == expected[1]["ids"]
    assert rows[0]["image"].startswith(f"<{len(expected[0]['image'])} bytes: {expected[0]['image'][:16].hex()}")


def test_head_reads_across_files_and_selects_columns(published):
    table, ds = published
    n = ds.files[0].num_rows + 5  # needs more than the first file
    proc = run("head", ds.version_path, "-n", n, "--columns", "label,id", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert rows == table.select(["label", "id"]).slice(0, n).to_pylist()


def test_head_text_form(published):
    table, ds = published
    proc = run("head", ds.version_path, "-n", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "[0]" and "[1]" in lines
    assert f"  title: {json.dumps(table['title'][1].as_py(), ensure_ascii=False)}" in lines  # quoted, as JSON
    assert len(lines) == 2 * (1 + table.num_columns)


def test_verify_passes_on_a_good_cache(published):
    _, ds = published
    proc = run("verify", ds.version_path, "-v")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("ok  ") == len(ds.files)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_verify_names_the_bad_file_and_changes_nothing(cache, damage):
    victim = cache.files[len(cache.files) // 2]
    path = Path(cache.file_path(victim))
    good = [Path(cache.file_path(f)).read_bytes() for f in cache.files if f is not victim]
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 3] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) - 7]))
    else:
        path.unlink()
    proc = run("verify", Path(cache.version_path).parent)
    assert proc.returncode == 1
    assert f"BAD {path}" in proc.stdout
    assert proc.stdout.count("BAD ") == 1
    assert str(path) in one_error_line(proc)
    # verify only reads: the other files and the manifest are untouched and the version stays live
    assert [Path(cache.file_path(f)).read_bytes() for f in cache.files if f is not victim] == good
    assert loader.open_dataset(Path(cache.version_path).parent).version == cache.version


def test_missing_dataset_is_a_data_error(tmp_path):
    proc = run("inspect", tmp_path / "nowhere")
    assert proc.returncode == 1
    assert str(tmp_path / "nowhere") in one_error_line(proc)


def test_corrupt_manifest_is_named(cache):
    manifest = Path(cache.version_path) / "_manifest.json"
    manifest.write_text(manifest.read_text().replace('"format_version": 1', '"format_version": 99'))
    proc = run("inspect", cache.version_path)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert str(manifest) in line and "format_version 99" in line


def test_unknown_column_is_named(published):
    _, ds = published
    proc = run("head", ds.version_path, "--columns", "id,colour")
    assert proc.returncode == 1
    assert "'colour'" in one_error_line(proc)
    assert proc.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["inspect"],
        ["frobnicate", "x"],
        ["head", "x", "-n", "many"],
        ["head", "x", "-n", "-1"],
        ["head", "x", "-o", "novalue"],
    ],
)
def test_usage_errors_exit_2(args):
    proc = run(*args)
    assert proc.returncode == 2
    one_error_line(proc)


def test_sync_fills_the_local_cache(published, tmp_path):
    table, ds = published
    dest = tmp_path / "local"
    proc = run("sync", Path(ds.version_path).parent, dest, "--workers", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert f"{len(ds.files)} files" in proc.stdout
    for f in ds.files:
        copy = dest / "products" / ds.version / f.path
        assert copy.read_bytes() == Path(ds.file_path(f)).read_bytes()
    again = run("sync", ds.version_path, dest, "--no-progress")
    assert again.returncode == 0 and "fetched 0 files" in again.stdout


def test_sync_usage_errors(published, tmp_path):
    _, ds = published
    proc = run("sync", ds.version_path, tmp_path, "--workers", "0")
    assert proc.returncode == 2
    assert "--workers" in one_error_line(proc)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------- verify: beyond file CRCs


def edit_manifest(ds: loader.Dataset, edit) -> None:
    """Rewrite the version's manifest JSON with ``edit(doc)`` applied (the data files stay as they are)."""
    path = Path(ds.version_path) / "_manifest.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def bad_lines(proc: subprocess.CompletedProcess) -> dict[str, str]:
    """``BAD path: reasons`` lines of ``verify``, path -> reasons."""
    return dict(line[4:].split(": ", 1) for line in proc.stdout.splitlines() if line.startswith("BAD "))


def test_verify_json_and_summary_on_a_good_cache(published):
    table, ds = published
    proc = run("verify", Path(ds.version_path).parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"ok: {len(ds.files)} files, {ds.num_row_groups} row groups, {table.num_rows} rows, {ds.total_bytes} bytes "
        f"of products {ds.version} match the manifest"
    ]
    proc = run("verify", ds.version_path, "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["ok"] is True and d["bad"] == []
    assert (d["files"], d["row_groups"], d["rows"], d["bytes"]) == (
        len(ds.files), ds.num_row_groups, table.num_rows, ds.total_bytes)


def _shift_a_row(doc: dict) -> None:
    """Move one row from file 1's first row group to file 2's: every total still adds up, but both files'
    footers now disagree with the manifest."""
    a, b = doc["files"][1], doc["files"][2]
    a["row_groups"][0][0] -= 1
    a["num_rows"] -= 1
    b["row_groups"][0][0] += 1
    b["num_rows"] += 1


def _extra_group(doc: dict) -> None:
    doc["files"][1]["row_groups"].append([0, 0, 0])  # a row group the file does not have (0 rows)


def _empty_groups(doc: dict) -> None:
    f = doc["files"][1]
    f["row_groups"], f["num_rows"] = [], 0  # readers would silently skip this file's rows


def _wrong_bytes(doc: dict) -> None:
    doc["files"][1]["row_groups"][0][2] += 1000  # uncompressed bytes (the reader's memory estimate)


def _wrong_footer(doc: dict) -> None:
    doc["files"][1]["footer_checksum"] = "crc32:00000000"


def _wrong_chunk_sum(doc: dict) -> None:
    sums = doc["files"][1]["row_groups"][0][3]
    sums[2] = f"{int(sums[2], 16) ^ 1:08x}"  # the title column's chunk


@pytest.mark.parametrize(
    "edit, bad_files, manifest_bad, reason",
    [
        (_shift_a_row, [1, 2], False, "row groups [{rows}] disagree with the manifest"),
        (_extra_group, [1], True, "row groups [{rows}] disagree with the manifest"),
        (_empty_groups, [1], True, "row groups [{rows}] disagree with the manifest"),
        (_wrong_bytes, [1], False, "uncompressed bytes, the manifest says"),
        (_wrong_footer, [1], False, "footer fails its checksum"),
        (_wrong_chunk_sum, [1], False, "row group 0 column title fails its checksum"),
    ],
)
def test_verify_checks_the_manifest_row_groups_against_the_files(cache, edit, bad_files, manifest_bad, reason):
    before = {f.path: Path(cache.file_path(f)).read_bytes() for f in cache.files}
    edit_manifest(cache, edit)
    proc = run("verify", Path(cache.version_path).parent)
    assert proc.returncode == 1, proc.stdout
    assert "ok:" not in proc.stdout
    bad = bad_lines(proc)
    manifest = str(Path(cache.version_path) / "_manifest.json")
    assert (manifest in bad) == manifest_bad, proc.stdout
    for i in bad_files:
        where = cache.file_path(cache.files[i])
        assert reason.format(rows=cache.files[i].num_rows) in bad[where], proc.stdout
        assert where in one_error_line(proc)
    assert len(bad) == len(bad_files) + manifest_bad  # every bad file, and only those
    if manifest_bad:
        assert "its files add up to" in bad[manifest]
    # the JSON form says the same
    proc = run("verify", cache.version_path, "--json")
    assert proc.returncode == 1
    d = json.loads(proc.stdout)
    assert d["ok"] is False
    assert sorted(b["path"] for b in d["bad"]) == sorted(bad)
    assert {f.path: Path(cache.file_path(f)).read_bytes() for f in cache.files} == before


def test_verify_reports_a_manifest_rejected_at_open(cache):
    def bad_rows(doc):
        doc["files"][1]["num_rows"] += 1  # no longer the sum of its row groups: the parser refuses it

    edit_manifest(cache, bad_rows)
    proc = run("verify", Path(cache.version_path).parent)
    assert proc.returncode == 1
    assert "ok" not in proc.stdout
    assert "_manifest.json" in one_error_line(proc)


def _flip_in_chunk(ds: loader.Dataset, file_index: int, column: str) -> Path:
    """Flip one byte in the middle of ``column``'s chunk in row group 0 of a file (footer untouched)."""
    import pyarrow.parquet as pq

    from loader.manifest import chunk_range

    path = Path(ds.file_path(ds.files[file_index]))
    rg = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(rg.column(c) for c in range(rg.num_columns) if rg.column(c).path_in_schema == column)
    start, length = chunk_range(chunk)
    data = bytearray(path.read_bytes())
    data[start + length // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return path


def test_verify_names_the_column_chunk_of_a_flipped_byte(cache):
    victims = [_flip_in_chunk(cache, 2, "title"), _flip_in_chunk(cache, 5, "ids.list.element")]
    proc = run("verify", Path(cache.version_path).parent, "-v")
    assert proc.returncode == 1
    bad = bad_lines(proc)
    assert sorted(bad) == sorted(map(str, victims))  # every bad file, not just the first
    assert bad[str(victims[0])].startswith("checksum crc32:")
    assert "row group 0 column title fails its checksum" in bad[str(victims[0])]
    assert "row group 0 column ids.list.element fails its checksum" in bad[str(victims[1])]
    assert "row group 0 column title" not in bad[str(victims[1])]
    assert proc.stdout.count("ok  ") == len(cache.files) - 2
    line = one_error_line(proc)
    assert f"2 of {len(cache.files)} files" in line and all(str(v) in line for v in victims)


def test_verify_streams_in_bounded_reads(published, tmp_path, monkeypatch, capsys):
    """Chunk checksums are right when chunks straddle reads, and no read exceeds the read size."""
    import shutil

    import loader.cli
    import loader.manifest

    _, ds = published
    copy = tmp_path / "copy"
    shutil.copytree(ds.version_path, copy)
    monkeypatch.setattr(loader.manifest, "_CHUNK", 777)
    reads = []
    real = pa.NativeFile.read

    class Spy:
        def __init__(self, f):
            self._f = f

        def read(self, n=None):
            reads.append(n)
            return real(self._f, n) if n is not None else real(self._f)

        def __getattr__(self, name):
            return getattr(self._f, name)

    real_open = loader.Dataset._open_checked
    monkeypatch.setattr(loader.Dataset, "_open_checked",
                        lambda self, info: (lambda f, m, w: (Spy(f), m, w))(*real_open(self, info)))
    assert loader.cli.main(["verify", str(copy)]) == 0, capsys.readouterr()
    assert reads and max(r for r in reads if r is not None) <= 777 and None not in reads
    capsys.readouterr()
    victim = _flip_in_chunk(loader.open_dataset(str(copy)), 1, "title")
    assert loader.cli.main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"BAD {victim}: checksum" in out and "column title fails its checksum" in out


def test_summary_counts_rows_whatever_the_first_column(tmp_path):
    from loader.summary import summarize

    table = pa.table({"title": ["abcdefgh" * (i % 5) for i in range(1000)], "tags": [[1, 2]] * 1000,
                      "id": np.arange(1000)})
    loader.write_cache(table, tmp_path, "strfirst", row_group_bytes=5000)
    text = summarize(str(tmp_path / "strfirst"), batches=5, batch_size=100, pool="serial")
    assert "read         5 batches of 100 (500 rows)" in text and "(serial pool)" in text
    text = summarize(str(tmp_path / "strfirst"), batches=2, batch_size=100, pool="process")
    assert "(thread pool: pool='process' runs only transforms)" in text  # no transform: no process started
    proc = subprocess.run([sys.executable, "-m", "loader.summary", str(tmp_path / "strfirst"), "--batches", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--batches and --batch-size must be at least 1" in proc.stderr


def test_head_with_an_empty_column_list_is_a_usage_error(published):
    _, ds = published
    proc = run("head", ds.version_path, "--columns", "")
    assert proc.returncode == 2 and "--columns names no column" in one_error_line(proc)


def _no_constant(name: str):
    raise ValueError(f"not strict JSON: {name}")


def test_head_and_inspect_json_are_strict_for_nan_and_infinities(tmp_path):
    nan, inf = float("nan"), float("inf")
    table = pa.table({
        "id": [0, 1, 2, 3],
        "score": pa.array([nan, inf, -inf, None], pa.float64()),
        "f32": pa.array([nan, 1.5, inf, 2.5], pa.float32()),
        "vec": pa.array([[nan, 1.0], [-inf], [], None], pa.list_(pa.float64())),
        "st": pa.array([{"x": nan}, {"x": 0.5}, {"x": inf}, {"x": None}], pa.struct([("x", pa.float64())])),
    })
    ds = loader.write_cache(table, tmp_path, "nan", source={"kind": "test", "scale": inf, "bad": [nan]})
    proc = run("head", ds.version_path, "-n", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line, parse_constant=_no_constant) for line in proc.stdout.splitlines()]
    assert [r["score"] for r in rows] == ["NaN", "Infinity", "-Infinity", None]
    assert [r["f32"] for r in rows] == ["NaN", 1.5, "Infinity", 2.5]
    assert [r["vec"] for r in rows] == [["NaN", 1.0], ["-Infinity"], [], None]
    assert [r["st"] for r in rows] == [{"x": "NaN"}, {"x": 0.5}, {"x": "Infinity"}, {"x": None}]
    text = run("head", ds.version_path, "-n", "2")
    assert text.returncode == 0 and "  score: NaN" in text.stdout and "  vec: [NaN, 1.0]" in text.stdout
    proc = run("inspect", ds.version_path, "--json")
    assert proc.returncode == 0, proc.stderr
    source = json.loads(proc.stdout, parse_constant=_no_constant)["source"]
    assert source["scale"] == "Infinity" and source["bad"] == ["NaN"]
    assert '"NaN", "Infinity", "-Infinity"' in " ".join(run("head", "--help").stdout.split())


def _register_fake_schemes():
    """``lardermissing://`` (its module is not installed) and ``larderdown://`` (its host refuses connections)."""
    fsspec = pytest.importorskip("fsspec")

    class Unreachable(fsspec.AbstractFileSystem):
        protocol = "larderdown"

        def __init__(self, *args, **options):
            raise ConnectionRefusedError(f"refused with token={options.get('token')} key {options.get('key')}")

    fsspec.register_implementation("lardermissing", "larder_no_such_module.FileSystem", clobber=True,
                                   errtxt="Install larder-no-such to access lardermissing://")
    fsspec.register_implementation("larderdown", Unreachable, clobber=True)


@pytest.mark.parametrize(("url", "options", "error", "words"), [
    ("foo://x/y", {}, loader.ConfigError, ["foo://", "foo://x/y", "Protocol not known"]),
    ("foo://user:pw9876@h/y?token=tk9876", {}, loader.ConfigError, ["foo://", "foo://user:***@h/y?token=***"]),
    ("lardermissing://bucket/x", {}, loader.ConfigError, ["lardermissing://", "Install larder-no-such"]),
    ("foo://h/y?access_token=tk9876&api_key=ak9876&X-Amz-Credential=cr9876&n=1", {}, loader.ConfigError,
     ["foo://h/y?access_token=***&api_key=***&X-Amz-Credential=***&n=1"]),
    ("larderdown://h/x", {"token": "tk9876", "key": "pw9876"}, loader.RemoteError,
     ["larderdown://", "larderdown://h/x", "ConnectionRefusedError", "token=***"]),
])
def test_url_without_a_filesystem_is_a_larder_error_naming_it(url, options, error, words, capsys):
    """open_dataset raises a LarderError that is also the matching builtin, naming the URL and scheme without
    secrets; the CLI prints one ``larder: error:`` line (exit 1)."""
    from loader.cli import main

    _register_fake_schemes()
    with pytest.raises(error) as info:
        loader.open_dataset(url, **options)
    assert isinstance(info.value, ValueError if error is loader.ConfigError else OSError)
    message = str(info.value)
    assert all(w in message for w in words), message
    assert "9876" not in message and "9876" not in str(info.value.__cause__)
    argv = ["inspect", url, *[a for k, v in options.items() for a in ("-o", f"{k}={v}")]]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"larder: error: {message}"]


def test_a_scheme_pyarrow_hands_to_a_missing_fsspec_package_is_a_config_error():
    """pyarrow itself routes ``hf://`` to fsspec, whose missing package raises ImportError inside pyarrow."""
    pytest.importorskip("fsspec")
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("huggingface_hub is installed: hf:// has a filesystem")
    with pytest.raises(loader.ConfigError, match=r"no filesystem for hf:// URLs .*huggingface_hub"):
        loader.open_dataset("hf://datasets/org/name")


@pytest.mark.parametrize("url", ["foo://x/y", "nosuchscheme://bucket/dir/data"])
def test_cli_url_without_a_filesystem_prints_one_line(url):
    proc = run("inspect", url)
    assert proc.returncode == 1, proc.stderr
    assert url in one_error_line(proc) and proc.stderr.count("\n") == 1
