"""`python manage.py make_tiny_model <dir>`: a tiny Llama that vLLM serves, built offline in seconds.

The demo and the tests need a real model that the real engine loads, and these machines may have no
internet and no GPU, so the model is made here: random weights (fixed seed), a byte-level BPE
tokenizer trained on a few built-in sentences, a chat template. ~2 MB; the answers are gibberish.
"""
from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

# vLLM needs a vocabulary that covers every byte, a pad/eos/bos, and room for merges; 512 keeps the
# embedding small while leaving ~250 merges so prompts do not blow up into one token per byte.
VOCAB_SIZE = 512
SEED = 1234
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
# The files a complete model has; a folder that has them all is left alone unless --force.
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

TRAINING_TEXT = """\
Gantry deploys language models on Ray Serve and keeps them running.
A user writes a small spec, the reconciler applies it, and the model answers on port 8000.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Hello, how are you today? I am fine, thank you. What can I do for you?
The system is a helpful assistant. The user asks a question and the assistant answers it.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2026. Punctuation: , . ; : ! ? ' " ( ) [ ] { } - _ / \\ @ # $ % & * + = < >
Every replica of a model runs the same weights; scaling adds replicas and never restarts the others.
"""


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def build_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT.splitlines() * 4, trainer=trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    # Written by hand, not by transformers' save_pretrained: transformers 5 writes
    # tokenizer_class "TokenizersBackend" and puts the chat template in a separate file, and vLLM
    # loaded neither (shared/DESIGN.md). PreTrainedTokenizerFast with the template inline it loads.
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "model_max_length": 256,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def write_model_card(folder: Path) -> None:
    """model-card.json as a training job would write it: the tokenizer's sha and the versions it was
    built with, which the version-skew preflight compares with the runtime that serves it."""
    from gates.preflight.runtime import installed_versions
    from gates.preflight.versions import tokenizer_digest

    versions = installed_versions()
    card = {"model": folder.name, "tokenizer_sha": tokenizer_digest(folder)[0]}
    card.update({key: versions[key] for key in ("torch", "transformers", "tokenizers") if versions.get(key)})
    (folder / "model-card.json").write_text(json.dumps(card, indent=2) + "\n")


def build_model(folder: Path) -> None:
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=tokenizer.token_to_id("<s>"),
        eos_token_id=tokenizer.token_to_id("</s>"),
        pad_token_id=tokenizer.token_to_id("<pad>"),
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)


class Command(BaseCommand):
    help = "Build a tiny Llama model (2 layers, ~2 MB) with its tokenizer and chat template into DIR, offline."

    def add_arguments(self, parser) -> None:
        parser.add_argument("dir", help="folder to write the model into (created if missing)")
        parser.add_argument("--force", action="store_true", help="rebuild even if DIR already holds a complete model")

    def handle(self, *args, **options) -> None:
        folder = Path(options["dir"]).expanduser().resolve()
        if is_complete(folder) and not options["force"]:
            self.stdout.write(f"A tiny model is already in {folder}; left as it is (--force rebuilds it).")
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(f"Cannot create {folder}: {exc}. Choose a folder you can write to.") from None
        for name in REQUIRED_FILES:  # a half-written model must not look complete after a crash
            (folder / name).unlink(missing_ok=True)
        build_tokenizer(folder)
        build_model(folder)
        write_model_card(folder)
        for path in folder.iterdir():
            if path.is_file():
                # safetensors writes 0600; Ray's workers may run as another user (the ray image's).
                path.chmod(0o644)
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        self.stdout.write(self.style.SUCCESS(f"Tiny model written to {folder} ({size / 1e6:.1f} MB)."))
