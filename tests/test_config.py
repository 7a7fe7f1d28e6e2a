import pytest

import vlmkit
from vlmkit.config import apply_override, load_config, parse_value, recipe_names


def test_builtin_recipes_exist_and_build():
    assert {"clip-tiny", "siglip-tiny", "clip-b32"} <= set(recipe_names())
    tiny = load_config("clip-tiny")
    assert tiny["model"]["vision"] == {"image_size": 64, "patch_size": 8, "width": 256, "layers": 6, "heads": 4,
                                       "pool": "mean"}
    assert tiny["model"]["text"]["context_length"] == 32 and tiny["model"]["embed_dim"] == 256
    siglip = vlmkit.build_model(load_config("siglip-tiny")["model"])
    assert siglip.logit_bias is not None


def test_clip_b32_has_openai_parameter_count():
    model = vlmkit.build_model(load_config("clip-b32")["model"])
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 151_277_313) / 151_277_313 < 0.002  # OpenAI ViT-B/32: 151.28 M parameters


def test_overrides_parse_numbers_and_nested_model_keys():
    config = load_config("clip-tiny", ["train.lr=1e-3", "train.steps=7", "model.vision.layers=2",
                                       "train.minutes=null", "data.caption_key=text"])
    assert config["train"]["lr"] == 0.001 and config["train"]["steps"] == 7
    assert config["model"]["vision"]["layers"] == 2 and config["train"]["minutes"] is None
    assert config["data"]["caption_key"] == "text"
    assert parse_value("[0.5, 1.0]") == [0.5, 1.0]


def test_unknown_keys_are_clear_errors():
    config = load_config("clip-tiny")
    with pytest.raises(ValueError, match="did you mean train.steps"):
        apply_override(config, "train.step=5")
    with pytest.raises(ValueError, match="key=value"):
        apply_override(config, "train.steps")
    with pytest.raises(ValueError, match="unknown recipe"):
        load_config("no-such-recipe")
    with pytest.raises(ValueError, match="unknown model.vision keys"):
        vlmkit.build_model(load_config("clip-tiny", ["model.vision.depth=3"])["model"])
