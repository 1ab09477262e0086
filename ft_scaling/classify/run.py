"""One few-shot classification run: (method, examples per class, seed) -> one results row.

    subset   = per-class nested subset of the task's train split (subsets.py)
    vanilla  head on the last hidden state, cross-entropy           (head.py; full or LoRA)
    pbft     pattern + verbalizers scored by the LM head, CE         (scoring.py; full or LoRA)
    icl      k demonstrations from the subset + query, no training   (scoring.py, demos)
    distill  teacher = initial model with k demos, student = no demos, KL on unlabeled inputs
    eval     in-domain and OOD sets: accuracy and Matthews correlation (metrics.py)

Every run starts from a base checkpoint (the study's pretrained or adaptive LM) through
`checkpoints.initial_params`: base leaves restored, method leaves (LoRA) fresh, a mismatch an
error naming the path. The model is `method.wrap(Decoder(config))`, its mask the method's own;
the classification head, when there is one, always trains.
"""

import dataclasses
import os
import time

import jax
import numpy as np

import gin
from ft_scaling.classify import (
    distill,
    encoding,
    head,
    metrics,
    patterns,
    scoring,
    subsets,
    tasks,
    train,
)
from ft_scaling.data import vocab
from ft_scaling.eval import few_shot
from ft_scaling.methods import base, registry
from ft_scaling.models import configs, decoder
from ft_scaling.models.hf import loading as hf_loading
from ft_scaling.models.hf import run_setup as hf_run_setup
from ft_scaling.train import checkpoints, optimizers, partitioning, trainer

