"""The ``train`` section of a config: defaults and validation.

    config.train = get_train_config()
    config.train.lr = 0.05                      # overrides; typos fail (locked)
    validate_train_config(config.train, num_devices=jax.device_count())

Validation runs before any compute and raises a one-line ``ValueError`` naming the key.
"""

from __future__ import annotations

import math

import ml_collections

from hobs_jax.train.stability import StabilityConfig

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
MIXED_PRECISION = ("auto", "off", "bf16")
FAST_DEPTHWISE = ("auto", "on", "off")


def get_train_config() -> ml_collections.ConfigDict:
    """Default training hyper-parameters (a locked ConfigDict).

    Fields:
      optimizer: 'sgd' (momentum, optional Nesterov) or 'adamw'.
      lr: peak learning rate (after 10% linear warmup, then cosine decay to
        ``end_lr_fraction * lr``; schedule 'constant' keeps the peak after warmup).
      weight_decay: decoupled for AdamW, L2-in-gradient (torch style) for SGD; applied only
        to arrays of rank >= 2 (conv/dense kernels) unless ``decay_norm_and_bias``.
      epochs / steps: training length; ``steps > 0`` wins.
      batch_size: the global batch (all devices and hosts); eval_batch_size 0 = same.
      label_smoothing: optax.smooth_labels amount.
      kd: knowledge distillation from a teacher's logits: loss = (1 - alpha) * CE +
        alpha * temperature^2 * KL(teacher_T || student_T).
      mixed_precision: 'auto' = bf16 compute on GPU/TPU, off on CPU; 'bf16' forces it;
        master weights and optimizer state stay float32.
      fast_depthwise: compute depthwise convolutions (``feature_group_count`` = channels)
        as sums of shifted slices in the train, eval and AST scoring steps
        (:mod:`hobs_jax.models.depthwise`; XLA:CPU's grouped conv is 7-21x slower there):
        'auto' = on when JAX's default backend is the CPU, 'on', 'off'. The model, its
        parameters and every jaxpr traced outside these steps are unchanged; a model
        without depthwise convs compiles to the same program either way.
      eval_every: steps between evaluations (0 = once per epoch); log_every likewise.
      eval_steps: further steps to evaluate at, comma-separated ('50,200'): a curve of
        accuracy against training length from one run of the longest schedule.
      checkpoint: every_steps (0 = only the initial checkpoint, the stability rollback target, and the
        end), keep (how many to keep), async_save.
      early_stopping: stop after ``patience`` evaluations without a top-1 gain of
        ``min_delta`` (patience 0 disables); ``restore_best``: with early stopping on,
        return the variables of the best evaluation (kept in ``workdir/best``), not the
        last step's.
      stability: spike_factor k, window W, max_consecutive_events M, lr_decay (factor
        applied to the lr scale at every loss spike), spike_sigmas (a spike must also stand
        that many robust standard deviations of the window's log-losses above their
        median), see hobs_jax.train.stability.
      mesh.fsdp: shard parameters and optimizer state over the 'data' axis;
        mesh.fsdp_min_size: arrays with fewer elements stay replicated.
      progress: tqdm bars (only on host 0 and on a terminal anyway).
      tensorboard: write TensorBoard events besides metrics.jsonl (tensorboardX imports
        torch when it is installed: about 2 s of start-up here).
      ast: Adaptive Sparse Training sample selection (:func:`get_ast_config`, docs/ast.md).
    """
    c = ml_collections.ConfigDict()
    c.optimizer = "sgd"
    c.lr = 0.1
    c.momentum = 0.9
    c.nesterov = False
    c.adam_b1 = 0.9
    c.adam_b2 = 0.999
    c.adam_eps = 1e-8
    c.weight_decay = 5e-4
    c.decay_norm_and_bias = False
    c.epochs = 10.0
    c.steps = 0
    c.batch_size = 128
    c.eval_batch_size = 0
    c.warmup_fraction = 0.1
    c.schedule = "cosine"
    c.end_lr_fraction = 0.0
    c.label_smoothing = 0.0
    c.kd = ml_collections.ConfigDict({"enabled": False, "temperature": 4.0, "alpha": 0.9})
    c.mixed_precision = "auto"
    c.fast_depthwise = "auto"
    c.eval_every = 0
    c.eval_steps = ""
    c.log_every = 50
    c.checkpoint = ml_collections.ConfigDict({"every_steps": 1000, "keep": 3,
                                              "async_save": True})
    c.early_stopping = ml_collections.ConfigDict({"patience": 0, "min_delta": 0.0,
                                                 "restore_best": True})
    c.stability = ml_collections.ConfigDict({"spike_factor": 3.0, "window": 50,
                                             "max_consecutive_events": 5, "lr_decay": 0.5,
                                             "spike_sigmas": StabilityConfig.spike_sigmas})
    c.seed = 0
    c.mesh = ml_collections.ConfigDict({"fsdp": False, "fsdp_min_size": 2 ** 14})
    c.progress = True
    c.tensorboard = True
    c.ast = get_ast_config()
    c.lock()
    return c


