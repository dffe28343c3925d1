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
