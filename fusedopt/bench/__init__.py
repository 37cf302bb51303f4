"""The benchmark harness behind `python -m fusedopt.bench`.

Cases (`cases.py`) and implementations (`impls.py`) are tables; `runner.py` times them in interleaved rounds
against a triad roofline measured in the same run (`roofline.py`, `timing.py`), `memory.py` finds each step's
peak extra allocation, and `report.py` turns the samples into rows, a table, a verdict and JSON.
"""
