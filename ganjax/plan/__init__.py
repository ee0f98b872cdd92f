"""`ganjax plan`: the training programs compiled for a real TPU slice on this host (libtpu's ahead-of-time
path), read for what a run on that slice needs and costs before anyone rents it.

tpu.py       libtpu's environment on a CPU host and the abstract devices of a slice
compile.py   the loop's programs for a slice, compiled, with the compiler's memory, cost and communication
roofline.py  HBM fit, roofline step time (compute / HBM / interconnect) and the cost of a whole run
report.py    the plan record as markdown and JSON; the --max_batch search; --sweep CSV, markdown and plots
"""
