import os

import pytest

from biocap_ray.caption.prepare import load_processor
from biocap_ray.caption.prompts import PromptTemplate
from biocap_ray.models.download import TINY_MODEL

EXAMPLES = ["A bird with red wings.", "A bird with a hooked bill.", "A bird perched on a branch."]


@pytest.fixture(scope="module")
def processor():
    return load_processor(TINY_MODEL)


def render(processor, template, name, reference=None, examples=EXAMPLES):
    messages = template.messages(name, examples, reference, 20)
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_published_structure_through_the_models_chat_template(processor):
    t = PromptTemplate.load("biocap-v1")
    prompt = render(processor, t, "Turdus iliacus (redwing)", reference="Red flanks and a cream stripe.")
    assert prompt.index("biologist") < prompt.index("Examples of good captions") < prompt.index("<|image_pad|>")
    assert "1. A bird with red wings.\n2. A bird with a hooked bill.\n3. A bird perched" in prompt
    assert prompt.index("<|image_pad|>") < prompt.index("Red flanks and a cream stripe.")
    assert "do not copy" in prompt and "at most 20 words" in prompt and "name Turdus iliacus (redwing)" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "Reference description" not in render(processor, t, "Turdus iliacus")


def test_static_first_shares_a_prefix_within_a_class(processor):
    t = PromptTemplate.load("biocap-v1")
    a, b = render(processor, t, "Turdus iliacus"), render(processor, t, "Turdus merula")
    assert len(os.path.commonprefix([a, b])) > a.index("<|image_pad|>")


def test_image_first_and_custom_templates(tmp_path, processor):
    custom = tmp_path / "mine.yaml"
    custom.write_text(
        "version: mine-1\norder: image_first\nsystem: Be brief.\nexamples: 'E: {examples}'\n"
        "reference: 'R: {reference}'\nrequest: 'Name {name} in {max_words} words.'\n"
    )
    t = PromptTemplate.load(str(custom))
    prompt = render(processor, t, "Corvus corax")
    assert t.version == "mine-1" and prompt.index("<|image_pad|>") < prompt.index("E: 1. A bird")
    custom.write_text("version: x\norder: sideways\n")
    with pytest.raises(ValueError, match="missing field"):
        PromptTemplate.load(str(custom))
    with pytest.raises(ValueError, match="no such file or shipped template"):
        PromptTemplate.load("nope-v9")


@pytest.mark.parametrize("model, family, image_text", [("builtin:tiny-qwen2-vl", "qwen2-vl", "<|image_pad|>"),
                                                        ("builtin:tiny-internvl3", "internvl3-hf", "<IMG_CONTEXT>")])
def test_the_family_comes_from_the_models_config_and_places_the_image(model, family, image_text):
    from biocap_ray.caption.families import family_of

    found = family_of(model)
    assert found.name == family and not found.trust_remote_code
    prompt = found.render(PromptTemplate.load("biocap-v1").messages("Turdus iliacus", EXAMPLES, "Red flanks.", 20),
                          load_processor(model))
    assert prompt.count(image_text) == 1
    assert prompt.index("Examples of good captions") < prompt.index(image_text) < prompt.index("Red flanks.")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_the_published_captioners_format_gets_its_placeholder_and_stop_tokens(processor):
    """InternVL3-38B-AWQ (original format): vLLM's own processor expands "<image>" in plain text."""
    from biocap_ray.caption.families import FAMILIES

    original = next(f for f in FAMILIES if "InternVLChatModel" in f.architectures)
    assert original.trust_remote_code and "<|im_end|>" in original.stop
    messages = PromptTemplate.load("biocap-v1").messages("Turdus iliacus", EXAMPLES, "Red flanks.", 20)
    prompt = original.render(messages, processor)  # any Qwen-style chat tokenizer
    assert prompt.count("<image>\n") == 1 and "<|image_pad|>" not in prompt
    assert prompt.index("Examples of good captions") < prompt.index("<image>") < prompt.index("Red flanks.")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_an_unknown_architecture_names_the_known_families(tmp_path):
    from biocap_ray.caption.families import family_of

    (tmp_path / "config.json").write_text('{"architectures": ["LlavaForConditionalGeneration"]}')
    with pytest.raises(ValueError, match="LlavaForConditionalGeneration.*InternVLChatModel"):
        family_of(str(tmp_path))
