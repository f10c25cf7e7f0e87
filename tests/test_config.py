"""BaLoRAConfig validation: every bad value names its field."""

from __future__ import annotations

import pytest

from balora import BaLoRAConfig

BAD = [
    ("r", 0),
    ("r", 2.5),
    ("r", True),
    ("lora_alpha", -1.0),
    ("lora_alpha", float("nan")),
    ("target_modules", []),
    ("target_modules", ""),
    ("target_modules", [""]),
    ("modules_to_save", "head"),
    ("prior_p", 0.0),
    ("prior_p", 1.0),
    ("alpha_source", "global"),
    ("noise", "weight"),
    ("kl_reduction", "sum"),
    ("alpha_param", "exp"),
    ("alpha_min", 0.0),
    ("alpha_init", -0.1),
    ("alpha_init", 1e3),
    ("alpha_hidden", 0),
    ("alpha_feature_dim", -3),
    ("lora_dropout", 1.0),
    ("mc_dropout", "yes"),
    ("alpha_per_rank", 1),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_bad_value_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        BaLoRAConfig(**{field: value})


def test_mc_dropout_needs_dropout():
    with pytest.raises(ValueError, match="lora_dropout"):
        BaLoRAConfig(mc_dropout=True)


def test_alpha_bounds_are_ordered():
    with pytest.raises(ValueError, match="alpha_max"):
        BaLoRAConfig(alpha_min=1.0, alpha_max=0.5)


def test_round_trip_and_derived_values():
    config = BaLoRAConfig(r=4, lora_alpha=8, target_modules=["q", "v"], prior_p=0.5)
    assert BaLoRAConfig.from_dict(config.to_dict()) == config
    assert config.scaling == 2.0
    assert config.prior_alpha == 1.0
    assert config.initial_alpha == 1.0
    with pytest.raises(ValueError, match="unknown BaLoRAConfig field"):
        BaLoRAConfig.from_dict({"rank": 4})
    assert config.replace(r=16).r == 16
