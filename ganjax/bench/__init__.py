"""Cost and scaling measurement: `ganjax bench`.

flops.py     analytic FLOPs per image from the model's layer shapes (and the train loop's per-image cost)
hlo_comm.py  bytes of collective communication parsed from compiled HLO text
peaks.py     peak FLOP/s for MFU: the accelerator table (ganjax/hardware.py) and a CPU matmul probe
scaling.py   step time and weak-scaling efficiency at device counts the user does not have
run.py       timing of the train step's jitted phase functions; one bench record per config
sweep.py     the mesh x size x batch sweep, CSV and plots
"""
