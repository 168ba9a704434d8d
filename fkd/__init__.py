"""fkd: facial-landmark knowledge distillation in JAX/Flax.

Importing fkd changes no process settings: entry points (`python -m fkd.*`, benchmarks,
notebooks) call `fkd.cli.start()` for the CPU tuning of `fkd.runtime` (and the multi-host
start-up of `fkd.distributed`) before JAX initialises.
"""
