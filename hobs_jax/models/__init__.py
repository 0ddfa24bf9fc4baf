"""The model zoo: width-parameterized Flax (linen) models, numerically identical to
torchvision. Find them by name: ``build("resnet50")``, ``build("resnet20", in_channels=1)``.
"""

from hobs_jax.models import sparse
from hobs_jax.models import zoo as _zoo  # noqa: F401  (registers the models)
from hobs_jax.models.depthwise import fast_depthwise, shift_add_depthwise
from hobs_jax.models.prunable import Prunable, prunable
from hobs_jax.models.registry import (
    MODELS,
    ModelEntry,
    build,
    default_widths,
    fill_random,
    get_entry,
    infer_widths,
    init,
    input_shape,
    list_models,
    random_variables,
    register,
    width_axes,
)
from hobs_jax.models.sparse import BlockPattern, eligible_layers
from hobs_jax.models.widths import Widths, resolve_widths

__all__ = ["MODELS", "BlockPattern", "ModelEntry", "Prunable", "Widths", "build", "default_widths",
           "eligible_layers", "fast_depthwise", "shift_add_depthwise", "get_entry", "init", "infer_widths",
           "input_shape", "list_models",
           "prunable", "fill_random", "random_variables", "register", "resolve_widths", "sparse", "width_axes"]
