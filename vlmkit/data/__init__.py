"""vlmkit's data layer: sources, safe decoding, transforms, tokenizer, datasets, synthetic data.

    samples = load_samples("data/captions.csv")             # or COCO JSON, tar shards, a folder
    dataset = ImageTextDataset(samples, ImageTransform(64, train=True), seed=0)
    loader = DataLoader(dataset, batch_size=256, collate_fn=Collator(tokenizer, 32))
    report = BadSampleReport(); report.update_from_batch(batch)  # skip batches whose images is None
    questions = load_vqa("vqa_questions.json", "vqa_annotations.json")  # VQAv2 (or a JSONL file)
"""
from .dataset import Collator, ImageTextDataset, collate_image_text, sample_rng
from .decode import BAD_SAMPLE_REASONS, BadSample, BadSampleReport, decode_caption, decode_image
from .sources import ImageRef, Sample, expand_captions, group_by_image, load_samples
from .tokenizer import Tokenizer, train_bpe
from .transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform, images_to_tensor
from .vqa import VQAQuestion, load_vqa

__all__ = [
    "BAD_SAMPLE_REASONS",
    "BadSample",
    "BadSampleReport",
    "Collator",
    "ImageRef",
    "ImageTextDataset",
    "ImageTransform",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "Sample",
    "Tokenizer",
    "VQAQuestion",
    "collate_image_text",
    "decode_caption",
    "decode_image",
    "expand_captions",
    "group_by_image",
    "images_to_tensor",
    "load_samples",
    "load_vqa",
    "sample_rng",
    "train_bpe",
]