AST_RULES = ("ast", "random", "infobatch")
AST_SELECTIONS = ("threshold", "sample")


def get_ast_config() -> ml_collections.ConfigDict:
    """The ``train.ast`` section: which samples get a backward pass (docs/ast.md).

    Fields:
      enabled: select samples (off: every sample of every batch is trained on).
      rule: 'ast' (score every candidate, PI-controlled threshold), 'random' (a uniform
        random ``target_rate`` fraction: the same back-propagation budget without scores),
        'infobatch' (InfoBatch, Qin et al., ICLR 2024: drop ``infobatch_prune`` of the
        below-mean-loss samples by their stale losses, rescale the kept ones, train on
        everything in the final ``infobatch_anneal`` fraction of the steps).
      target_rate: fraction of the candidate samples to back-propagate, in (0, 1]. It sets
        the run's length: ``warmup_steps + ceil((T - warmup_steps) * target_rate)``
        optimizer steps, where T = the steps that ``epochs``/``steps`` give without AST, so
        the data seen stays that of T full steps when the rate is on target.
      score: 'loss' | 'loss_entropy' | 'loss_intensity' | 'loss_grad' | 'entropy' (the
        only one needing no labels) | 'reducible' (RHO-LOSS: the loss minus a reference
        model's, clipped at 0; needs ``reference``), see hobs_jax.train.ast_scores.
      reference: for score 'reducible', a .npy of per-example losses [n] of a frozen
        reference model on the training split, in its index order
        (hobs_jax.train.ast_reference; the pipeline's finetune stage fills it from the
        dense network when empty).
      kp, ki, ema: PI gains and the EMA weight of the newest batch's rate
        (hobs_jax.train.ast_control; tuned in simulation, benchmarks/ast_controller.py;
        the original AST's Kp 0.0015 / Ki 0.00005 are for raw score units, docs/ast.md).
      warmup_steps: the first steps train on every sample (scores of a random network
        mean little); the controller starts after them.
      class_balanced: normalize scores per class (about the same rate in every class).
      score_refresh: 0 = score every candidate with a fresh cheap forward; f in (0, 1) =
        keep stale per-example scores in a host table (updated for free by every
        back-propagated sample's training forward) and re-score only a fraction f of each
        candidate batch (InfoBatch-like), which removes most of the scoring cost.
      infobatch_prune, infobatch_anneal: InfoBatch's r (0.5) and 1 - delta (0.125).
      selection: how the 'ast' rule turns scores into choices: 'threshold' (the original:
        every sample scoring above the controlled threshold) or 'sample' (soft: a sample
        scoring s is chosen with probability clip(s / tau, sample_floor * target_rate, 1)
        and weighted by target_rate / p, importance sampling with an unbiased gradient;
        the controller moves tau; hobs_jax.train.ast_control.sample_probabilities).
      sample_floor: the smallest selection probability of 'sample', as a fraction of
        ``target_rate`` (bounds the importance weights by 1 / sample_floor).
      bn_reestimate: after the run, recompute the BatchNorm running statistics on this
        many training images drawn uniformly (whole batches; 0: off). A selection trains
        on a biased subset, so the running statistics it leaves describe the selected
        samples (hard ones, for 'ast'), not the data the network is evaluated on; precise
        BN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021) on a uniform sample
        removes that part of the error. Models without BatchNorm are unaffected.
    """
    return ml_collections.ConfigDict(dict(
        enabled=False, rule="ast", target_rate=0.2, score="loss", kp=0.1, ki=0.05, ema=0.3,
        warmup_steps=100, class_balanced=False, score_refresh=0.0, infobatch_prune=0.5,
        infobatch_anneal=0.125, selection="threshold", sample_floor=0.1,
        bn_reestimate=2048, reference=""))


