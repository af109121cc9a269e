"""The share of the decoder's matrix weights in INT8, per architecture family: the README's table.

Each family's tiny random model (tests/support/tiny_models.py: two layers, hidden 64, built from transformers'
own config and saved as a model directory) is loaded as a user's would be, quantized with `vectorwise`
and exported in the bitsandbytes layout; one line per family:

    PYTHONPATH=. .venv/bin/python docs/architecture_shares.py

family | share in the model | share in the export | what stayed in floating point, and why
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from int8wb.engine.process.session import Session
from int8wb.engine.task import Task
from tests.support.tiny_models import ARCHITECTURES, save_tiny


def shares(family: str, folder: Path) -> str:
    session = Session()
    session.load_model({"model": str(save_tiny(folder / family, family)), "device": "cpu"}, Task())
    model = session.quantize({"methods": ["vectorwise"]}, Task())["models"][0]
    export = session.export({"method": "vectorwise", "out": str(folder / f"{family}-int8")}, Task())
    kept = "; ".join(f"{g['modules']}: {g['why']}" for g in export["kept_float"])
    return f"{family} | {model['int8_share']:.1%} | {export['int8_share']:.1%} | {kept}"


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        for family in (*ARCHITECTURES, "gpt_oss"):
            print(shares(family, Path(folder)), flush=True)


if __name__ == "__main__":
    main()
