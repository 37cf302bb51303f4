"""The benchmark harness behind `python -m fusedopt.bench`.

Cases (`cases.py`: suites model, sweep, many-small) and implementations (`impls.py`: torch's for-loop, foreach and
fused ways and every fusedopt backend on the device, for SGD, Adam and AdamW, each as the bare update and as the
clipped, checked step) are tables. `runner.py` checks each implementation's first step against torch, then times
them in interleaved rounds with a bandwidth probe measured in the same rounds (`roofline.py`, `timing.py`);
`memory.py` and `gpu.py` measure each step's peak extra memory, kernel launches and host syncs; `report.py` turns
samples into rows, tables, the verdict, JSON and comparisons; `plot.py` draws the PNGs.
"""