def validate_ast_config(a: ml_collections.ConfigDict, *, batch_size: int,
                        labeled: bool = True) -> None:
    """One-line ValueError for the first invalid ``train.ast`` field (only when enabled).

    Besides ranges it refuses gains that diverge: the controller runs in closed loop on a
    reference plant (lognormal scores, ``batch_size`` per batch; ~20 ms) and the gains
    are refused when the rate pins at 0 or 1, oscillates or misses the target there
    (``hobs_jax.train.ast_control.check_gains``). ``labeled=False`` (a loader of unlabeled
    data) refuses scores and rules that need labels.
    """
    for key in get_ast_config().keys():
        if key not in a:
            raise ValueError(f"train.ast.{key} is missing")
    if not a.enabled:
        return

    def num(key):
        v = a[key]
        _check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
               f"ast.{key}", v, "must be a finite number")

    for key in ("target_rate", "kp", "ki", "ema", "score_refresh", "infobatch_prune",
                "infobatch_anneal"):
        num(key)
    _check(a.rule in AST_RULES, "ast.rule", a.rule, f"unknown; use one of {AST_RULES}")
    _check(0 < a.target_rate <= 1, "ast.target_rate", a.target_rate, "must be in (0, 1]")
    from hobs_jax.train import ast_scores

    _check(a.score in ast_scores.SCORES, "ast.score", a.score,
           f"unknown; use one of {ast_scores.SCORES}")
    _check(isinstance(a.reference, str), "ast.reference", a.reference, "must be a path (str)")
    _check(a.rule != "ast" or a.score != "reducible" or bool(a.reference), "ast.reference",
           a.reference, "score 'reducible' needs the reference losses (a .npy path; "
           "hobs_jax.train.ast_reference)")
    needs = a.rule == "infobatch" or (a.rule == "ast" and ast_scores.needs_labels(a.score))
    _check(labeled or not needs, "ast.score" if a.rule == "ast" else "ast.rule",
           a.score if a.rule == "ast" else a.rule,
           f"needs labels but the training data is unlabeled (use score "
           f"{ast_scores.LABEL_FREE[0]!r})")
    _check(a.kp >= 0 and a.ki >= 0, "ast.kp/ki", (a.kp, a.ki), "gains must be >= 0")
    _check(a.kp + a.ki > 0, "ast.kp/ki", (a.kp, a.ki), "at least one gain must be > 0")
    _check(0 < a.ema <= 1, "ast.ema", a.ema, "must be in (0, 1]")
    _check(isinstance(a.warmup_steps, int) and not isinstance(a.warmup_steps, bool)
           and a.warmup_steps >= 0, "ast.warmup_steps", a.warmup_steps, "must be an int >= 0")
    _check(isinstance(a.class_balanced, bool), "ast.class_balanced", a.class_balanced,
           "must be a bool")
    _check(0 <= a.score_refresh <= 1, "ast.score_refresh", a.score_refresh, "must be in [0, 1]")
    _check(0 <= a.infobatch_prune < 1, "ast.infobatch_prune", a.infobatch_prune,
           "must be in [0, 1)")
    _check(a.selection in AST_SELECTIONS, "ast.selection", a.selection,
           f"unknown; use one of {AST_SELECTIONS}")
    _check(0 < a.sample_floor < 1, "ast.sample_floor", a.sample_floor, "must be in (0, 1)")
    _check(0 <= a.infobatch_anneal <= 1, "ast.infobatch_anneal", a.infobatch_anneal,
           "must be in [0, 1]")
    _check(isinstance(a.bn_reestimate, int) and not isinstance(a.bn_reestimate, bool)
           and a.bn_reestimate >= 0, "ast.bn_reestimate", a.bn_reestimate,
           "must be an int >= 0 (images; 0 = off)")
    if a.rule == "ast" and a.target_rate < 1:
        from hobs_jax.train import ast_control

        why = ast_control.check_gains(ast_control.ControllerConfig(
            float(a.target_rate), float(a.kp), float(a.ki), float(a.ema)), batch_size)
        _check(not why, "ast.kp/ki", (a.kp, a.ki), f"the controller diverges: {why}")


