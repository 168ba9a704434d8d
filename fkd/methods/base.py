"""What a distillation method tells the generic trainer (`fkd.training.trainer`).

A method is a set of named stages. Each `Stage` says which model it trains on which head, with
which optimizer config, and which other stages it distils from (`teachers`, by stage name). The
trainer runs every stage the same way: it loads the stage's teachers as `Frozen` models (BatchNorm
folded into the convolutions, no gradient), builds the student with `Method.model_kwargs`, and
minimises `Method.loss_fn(stage, config)(outputs, features, batch, teacher_outputs)`.

One rule for every method: `config.<stage>_ckpt`, when set, is used in place of training that
stage (`stage_dir`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax

from fkd import heads
from fkd.errors import FkdError

# (outputs, features, batch, teacher outputs {stage: (outputs, features)}) -> (loss, terms)
LossFn = Callable[
  [
    jax.Array,
    Mapping[str, jax.Array],
    Mapping[str, jax.Array],
    Mapping[str, tuple[jax.Array, Mapping[str, jax.Array]]],
  ],
  tuple[jax.Array, dict[str, jax.Array]],
]


@dataclasses.dataclass(frozen=True)
class Stage:
  """One trained model of a method.

  Attributes:
    name: the stage name, also its directory in the workdir.
    role: 'teacher' or 'student': which model config it uses (`config.<role>`), and the order in
      which `fkd.predict` prefers finished stages (students first).
    model_config: ConfigDict with `name`, `kwargs` and optional `init_from`.
    train_config: `config_lib.optimizer_config()`.
    head: how the model's output maps to landmarks and targets (stored in the checkpoint).
    teachers: the stages whose frozen models feed this stage's loss.
    loss: a short name of the loss, for logs and the checkpoint meta.
  """

  name: str
  role: str
  model_config: Any
  train_config: Any
  head: heads.Head
  teachers: tuple[str, ...] = ()
  loss: str = ''


@dataclasses.dataclass(frozen=True)
class Frozen:
  """A finished stage as another stage's teacher: module, head and checkpoint meta (variables
  travel separately, as a replicated pytree argument of the jitted step). `fkd.inference` builds
  them, folded into inference programs where the model allows (`module.folded`)."""

  module: nn.Module
  head: heads.Head
  meta: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of a method's ablation table (`fkd.ablation`).

  Attributes:
    stage: the stage it trains (a name of the method's `config.stages` vocabulary).
    what: one line for the table.
    overrides: dotted config keys -> values, applied on top of the user's config.
    teacher: a teacher row: trained once per seed into `seed_<s>/teachers/`, read by the others.
    extra: run only when `--rows` names it (rows beyond the default table, kept out of the default
      run's time budget).
  """

  stage: str
  what: str
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  teacher: bool = False
  extra: bool = False


class Method:
  """Base class of the methods in `fkd.methods.REGISTRY`; subclasses fill in the stages.

  Everything the rest of fkd asks about a method goes through this class, so that no module
  outside `fkd/methods/<name>/` names a method, its stages or its published table.
  """

  name: str = ''
  stages: tuple[str, ...] = ()  # training and report order
  preferred: tuple[str, ...] = ()  # which finished stage `fkd.predict` serves first
  # The ablation row every other row is compared with (`ablation_rows`).
  reference_row: str = ''
  # Top-level config blocks this method owns that another method's config lacks: an ablation row
  # that switches a config to this method may add them (`Row.overrides`).
  new_blocks: tuple[str, ...] = ()
  # The synthetic pre-stage (`fkd.training.prestage`): pre-stage stage -> (the model config key it
  # pretrains, this method's stages that start from it). Empty: the method has no pre-stage.
  pretrains: Mapping[str, tuple[str, tuple[str, ...]]] = {}
  # Its key in fkd/evaluation/published.json (None: no published numbers to show beside ours).
  published: str | None = None

  def stage(self, name: str, config: Any) -> Stage:
    raise NotImplementedError

  def seed_offset(self, name: str) -> int:
    """Added to `config.seed` for a stage (its position in `stages` unless a method says)."""
    return self.stages.index(name)

  def validate(self, config: Any) -> None:
    """Method-specific config checks, before anything is written (raise FkdError)."""

  def model_kwargs(
    self, stage: Stage, config: Any, teachers: Mapping[str, Frozen]
  ) -> dict[str, Any]:
    """Extra model fields a stage needs beyond its config (e.g. adapters to a teacher)."""
    return {}

  def train_apply_kwargs(self, stage: Stage, config: Any) -> dict[str, Any]:
    """Keyword arguments of the student's `apply` in the train step."""
    return {}

  def loss_fn(self, stage: Stage, config: Any) -> LossFn:
    raise NotImplementedError

  def meta(self, stage: Stage, config: Any) -> dict[str, Any]:
    """Method-specific entries of a stage's checkpoint meta."""
    return {}

  def soft_targets(self, config: Any) -> float | None:
    """The ASM variance fraction of the soft landmarks its stages train on (method.md §2.3),
    which the input pipeline then computes for every training batch; None: no soft targets."""
    return None

  def published_key(self, config: Any) -> str | None:
    """The fkd/evaluation/published.json table of a run of this config (`published`)."""
    return self.published

  def ablation_rows(self, config: Any) -> dict[str, Row]:
    """The rows of `fkd.ablation` for this config, in table order (its `reference_row` among
    them)."""
    raise FkdError(f'fkd.ablation has no rows for config.method={self.name!r}')

  def guest_rows(self, host: Method, config: Any) -> dict[str, Row]:
    """Rows this method adds to another method's ablation (`host`, on the host's config), e.g. a
    baseline that trains from the host's teachers; they go before the host's reference row."""
    return {}


def stage_dir(config: Any, workdir: str, name: str) -> str:
  """Where stage `name` lives: `config.<name>_ckpt` when set, else `<workdir>/<name>`."""
  return config.get(f'{name}_ckpt') or os.path.join(workdir, name)


def plain(tree: Any) -> Any:
  """ConfigDicts / tuples -> JSON-ready dicts / lists (checkpoint metadata)."""
  if hasattr(tree, 'items'):
    return {k: plain(v) for k, v in tree.items()}
  if isinstance(tree, list | tuple):
    return [plain(v) for v in tree]
  return tree
