"""Caption handwritten digits: one decoder reads an image, then writes the digit's name.

    python examples/caption_digits.py                   # 1,500 steps, about 35 s on 2 CPU cores: 95.6-97.5% of held-out digits
    python examples/caption_digits.py --plot captions.png --save my_captioner   # ... with a picture, and the model kept

`vit_digits` (a classifier, with augmentation and 5,000 steps) reaches 98.9% on the same split.

The toolkit as a library under a training loop of your own (plain PyTorch: no recipe, no
Accelerate). Two tokenizers emit token sets for one sample, an 8x8 digit from scikit-learn's
bundled set and its caption; one `MultimodalTransformer` gives every token its embedding (patch
pixels through a linear layer, characters through an embedding table), its position and its type,
reads the image as a prefix (its patches attend to each other both ways) and learns to continue it
with the caption, "<|endoftext|>seven<|endoftext|>", by next-token loss on the text alone. Held-out
digits are then captioned by greedy decoding from "<|endoftext|>" and scored by exact match.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from models import HeadConfig, ModalityConfig, ModelConfig, MultimodalTransformer, TrunkConfig
from tokenizers_mm import ENDOFTEXT, CharTokenizer, ImageTokenizer, collate, next_token_set

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def build(dim: int = 64, depth: int = 2):
    """The two tokenizers and a decoder that reads the image as a prefix, then the text."""
    image_tok = ImageTokenizer(image_size=8, patch_size=2, channels=1, mean=(0.5,), std=(0.5,), cls_token=False)  # 16 patch tokens
    text_tok = CharTokenizer(chars="".join(sorted(set("".join(NAMES)))), max_positions=8)  # 15 letters + <|endoftext|>
    config = ModelConfig(TrunkConfig(dim=dim, depth=depth, num_heads=4, mode="decoder"),
                         {"image": ModalityConfig.from_tokenizer(image_tok), "text": ModalityConfig.from_tokenizer(text_tok)},
                         {"lm": HeadConfig("lm", "text")}, decoder_inputs=["image", "text"], prefix_inputs=["image"])  # fmt: skip
    return image_tok, text_tok, MultimodalTransformer(config)


def caption(model, image_tok, text_tok, images: torch.Tensor) -> list[str]:
    """Greedy captions of a batch of images (B, 1, 8, 8) in [0, 1]."""
    eot = text_tok.special_ids[ENDOFTEXT]
    prompt = {"image": collate([image_tok.encode(x) for x in images]),
              "text": collate([text_tok.encode(ENDOFTEXT, allowed_special="all")] * len(images))}  # fmt: skip
    ids = model.generate(prompt, max(map(len, NAMES)) + 1, temperature=0.0, eos_id=eot)[:, 1:].tolist()
    return [text_tok.decode(row[: row.index(eot)] if eot in row else row) for row in ids]  # up to its <|endoftext|>


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", help="save a picture of held-out digits with their captions to this PNG")
    ap.add_argument("--save", help="save the model and both tokenizers to this new folder (MultimodalTransformer.load, load_tokenizer)")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)

    digits = load_digits()  # 1,797 8x8 images, pixels 0..16
    train, test = train_test_split(range(len(digits.target)), test_size=0.2, stratify=digits.target, random_state=0)  # vit_digits' split
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    labels = digits.target.tolist()
    image_tok, text_tok, model = build()
    image_sets = [image_tok.encode(x) for x in images]  # tokenized once: a TokenSet per image
    text_sets = [next_token_set("text", text_tok.encode_ids(f"{ENDOFTEXT}{NAMES[y]}{ENDOFTEXT}", allowed_special="all")) for y in labels]
    print(f"{model.num_params():,} parameters; {len(train)} training digits, {len(test)} held out")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=max(args.steps, 1), pct_start=0.1)
    losses = []
    model.train()
    for step in range(1, args.steps + 1):
        rows = [train[i] for i in torch.randint(len(train), (args.batch_size,)).tolist()]
        batch = {"image": collate([image_sets[i] for i in rows]), "text": collate([text_sets[i] for i in rows])}
        loss = model(batch).loss  # the lm head's next-token loss on the caption (its targets ride in the text batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == args.steps:
            print(f"step {step}: loss {sum(losses[-100:]) / len(losses[-100:]):.4f}")

    model.eval()
    with torch.no_grad():
        written = [c for start in range(0, len(test), 256) for c in caption(model, image_tok, text_tok, images[test[start : start + 256]])]
    truth = [NAMES[labels[i]] for i in test]
    accuracy = sum(w == t for w, t in zip(written, truth)) / len(test)
    print(f"held-out captions exactly right: {accuracy:.1%} of {len(test)}; e.g. " + ", ".join(f"{t} -> {w!r}" for t, w in list(zip(truth, written))[:5]))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 8, figsize=(12, 3.6))
        for ax, x, t, w in zip(axes.flat, images[test], truth, written):
            ax.imshow(x[0].numpy(), cmap="gray_r")
            ax.set_title(w if w == t else f"{w or '(nothing)'} ({t})", color="black" if w == t else "red", fontsize=10)
            ax.axis("off")
        fig.suptitle(f"held-out digits, captioned by the model ({accuracy:.1%} right; red: wrong, the truth in brackets)")
        fig.savefig(args.plot, dpi=100, bbox_inches="tight")
        print(f"captions drawn to {args.plot}")
    if args.save:
        model.save(args.save)  # config.json + model.safetensors
        image_tok.save(Path(args.save) / "tokenizers" / "image")
        text_tok.save(Path(args.save) / "tokenizers" / "text")
        print(f"model and tokenizers saved to {args.save}: MultimodalTransformer.load({args.save!r}), "
              f"load_tokenizer('{args.save}/tokenizers/text')")  # fmt: skip
    result = {"steps": args.steps, "final_loss": losses[-1] if losses else None, "accuracy": accuracy,
              "held_out": test[:8], "captions": written[:8]}  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
