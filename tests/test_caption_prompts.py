import os

import pytest

from biocap_ray.caption.prepare import TINY_MODEL, load_processor
from biocap_ray.caption.prompts import PromptTemplate

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
