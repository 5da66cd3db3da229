"""The compatibility shim: outputs carry the cache under the installed release's field name, and forward accepts
the KV cache under either keyword (5.24's `cache`, earlier releases' `past_key_values`) with the same result."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import MoeCausalLMOutputWithPast

from sparseehr.model.modeling_sparseehr import SparseEHRForCausalLM
from sparseehr.model.presets import get_preset
from sparseehr.model.transformers_compat import CACHE_FIELD, output_cache, resolve_cache_argument


def test_cache_field_is_the_libraries_own_name():
    library_fields = {f.name for f in dataclasses.fields(MoeCausalLMOutputWithPast)}
    assert CACHE_FIELD in library_fields
    assert ({"cache", "past_key_values"} & library_fields) == {CACHE_FIELD}


def test_both_cache_keywords_extend_the_cache_identically():
    torch.manual_seed(0)
    model = SparseEHRForCausalLM(get_preset("tiny", vocab_size=60)).eval()
    ids = torch.randint(1, 60, (1, 8))
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        for keyword in ("cache", "past_key_values"):
            prefix = model(ids[:, :7], use_cache=True)
            assert isinstance(getattr(prefix, CACHE_FIELD), Cache)
            step = model(ids[:, 7:], use_cache=True, **{keyword: output_cache(prefix)})
            assert output_cache(step).get_seq_length() == 8
            assert torch.allclose(step.logits[:, -1], full, atol=1e-5)


def test_cache_under_both_keywords_is_refused():
    assert resolve_cache_argument(None, "old") == "old"
    with pytest.raises(ValueError, match="not both"):
        resolve_cache_argument("new", "old")
