"""How a model is quantised to INT8: which of its nodes stay in float.

Each model class names its scheme (``AnomalyModel.int8_scheme``); ``otx optimize`` reads it
from the model an export came from. This module has no heavy imports: models import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Nodes every scheme keeps in float: the resize (``__module.resize``; ``aten::matmul`` in exports
# made before it was a named module) and the post-processor (thresholds and normalisation must
# compare in the units they were fitted in).
ALWAYS_FLOAT = (r"^__module\.resize/.*", r"^aten::matmul/.*", r"^__module\.postprocessor.*")


@dataclass(frozen=True)
class Scheme:
    """Which parts of one model run in INT8 and which stay in float.

    ``float_patterns`` name nodes kept in float (regexes on node names); every node computed
    from the output of a node matching ``float_after`` is float too, whatever its name (in-place
    torch ops such as STFPM's product of layer maps lose their module's name when traced).
    ``int8_patterns`` name nodes quantised even where the other patterns would keep them in float;
    ``int8_next_convolution`` names nodes whose next convolution downstream (past bias additions
    and activations, at most ``NEXT_CONVOLUTION_HOPS`` nodes away) is quantised as well: the
    export folds a constant multiply after a convolution into its weights and names the result
    after the multiply (``Multiply_123``), so such a convolution has no stable name to match.
    ``activation_ranges``: ``"default"`` (NNCF's estimator for per-tensor activations: the mean
    over calibration images of each image's minimum and maximum) or ``"minmax"`` (the smallest
    minimum and the largest maximum over all of them: nothing seen in calibration is clipped).
    ``calibration_images``: how many ``train/good`` images calibrate the quantisers when the user
    does not say (``otx optimize --subset_size``).
    ``float_before`` name nodes whose inputs, and everything those are computed from, stay in
    float (a fallback that keeps a whole backbone float names its first consumer).
    ``fallback`` is a scheme that keeps more of the model in float, slower but less noisy:
    ``otx optimize`` quantises with it when this scheme's INT8 model does not keep the FP32
    model's decisions on the validation split (``ladder``).
    ``calibrate_with_validation``: the validation images (defective ones too) calibrate the
    quantisers besides the training images. Ranges seen on normal images only clip a defect's
    stronger activations, which squeezes its score toward the threshold.
    ``bounded_full_range``: quantisers on the output of a ReLU6 (a ``Clamp`` to [0, 6]) span all
    of [0, 6], the activation's own range, as the image quantiser spans [0, 1]: what calibration
    did not see is not clipped either.
    """

    name: str
    summary: str
    float_patterns: tuple[str, ...]
    float_after: tuple[str, ...]
    fast_bias_correction: bool = True  # False: NNCF's full bias correction (slower, more accurate)
    int8_patterns: tuple[str, ...] = ()
    int8_next_convolution: tuple[str, ...] = ()
    activation_ranges: str = "default"
    calibration_images: int = 300
    float_before: tuple[str, ...] = ()
    fallback: Scheme | None = None
    calibrate_with_validation: bool = False
    bounded_full_range: bool = False

    def __post_init__(self) -> None:
        if self.activation_ranges not in ("default", "minmax"):
            raise ValueError(f"activation_ranges must be 'default' or 'minmax', got {self.activation_ranges!r}")
        if self.calibration_images < 1:
            raise ValueError(f"calibration_images must be at least 1, got {self.calibration_images}")

    def ladder(self) -> list[Scheme]:
        """The schemes to try in turn: this one, its fallback, the fallback's fallback, and so on."""
        schemes: list[Scheme] = []
        scheme: Scheme | None = self
        while scheme is not None and scheme not in schemes:
            schemes.append(scheme)
            scheme = scheme.fallback
        return schemes

    def float_nodes(self, ov_model: Any) -> set[str]:
        """Names of the nodes of ``ov_model`` that stay in float (NNCF's ignored scope)."""
        patterns = [re.compile(p) for p in (*ALWAYS_FLOAT, *self.float_patterns)]
        after = [re.compile(p) for p in self.float_after]
        names: set[str] = set()
        stack = []
        for op in ov_model.get_ordered_ops():
            name = op.get_friendly_name()
            if any(p.match(name) for p in patterns):
                names.add(name)
            if any(p.match(name) for p in after):
                stack.append(op)
        seen: set[str] = set()
        while stack:  # everything downstream of the float_after nodes
            op = stack.pop()
            for output in op.outputs():
                for target in output.get_target_inputs():
                    node = target.get_node()
                    if node.get_friendly_name() not in seen:
                        seen.add(node.get_friendly_name())
                        stack.append(node)
        names |= {name for name in seen if not name.startswith("Result")}
        names |= upstream_of(ov_model, self.float_before)
        quantised = [re.compile(p) for p in self.int8_patterns]
        names = {name for name in names if not any(p.match(name) for p in quantised)}
        return names - next_convolutions(ov_model, self.int8_next_convolution)


NEXT_CONVOLUTION_HOPS = 4


def upstream_of(ov_model: Any, patterns: tuple[str, ...]) -> set[str]:
    """Names of every node that the nodes matching ``patterns`` are computed from (not those nodes)."""
    if not patterns:
        return set()
    compiled = [re.compile(p) for p in patterns]
    stack = [op for op in ov_model.get_ordered_ops() if any(p.match(op.get_friendly_name()) for p in compiled)]
    found: set[str] = set()
    while stack:
        op = stack.pop()
        for value in op.inputs():
            node = value.get_source_output().get_node()
            if node.get_friendly_name() not in found:
                found.add(node.get_friendly_name())
                stack.append(node)
    return found


def next_convolutions(ov_model: Any, patterns: tuple[str, ...]) -> set[str]:
    """Names of the first ``Convolution`` on each path down from the nodes matching ``patterns``."""
    if not patterns:
        return set()
    compiled = [re.compile(p) for p in patterns]
    found: set[str] = set()
    for op in ov_model.get_ordered_ops():
        if not any(p.match(op.get_friendly_name()) for p in compiled):
            continue
        frontier = [op]
        for _ in range(NEXT_CONVOLUTION_HOPS):
            following = [t.get_node() for node in frontier for out in node.outputs() for t in out.get_target_inputs()]
            found |= {node.get_friendly_name() for node in following if node.get_type_name() == "Convolution"}
            frontier = [node for node in following if node.get_type_name() != "Convolution"]
    return found


# The scheme of a model class that names none: the core in INT8, the anomaly map onwards in float.
GENERIC = Scheme(
    name="generic-int8",
    summary="model core INT8; anomaly map, score and post-processing float",
    float_patterns=(r".*anomaly_map_generator.*",),
    float_after=(r".*anomaly_map_generator.*",),
)
