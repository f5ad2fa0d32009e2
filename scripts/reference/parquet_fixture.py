#!/usr/bin/env python3
"""Writes prompts/tests/data/verl-sample.parquet: two rows in the verl layout (nested columns:
`prompt` a list of {role, content}, `reward_model` {style, ground_truth}, `extra_info` {index}),
snappy-compressed as Hugging Face datasets are, for the Parquet import test.

    .venv-ref/bin/pip install pyarrow   # once, in the venv scripts/reference/venv makes
    .venv-ref/bin/python scripts/reference/parquet_fixture.py
"""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
rows = [
    {
        "data_source": "codegen__primeintellect",
        "prompt": [{"role": "user", "content": "Print the sum of two integers read from one line."}],
        "ability": "codegen",
        "reward_model": {"style": "rule", "ground_truth": '{"inputs": ["1 2\\n", "5 7\\n"], "outputs": ["3\\n", "12\\n"]}'},
        "extra_info": {"index": 0},
    },
    {
        "data_source": "codegen__leetcode2k",
        "prompt": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Write is_even(n)."}],
        "ability": "codegen",
        "reward_model": {"style": "rule", "ground_truth": '{"functional": "assert is_even(2) == True\\nassert is_even(3) == False"}'},
        "extra_info": {"index": 1},
    },
]
out = ROOT / "prompts" / "tests" / "data" / "verl-sample.parquet"
out.parent.mkdir(parents=True, exist_ok=True)
pq.write_table(pa.Table.from_pylist(rows), out, compression="snappy")
print(f"wrote {out}")
