"""Cost and scaling measurement: `ganjax bench` (the analytic FLOPs: ganjax/models/flops.py, the layer walk,
and ganjax/train/cost.py, per phase of the recipe).

hlo_comm.py  bytes of collective communication parsed from compiled HLO text
peaks.py     peak FLOP/s for MFU: the accelerator table (ganjax/hardware.py) and a CPU matmul probe
scaling.py   step time and weak-scaling efficiency at device counts the user does not have
run.py       timing of the train step's jitted phase functions; one bench record per config
sweep.py     the mesh x size x batch sweep, CSV and plots
"""
