"""Scaling studies: read a set of training runs (a sweep's directory, or any workdirs), and report FID against
training compute, wall time and kimg, the compute-optimal frontier across runs, and a fitted law
FID(C) = a * C^-b + c per group of runs (`ganjax report`).

runs.py reads the runs (config.json, hardware.json, metrics.jsonl, a sweep's sweep.json), law.py holds the
frontier and the fit, figures.py the plots, tables and the HTML page.
"""
