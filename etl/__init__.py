"""larder's prepare side: the Spark job that materializes a Hive table or Parquet/ORC path into a cache.

Modules: :mod:`etl.config` (YAML conf), :mod:`etl.session` (SparkSession), :mod:`etl.source` (extract and
validate), :mod:`etl.transforms` (static transforms), :mod:`etl.sizing` (row groups under the block size,
decorrelation), :mod:`etl.fingerprint` (source snapshot), :mod:`etl.job` (the run), :mod:`etl.demo`
(the demo table). ``etl`` imports ``loader``; ``loader`` never imports ``etl`` or Spark.
"""