KINDS = ("vanilla", "pbft", "icl", "distill")
BASES = ("pretrained", "adaptive")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One method of a classification study (gin: `<scope>/MethodSpec.<field> = ...`).

    Attributes:
      name: row label, e.g. 'pbft_lora'.
      kind: one of KINDS.
      tuning: finetuning method of the decoder (methods.registry name: 'fmt', 'lora', ...).
      learning_rate: peak rate (the study's schedule).
      steps: train steps (ignored by icl).
      shots: demonstrations of icl and of the distillation teacher.
      base: 'pretrained', or 'adaptive' (the LM after continued training on task text).
    """

    name: str
    kind: str
    tuning: str = "fmt"
    learning_rate: float = 1e-3
    steps: int = 100
    shots: int = 4
    base: str = "pretrained"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"MethodSpec.kind={self.kind!r} ({self.name}); allowed: {KINDS}")
        if self.base not in BASES:
            raise ValueError(f"MethodSpec.base={self.base!r} ({self.name}); allowed: {BASES}")
        registry.get(self.tuning)  # KeyError listing the known methods
        if self.kind != "icl" and self.steps <= 0:
            raise ValueError(f"MethodSpec.steps={self.steps} ({self.name}) must be positive")
        if self.shots < 0:
            raise ValueError(f"MethodSpec.shots={self.shots} ({self.name}) must be >= 0")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What every run of a study shares (gin: RunSettings.<field>; see gin/classify/*.gin)."""

    task: str = "translation_match"
    pattern: str = "tm_same"
    model_config: configs.ModelConfig = dataclasses.field(default_factory=configs.ModelConfig)
    vocabulary: str = "debian_l10n_ende"
    field_tokens: int = 24
    sequence_length: int = 96
    icl_sequence_length: int = 384
    batch_size: int = 16
    eval_batch_size: int = 32
    eval_examples: int | None = 256
    ood_set: str | None = "default"
    unlabeled_examples: int = 256
    optimizer: str = "adamw"
    schedule: str = "constant"
    warmup_steps: int = 0

    def __post_init__(self):
        task = tasks.get_task(self.task)
        patterns.get_pattern(self.pattern, self.task)
        tasks.ood_set(task, self.ood_set)
        if self.optimizer not in optimizers.OPTIMIZERS:
            raise ValueError(
                f"RunSettings.optimizer={self.optimizer!r}; allowed: {optimizers.OPTIMIZERS}"
            )
        if self.schedule not in optimizers.SCHEDULES:
            raise ValueError(
                f"RunSettings.schedule={self.schedule!r}; allowed: {optimizers.SCHEDULES}"
            )
        sizes = ("field_tokens", "sequence_length", "icl_sequence_length", "batch_size")
        for name in (*sizes, "eval_batch_size", "unlabeled_examples"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RunSettings.{name}={getattr(self, name)} must be positive")


@dataclasses.dataclass
class _Model:
    classifier: object
    state: trainer.TrainState
    frozen: dict
    train_fn: object
    eval_fn: object
    trainable_params: int


_BASES: dict = {}


def _base_params(path: str):
    """Host params of a base checkpoint, read once per process (a study reuses a few bases)."""
    if hf_run_setup.is_hf_directory(path):  # an imported Hugging Face checkpoint
        return jax.tree.map(np.asarray, hf_loading.load_pretrained(path)[1])
    key = (os.path.abspath(path), os.path.getmtime(os.path.join(path, "checkpoints")))
    if key not in _BASES:
        if len(_BASES) >= 4:  # a study has two bases; tests and sessions may see more
            _BASES.pop(next(iter(_BASES)))
        _BASES[key] = jax.tree.map(np.asarray, checkpoints.load_params(path)[0])
    return _BASES[key]


def _classifier(kind: str, model, num_classes: int):
    if not isinstance(model, decoder.Decoder):
        # Both the head and verbalizer scoring read the decoder's hidden states.
        raise ValueError(
            f"classification reads the decoder's hidden states; the method's model "
            f"{type(model).__name__} does not provide them (use a tuning method that keeps the "
            "Decoder, e.g. 'fmt' or 'lora')"
        )
    if kind == "vanilla":
        return head.HeadClassifier(model, num_classes)
    if kind == "distill":
        return distill.DistillClassifier(model)
    return scoring.VerbalizerClassifier(model)


def build_model(spec, settings, num_classes, base_path, seed, mesh, rules) -> _Model:
    """The classifier, its train state (trainable split) and compiled steps."""
    method = registry.get(spec.tuning)()
    model = method.wrap(decoder.Decoder(settings.model_config))
    rng = jax.random.PRNGKey(seed)
    length = settings.sequence_length
    if base_path:
        base_tree = _base_params(base_path)
        params = checkpoints.params_from_base(model, rng, length, mesh, rules, base_tree, method)
    else:
        params = trainer.init_params(model, rng, length, mesh, rules)
    params = method.after_restore(params, jax.random.fold_in(rng, 2))
    classifier = _classifier(spec.kind, model, num_classes)
    extra = classifier.init_extra(
        jax.random.fold_in(rng, 3), settings.model_config.embed_dim, num_classes
    )
    extra = jax.device_put(extra, partitioning.replicated(mesh))  # small: on every device
    full = {"decoder": params, **extra}
    mask = {"decoder": method.trainable_mask(params), **jax.tree.map(lambda _: True, extra)}
    optimizer_settings = optimizers.OptimizerSettings(settings.optimizer, 0.0, 1.0)
    state, frozen = trainer.create_state(
        full, mask, optimizer_settings, jax.random.fold_in(rng, 4), mesh
    )
    train_fn, eval_fn = trainer.jit_steps(
        classifier, optimizer_settings, mesh, rules, state, frozen
    )
    count = base.trainable_param_count(method, params) + sum(
        int(x.size) for x in jax.tree.leaves(extra)
    )
    return _Model(classifier, state, frozen, train_fn, eval_fn, count)


def _arrays(kind, encoder, pattern, examples, demos, length, sequence_length) -> dict:
    labels = [e.label for e in examples]
    if kind == "vanilla":
        rows = [encoder.head_tokens(e) for e in examples]
        return encoding.head_arrays(rows, labels, sequence_length)
    prompts = [encoder.prompt(pattern, e, demos) for e in examples]
    return encoding.candidate_arrays(prompts, encoder.verbalizer_ids(pattern), labels, length)


@dataclasses.dataclass
class _Context:
    spec: MethodSpec
    settings: RunSettings
    task: tasks.TaskSpec
    pattern: patterns.Pattern
    encoder: encoding.Encoder
    mesh: object
    rules: tuple
    seed: int

    def arrays(self, examples, demos=(), long=False) -> dict:
        length = self.settings.icl_sequence_length if long else self.settings.sequence_length
        return _arrays(
            self.spec.kind,
            self.encoder,
            self.pattern,
            examples,
            demos,
            length,
            self.settings.sequence_length,
        )

    def fit(self, model: _Model, arrays: dict):
        spec, settings = self.spec, self.settings
        schedule = optimizers.schedule(
            spec.learning_rate, spec.steps, settings.schedule, settings.warmup_steps
        )
        return train.fit(
            model.train_fn,
            model.state,
            model.frozen,
            arrays,
            spec.steps,
            settings.batch_size,
            schedule,
            self.seed,
            self.mesh,
            self.rules,
        )

    def predict(self, model: _Model, params, arrays: dict) -> np.ndarray:
        return train.predict(
            model.eval_fn,
            params,
            model.frozen,
            arrays,
            self.settings.eval_batch_size,
            self.mesh,
            self.rules,
        )


def _train(ctx: _Context, model: _Model, subset, unlabeled, demos):
    """(trained state, losses) by kind; icl returns the initial state and no losses."""
    kind = ctx.spec.kind
    if kind == "icl":
        return model.state, np.zeros(0)
    if kind == "distill":
        # The frozen teacher: the initial model, k demonstrations in context, run once.
        teacher = ctx.predict(model, model.state.params, ctx.arrays(unlabeled, demos, long=True))
        arrays = ctx.arrays(unlabeled)
        arrays["teacher_log_probs"] = teacher.astype(np.float32)
        arrays["labels"] = np.full(len(unlabeled), -1, np.int32)  # never read by the KL loss
        return ctx.fit(model, arrays)
    return ctx.fit(model, ctx.arrays(subset))


def _data(ctx: _Context, per_class: int):
    """(labelled subset, unlabeled pool, demonstrations) of this run."""
    train_examples = tasks.load_examples(ctx.task)
    labels = [e.label for e in train_examples]
    index = subsets.per_class_subset(
        labels, ctx.task.num_classes, per_class, ctx.seed, salt=ctx.task.name
    )
    subset = [train_examples[i] for i in index]
    unlabeled = []
    if ctx.spec.kind == "distill":
        pool = subsets.unlabeled_pool(
            len(train_examples), index, ctx.settings.unlabeled_examples, ctx.seed, ctx.task.name
        )
        unlabeled = [train_examples[i] for i in pool]
    demos = []
    if ctx.spec.kind in ("icl", "distill"):
        demos = few_shot.choose_demonstrations(subset, ctx.spec.shots, ctx.seed)
    return subset, unlabeled, demos


def _eval_sets(ctx: _Context) -> dict:
    sets = {"in_domain": ctx.task.in_domain, "ood": tasks.ood_set(ctx.task, ctx.settings.ood_set)}
    return {name: s for name, s in sets.items() if s is not None}


def run(spec: MethodSpec, settings: RunSettings, per_class: int, seed: int, bases: dict) -> dict:
    """Trains (unless icl) and evaluates one run; returns its results row.

    Args:
      spec: the method.
      settings: the study's shared settings.
      per_class: labelled examples per class.
      seed: subset, demonstration, initialisation and batch-order seed.
      bases: {'pretrained': checkpoint dir or None, 'adaptive': ...}; spec.base picks one.

    Returns:
      A flat dict: method, kind, per_class, seed, in_domain_/ood_ accuracy and matthews, the
      task metric, trainable params, first and last train loss, wall time.
    """
    start = time.time()
    task = tasks.get_task(settings.task)
    if spec.base not in bases:
        raise ValueError(
            f"method {spec.name} needs the {spec.base!r} base; the study has {sorted(bases)}"
        )
    ctx = _Context(
        spec,
        settings,
        task,
        patterns.get_pattern(settings.pattern, task.name),
        encoding.Encoder(vocab.get_vocabulary(settings.vocabulary), settings.field_tokens),
        partitioning.make_mesh(),
        partitioning.logical_rules(),
        seed,
    )
    subset, unlabeled, demos = _data(ctx, per_class)
    model = build_model(
        spec, settings, task.num_classes, bases[spec.base], seed, ctx.mesh, ctx.rules
    )
    state, losses = _train(ctx, model, subset, unlabeled, demos)
    row = _row(spec, task, per_class, seed, model.trainable_params, losses)
    row.update(_evaluate(ctx, model, state.params, demos))
    row["wall_time"] = time.time() - start
    return row


def _evaluate(ctx: _Context, model: _Model, params, demos) -> dict:
    """{in_domain_|ood_}{accuracy, matthews, examples, metric}; ICL keeps its demonstrations."""
    icl = ctx.spec.kind == "icl"
    out = {}
    for name, eval_set in _eval_sets(ctx).items():
        examples = tasks.load_examples(ctx.task, eval_set, ctx.settings.eval_examples)
        arrays = ctx.arrays(examples, demos if icl else (), long=icl)
        log_probs = ctx.predict(model, params, arrays)
        result = metrics.scores(log_probs, arrays["labels"], eval_set.binary)
        out.update({f"{name}_{k}": v for k, v in result.items()})
        out[f"{name}_metric"] = result[ctx.task.metric]
    return out


def _row(spec, task, per_class, seed, trainable_params, losses) -> dict:
    return {
        "task": task.name,
        "method": spec.name,
        "kind": spec.kind,
        "tuning": spec.tuning,
        "base": spec.base,
        "per_class": per_class,
        "train_examples": per_class * task.num_classes,
        "seed": seed,
        "steps": 0 if spec.kind == "icl" else spec.steps,
        "trainable_params": 0 if spec.kind == "icl" else trainable_params,
        "metric": task.metric,
        "first_train_loss": float(losses[0]) if len(losses) else None,
        "last_train_loss": float(losses[-1]) if len(losses) else None,
    }
