"""The one place that knows how transformers releases differ (tested on the locked release and the oldest admitted).

transformers 5.24 renamed the cache field of every ModelOutput from `past_key_values` to `cache` and made
`generate()` pass `cache=` to `forward`; earlier 5.x releases use `past_key_values` for both. Our output classes
subclass the library's own Moe*OutputWithPast, so their cache field is whatever the installed release calls it, and
`forward` accepts either keyword through `resolve_cache_argument`.
"""
from __future__ import annotations

import dataclasses

from transformers.modeling_outputs import MoeModelOutputWithPast

# The name the installed release gives the cache field of its outputs (and the keyword generate() passes).
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(MoeModelOutputWithPast)} else "past_key_values"
# Every name a caller may use for the cache: the deprecated one stays accepted so user code keeps working.
CACHE_NAMES = ("cache", "past_key_values")


def resolve_cache_argument(cache, past_key_values):
    """The cache passed under either keyword; both at once is ambiguous and refused."""
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the KV cache as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def output_cache(output):
    """The KV cache held by a model output, whichever release built it."""
    return getattr(output, CACHE_FIELD)
