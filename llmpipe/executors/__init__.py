"""Executors run a step's tasks somewhere: in this process, a local process pool, Slurm, torchrun.

They know tasks, never what a stage does; configuration reaches workers as `_run.json` on disk.
"""