def _check(ok: bool, key: str, value, why: str) -> None:
    if not ok:
        raise ValueError(f"train.{key}={value!r}: {why}")


def validate_train_config(c: ml_collections.ConfigDict, *, num_devices: int | None = None,
                          process_count: int | None = None, labeled: bool = True) -> None:
    """Raises a one-line ValueError for the first invalid field of a ``train`` config.

    Args:
      c: a config like :func:`get_train_config`'s (missing keys are errors too).
      num_devices: global device count the batch is sharded over (checked if given).
      process_count: number of hosts (checked if given).
      labeled: whether the training data has labels (AST scores may need them).
    """
    defaults = get_train_config()
    for key in defaults.keys():
        if key not in c:
            raise ValueError(f"train.{key} is missing (compare hobs_jax.train.get_train_config())")
    for key in ("kd", "checkpoint", "early_stopping", "stability", "mesh", "ast"):
        for sub in defaults[key].keys():
            if sub not in c[key]:
                raise ValueError(f"train.{key}.{sub} is missing")

    def num(key, value):
        _check(isinstance(value, (int, float)) and not isinstance(value, bool)
               and math.isfinite(value), key, value, "must be a finite number")

    _check(c.optimizer in OPTIMIZERS, "optimizer", c.optimizer, f"unknown; use one of {OPTIMIZERS}")
    for key in ("lr", "momentum", "weight_decay", "epochs", "warmup_fraction",
                "end_lr_fraction", "label_smoothing"):
        num(key, c[key])
    _check(c.lr > 0, "lr", c.lr, "must be > 0")
    _check(0 <= c.momentum < 1, "momentum", c.momentum, "must be in [0, 1)")
    _check(0 < c.adam_b1 < 1 and 0 < c.adam_b2 < 1, "adam_b1/adam_b2", (c.adam_b1, c.adam_b2),
           "must be in (0, 1)")
    _check(c.adam_eps > 0, "adam_eps", c.adam_eps, "must be > 0")
    _check(c.weight_decay >= 0, "weight_decay", c.weight_decay, "must be >= 0")
    _check(isinstance(c.steps, int) and c.steps >= 0, "steps", c.steps, "must be an int >= 0")
    _check(c.steps > 0 or c.epochs > 0, "epochs", c.epochs, "must be > 0 when train.steps is 0")
    for key in ("batch_size", "eval_batch_size"):
        _check(isinstance(c[key], int) and c[key] >= (1 if key == "batch_size" else 0), key, c[key],
               "must be a positive int" if key == "batch_size" else "must be an int >= 0")
    for divisor, what in ((num_devices, "device count"), (process_count, "process count")):
        if divisor:
            for key in ("batch_size", "eval_batch_size"):
                _check(c[key] % divisor == 0, key, c[key], f"not divisible by the {what} {divisor}")
    _check(0 <= c.warmup_fraction < 1, "warmup_fraction", c.warmup_fraction, "must be in [0, 1)")
    _check(c.schedule in SCHEDULES, "schedule", c.schedule, f"unknown; use one of {SCHEDULES}")
    _check(0 <= c.end_lr_fraction <= 1, "end_lr_fraction", c.end_lr_fraction, "must be in [0, 1]")
    _check(0 <= c.label_smoothing < 1, "label_smoothing", c.label_smoothing, "must be in [0, 1)")
    _check(c.kd.temperature > 0, "kd.temperature", c.kd.temperature, "must be > 0")
    _check(0 <= c.kd.alpha <= 1, "kd.alpha", c.kd.alpha, "must be in [0, 1]")
    _check(c.mixed_precision in MIXED_PRECISION, "mixed_precision", c.mixed_precision,
           f"unknown; use one of {MIXED_PRECISION}")
    _check(c.fast_depthwise in FAST_DEPTHWISE, "fast_depthwise", c.fast_depthwise,
           f"unknown; use one of {FAST_DEPTHWISE}")
    _check(isinstance(c.eval_every, int) and c.eval_every >= 0, "eval_every", c.eval_every,
           "must be an int >= 0")
    eval_at(c)
    _check(isinstance(c.log_every, int) and c.log_every >= 1, "log_every", c.log_every,
           "must be an int >= 1")
    _check(isinstance(c.checkpoint.every_steps, int) and c.checkpoint.every_steps >= 0,
           "checkpoint.every_steps", c.checkpoint.every_steps, "must be an int >= 0")
    _check(isinstance(c.checkpoint.keep, int) and c.checkpoint.keep >= 1, "checkpoint.keep",
           c.checkpoint.keep, "must be an int >= 1")
    _check(isinstance(c.early_stopping.patience, int) and c.early_stopping.patience >= 0,
           "early_stopping.patience", c.early_stopping.patience, "must be an int >= 0")
    _check(c.early_stopping.min_delta >= 0, "early_stopping.min_delta",
           c.early_stopping.min_delta, "must be >= 0")
    _check(c.stability.spike_factor > 1, "stability.spike_factor", c.stability.spike_factor,
           "must be > 1")
    _check(isinstance(c.stability.window, int) and c.stability.window >= 3, "stability.window",
           c.stability.window, "must be an int >= 3")
    _check(isinstance(c.stability.max_consecutive_events, int)
           and c.stability.max_consecutive_events >= 1, "stability.max_consecutive_events",
           c.stability.max_consecutive_events, "must be an int >= 1")
    _check(0 < c.stability.lr_decay <= 1, "stability.lr_decay", c.stability.lr_decay,
           "must be in (0, 1]")
    sigmas = c.stability.get("spike_sigmas", StabilityConfig.spike_sigmas)
    _check(sigmas >= 0, "stability.spike_sigmas", sigmas, "must be >= 0")
    _check(isinstance(c.seed, int), "seed", c.seed, "must be an int")
    _check(isinstance(c.mesh.fsdp_min_size, int) and c.mesh.fsdp_min_size >= 1,
           "mesh.fsdp_min_size", c.mesh.fsdp_min_size, "must be an int >= 1")
    validate_ast_config(c.ast, batch_size=c.batch_size, labeled=labeled)


def eval_at(c: ml_collections.ConfigDict) -> frozenset[int]:
    """``c.eval_steps`` as a set of steps (one-line ``ValueError`` unless positive ints)."""
    text = str(c.eval_steps).strip()
    try:
        steps = frozenset(int(s) for s in text.split(",") if s.strip()) if text else frozenset()
    except ValueError:
        steps = frozenset({0})
    _check(all(s >= 1 for s in steps), "eval_steps", c.eval_steps, "comma-separated positive ints")
    return steps


def total_steps(c: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """Training length in steps: ``c.steps`` if set, else ``ceil(epochs * steps_per_epoch)``."""
    if c.steps > 0:
        return int(c.steps)
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}: the training split is smaller than "
                         f"train.batch_size={c.batch_size}")
    return max(1, math.ceil(c.epochs * steps_per_epoch))
