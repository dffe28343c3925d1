"""The job conf: YAML -> frozen dataclasses, dotted overrides, errors that name the key."""

from __future__ import annotations

import dataclasses

import pytest

from etl.config import JobConfig, format_size, from_dict, load, parse_size
from loader.errors import ConfigError, LarderError

MINIMAL = {"name": "shop", "source": {"table": "demo.shopping_products"}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("128MiB", 128 << 20), ("8 MiB", 8 << 20), ("64k", 64 << 10), ("1.5GiB", 3 << 29), ("8MB", 8_000_000),
     (4096, 4096), ("1g", 1 << 30)],
)  # fmt: skip
def test_sizes_parse(text, expected):
    assert parse_size(text, "output.block_size") == expected


@pytest.mark.parametrize("bad", ["12 parsecs", "-1MiB", "0", True, "MiB", ""])
def test_bad_sizes_name_the_key(bad):
    with pytest.raises(ConfigError, match="output.block_size"):
        from_dict({**MINIMAL, "output": {"block_size": bad}})


def test_format_size_round_trips():
    for n in (128 << 20, 8 << 20, 64 << 10, 3 << 30):
        assert parse_size(format_size(n), "k") == n


def test_ten_line_conf_gets_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: shop\nsource:\n  table: demo.shopping_products\n")
    cfg = load(path)
    assert isinstance(cfg, JobConfig)
    assert cfg.output.fill == 0.95 and cfg.output.keep_versions == 3 and cfg.output.shuffle is True
    assert cfg.output.block_size is None and cfg.output.compression == "zstd" and cfg.spark.master == "local[*]"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "other"  # type: ignore[misc]


def test_overrides_are_yaml_typed():
    cfg = from_dict(
        MINIMAL,
        [
            "output.block_size=8MiB", "output.shuffle=false", "source.columns=[a, b]", "source.sample=0.5",
            "transforms=[{kind: index, column: a}]", "transforms.0.output=a_id", "spark.conf.spark.executor.memory=4g",
        ],
    )  # fmt: skip
    assert cfg.output.block_size == 8 << 20
    assert cfg.output.shuffle is False
    assert cfg.source.columns == ("a", "b")
    assert cfg.source.sample == 0.5
    assert cfg.transforms[0].output == "a_id"
    assert cfg.spark.conf == {"spark.executor.memory": "4g"}


@pytest.mark.parametrize(
    ("raw", "overrides", "message"),
    [
        (MINIMAL, ["output.blok_size=8MiB"], r"unknown key 'output.blok_size'; did you mean 'output.block_size'"),
        ({**MINIMAL, "outptu": {}}, [], r"unknown key 'outptu'; did you mean 'output'"),
        ({**MINIMAL, "source": {"tabel": "a.b"}}, [], r"did you mean 'source.table'"),
        ({"source": {"table": "a.b"}}, [], r"missing key 'name'"),
        (MINIMAL, ["output.fill=2"], r"output.fill"),
        (MINIMAL, ["output.keep_versions=1"], r"output.keep_versions"),
        (MINIMAL, ["output.shuffle=maybe"], r"output.shuffle: expected true or false"),
        (MINIMAL, ["output.compression=rar"], r"output.compression"),
        (MINIMAL, ["source.path=/x"], r"exactly one of 'source.table'"),
        ({"name": "shop", "source": {}}, [], r"exactly one of 'source.table'"),
        (MINIMAL, ["source.columns=[a, a]"], r"source.columns: 'a' is listed twice"),
        (MINIMAL, ["source.sample=0"], r"source.sample"),
        (MINIMAL, ["transforms=[{kind: indx, column: a}]"], r"transforms.0.kind: 'indx'.*did you mean 'index'"),
        (MINIMAL, ["transforms=[{kind: index}]"], r"transforms.0.column"),
        (MINIMAL, ["transforms=[{kind: python, function: nocolon}]"], r"transforms.0.function"),
        (MINIMAL, ["name=../escape"], r"name: '../escape'"),
        (MINIMAL, ["transforms.3.column=x"], r"transforms: expected a list"),
        ({**MINIMAL, "transforms": []}, ["transforms.3.column=x"], r"--set transforms.3.column"),
        (MINIMAL, ["nokeyvalue"], r"expected key=value"),
    ],
)
def test_bad_conf_names_the_key(raw, overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        from_dict(raw, overrides)
    assert isinstance(info.value, LarderError) and isinstance(info.value, ValueError)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad)


def test_shipped_confs_validate():
    import os

    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    demo = load(os.path.join(here, "conf", "demo.yaml"))
    cluster = load(os.path.join(here, "conf", "cluster.example.yaml"))
    assert demo.source.table and demo.transforms[0].output == "label"
    assert cluster.output.root.startswith("hdfs://") and cluster.spark.metastore_dir is None
    assert cluster.source.columns == demo.source.columns[:6]


