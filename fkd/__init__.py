"""fkd: facial-landmark knowledge distillation in JAX/Flax.

Importing fkd changes no process settings: entry points (`python -m fkd.*`, benchmarks,
notebooks) call `fkd.cli.start()` for the CPU tuning of `fkd.infra.runtime` (and the multi-host
start-up of `fkd.infra.distributed`) before JAX initialises.
"""
