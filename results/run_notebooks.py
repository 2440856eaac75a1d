#!/usr/bin/env python3
"""Executes the results notebooks headless on a folder of traces (the test suite does this).

    python3 results/run_notebooks.py TRACE_DIR FIGURE_DIR
"""
import os
import sys

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = ["timeline.ipynb", "kv_sync.ipynb", "scaling.ipynb", "decode_modes.ipynb"]


def main():
    traces, figures = (os.path.abspath(p) for p in sys.argv[1:3])
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ.update(QWEN3_TRACES=traces, QWEN3_FIGURES=figures, MPLBACKEND="Agg")
    if os.environ.get("QWEN3_TRACE"):
        os.environ["QWEN3_TRACE"] = os.path.abspath(os.environ["QWEN3_TRACE"])
    for name in NOTEBOOKS:
        book = nbformat.read(os.path.join(here, name), as_version=4)
        NotebookClient(book, timeout=300, kernel_name="python3", resources={"metadata": {"path": here}}).execute()
        print(f"{name}: ok")


if __name__ == "__main__":
    main()