def test_partition_values_and_string_keys_keep_their_text(tmp_path):
    cfg = from_dict(MINIMAL, ["source.partitions.hour=07", "source.partitions.country=NO",
                              "source.where=title LIKE '%: %'", "source.partitions.v=[1.10, 08]"])  # fmt: skip
    assert cfg.source.partitions == {"hour": "07", "country": "NO", "v": ("1.10", "08")}
    assert cfg.source.where == "title LIKE '%: %'"
    path = tmp_path / "c.yaml"
    path.write_text("name: shop\nsource:\n  table: demo.shopping_products\n"
                    "  partitions: {hour: 07, country: NO, dt: 2026-11-23, l: [1.10, '08']}\n")
    assert load(path).source.partitions == {"hour": "07", "country": "NO", "dt": "2026-11-23", "l": ("1.10", "08")}
    with pytest.raises(ConfigError, match=r"source.partitions.hour: expected a string, got 7 .*quote"):
        from_dict({"name": "shop", "source": {"table": "a.b", "partitions": {"hour": 7}}})


@pytest.mark.parametrize(
    ("output", "message"),
    [({"seed": -1}, r"output.seed: must be a non-negative"),
     ({"page_size": "1MiB", "block_size": "512KiB"},
      r"output.page_size: 1MiB is larger than output.block_size 512KiB")],
)  # fmt: skip
def test_seed_and_page_size_are_checked_up_front(output, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({**MINIMAL, "output": output})


def test_every_string_key_keeps_its_text_by_its_type_not_its_path(tmp_path):
    """Not only partition values: any key typed ``str`` (here columns, transform columns, names, paths)
    keeps the YAML scalar's text, in ``--set`` and in the conf file; ``Any`` values stay YAML-typed."""
    cfg = from_dict(MINIMAL, ["source.columns=[07, NO, 1.10]", "transforms=[{kind: index, column: NO, output: 010}]",
                              "spark.conf.spark.sql.shuffle.partitions=08", "transforms.0.vocabulary=~"])
    assert cfg.source.columns == ("07", "NO", "1.10")
    assert (cfg.transforms[0].column, cfg.transforms[0].output, cfg.transforms[0].vocabulary) == ("NO", "010", None)
    path = tmp_path / "c.yaml"
    path.write_text(
        "name: 007\n"
        "source:\n  table: demo.shopping_products\n  columns: [07, on, 2026-11-23]\n  where: 2026-11-23\n"
        "transforms:\n  - {kind: index, column: NO, output: 1.10}\n"
        "output:\n  root: 2024\n"
        "spark:\n  app_name: 1.10\n  master: ~\n  conf: {spark.sql.shuffle.partitions: 8, x.enabled: yes}\n"
    )
    cfg = load(path)
    assert cfg.name == "007" and cfg.output.root == "2024" and cfg.spark.app_name == "1.10"
    assert cfg.source.columns == ("07", "on", "2026-11-23") and cfg.source.where == "2026-11-23"
    assert (cfg.transforms[0].column, cfg.transforms[0].output) == ("NO", "1.10")
    assert cfg.spark.master is None
    assert cfg.spark.conf == {"spark.sql.shuffle.partitions": 8, "x.enabled": True}


def test_a_new_string_field_is_read_by_its_type():
    """The rule comes from the type hints alone: a dataclass nobody listed gets the same treatment."""
    from etl.overrides import conf_from_yaml, value_from_text

    @dataclasses.dataclass(frozen=True)
    class Extra:
        label: str
        tags: dict[str, str]
        count: int = 0
        rate: float = 0.0
        flag: bool = False

    data = conf_from_yaml("label: 07\ntags: {a: NO, 08: 1.10}\ncount: 010\nrate: 1e-3\nflag: on\n", Extra)
    assert data == {"label": "07", "tags": {"a": "NO", "08": "1.10"}, "count": 10, "rate": 0.001, "flag": True}
    assert value_from_text("title LIKE '%: %'", str) == "title LIKE '%: %'"
    assert value_from_text("~", str | None) is None and value_from_text("~", str) == "~"
    assert value_from_text("{a: 07}", dict[str, str]) == {"a": "07"}
    assert value_from_text("010", int) == 10 and value_from_text("0x10", int) == 16


def test_integer_keys_read_decimal_digits_as_decimal(tmp_path):
    """YAML 1.1 reads ``010`` as octal 8; an int key means ten."""
    cfg = from_dict(MINIMAL, ["output.seed=010", "source.seed=1_000", "output.keep_versions=04"])
    assert (cfg.output.seed, cfg.source.seed, cfg.output.keep_versions) == (10, 1000, 4)
    path = tmp_path / "c.yaml"
    path.write_text("name: shop\nsource: {table: a.b, seed: 010, sample: 5e-1}\noutput: {keep_versions: 010}\n")
    cfg = load(path)
    assert (cfg.source.seed, cfg.source.sample, cfg.output.keep_versions) == (10, 0.5, 10)


@pytest.mark.parametrize(
    ("overrides", "conf", "message"),
    [
        (["output.keep_versions=three"], "", r"^output.keep_versions: expected an integer, got 'three'$"),
        (["output.keep_versions=2.5"], "", r"^output.keep_versions: expected an integer, got 2.5$"),
        (["source.seed=true"], "", r"^source.seed: expected an integer, got True$"),
        (["output.seed=[1]"], "", r"^output.seed: expected an integer, got \[1\]$"),
        ([], "output: {keep_versions: '3'}\n", r"^output.keep_versions: expected an integer, got '3'$"),
        ([], "output: {keep_versions: 0x}\n", r"^output.keep_versions: expected an integer, got '0x'$"),
        ([], "output: {fill: high}\n", r"^output.fill: expected a number, got 'high'$"),
    ],
)
def test_a_wrongly_typed_number_names_the_key(tmp_path, overrides, conf, message):
    path = tmp_path / "c.yaml"
    path.write_text("name: shop\nsource: {table: a.b}\n" + conf)
    with pytest.raises(ConfigError, match=message):
        load(path, overrides)


HEAD = "name: shop\nsource: {table: a.b}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: a\nname: b\nsource: {table: a.b}\n", r": key 'name' is given twice \(lines 1 and 2\)"),
        (HEAD + "output:\n  root: /a\noutput:\n  root: /b\n", r": key 'output' is given twice \(lines 3 and 5\)"),
        (
            HEAD + "output:\n  root: /a\n  fill: 0.9\n  root: /b\n",
            r": key 'output.root' is given twice \(lines 4 and 6\)",
        ),
        (
            HEAD + "transforms:\n  - {kind: index, column: a,\n     column: b}\n",
            r": key 'transforms.0.column' is given twice \(lines 4 and 5\)",
        ),
        (
            HEAD + "transforms:\n  - kind: python\n    function: m:f\n    args: {n: 1, n: 2}\n",
            r": key 'transforms.0.args.n' is given twice \(lines 6 and 6\)",
        ),
        (
            HEAD + "spark:\n  conf:\n    spark.x: 1\n    spark.x: 2\n",
            r": key 'spark.conf.spark.x' is given twice \(lines 5 and 6\)",
        ),
    ],
)
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^conf file {path}{message}; YAML would keep the last one silently$"):
        load(path)


