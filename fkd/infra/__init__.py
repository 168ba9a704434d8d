"""Run infrastructure: process set-up (runtime, distributed), device mesh and sharding, the workdir
(records, lock, config checks), checkpoints and metric writers."""
