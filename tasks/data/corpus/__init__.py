"""Helpers shared by the corpus stages (ingest, dedup, tokenizer, pack).

``readers`` turns files of many formats into raw documents, ``normalize`` cleans and
filters text, ``shards`` reads and writes the Parquet document shards that stages exchange,
and ``minhash`` holds the vectorized MinHash-LSH used by dedup.
"""