def test_a_merge_may_be_overridden_and_set_refuses_a_key_given_twice(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "defaults: &d {root: /a, fill: 0.9}\noutput:\n  <<: *d\n  root: /b\n")
    from etl.overrides import conf_from_yaml

    assert conf_from_yaml(path.read_text())["output"] == {"root": "/b", "fill": 0.9}
    path.write_text(HEAD)
    with pytest.raises(ConfigError, match=r"^--set spark.conf: key 'a' is given twice; YAML would keep the last"):
        load(path, ["spark.conf={a: 1, a: 2}"])


def test_unreadable_conf_files_are_conf_errors_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match=rf"^conf file {tmp_path} is a directory, not a YAML file$"):
        load(tmp_path)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("name: shop\nsource: {table: a.b}\n# café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"^conf file {latin1} is not UTF-8 text: byte 0xe9 on line 3 "):
        load(latin1)
    tabs = tmp_path / "tabs.yaml"
    tabs.write_text("name: a\nsource:\n\tpath: /x\n")
    with pytest.raises(ConfigError) as info:
        load(tabs)
    assert str(info.value) == (
        f"conf file {tabs} is not valid YAML: line 3, column 1: found character '\\t' that cannot start any token "
        "(while scanning for the next token)"
    )  # one line


@pytest.mark.parametrize("case", ["directory", "latin1", "duplicate"])
def test_conf_file_errors_exit_2_with_one_line(tmp_path, capsys, case):
    from jobs.materialize import main

    path = {"directory": tmp_path, "latin1": tmp_path / "c.yaml", "duplicate": tmp_path / "c.yaml"}[case]
    if case == "latin1":
        path.write_bytes("name: caf\xe9\nsource: {path: /x}\n".encode("latin-1"))
    elif case == "duplicate":
        path.write_text("name: a\nname: b\nsource: {path: /x}\n")
    assert main(["--conf", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"larder: error: conf file {path}") and err.count("\n") == 1
