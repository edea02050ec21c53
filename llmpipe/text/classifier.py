"""fastText models: the built-in language identifier, user models, and models trained by train_classifier.

A model reference is one of:
    builtin:lid.176        fastText's lid.176.ftz (176 languages), shipped in llmpipe/assets/
    path/to/model.bin      any fastText supervised model (lid.176.bin, GlotLID, a DCLM quality model, ...)
    path/to/artifact       the output of `llmpipe train-classifier` (its preprocessing is read from the manifest)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llmpipe.errors import InputError

_SPACES = re.compile(r"\s+")


@dataclass
class Classifier:
    model: object  # fasttext.FastText._FastText
    lowercase: bool
    labels: list[str]

    def prepare(self, text: str) -> str:
        # fastText predicts on one line; newlines would raise, runs of spaces only add noise
        text = _SPACES.sub(" ", text).strip()
        return text.lower() if self.lowercase else text

    def predict(self, texts: list[str], k: int = 1) -> tuple[list[list[str]], list[list[float]]]:
        """Top-k labels (without the __label__ prefix) and probabilities for each text."""
        labels, probs = self.model.predict([self.prepare(t) for t in texts], k=k)
        return [[lab.removeprefix("__label__") for lab in row] for row in labels], [[float(p) for p in row] for row in probs]

    def probability(self, texts: list[str], label: str) -> list[float]:
        """P(label | text) for each text (0 when the label is not among the model's outputs)."""
        labels, probs = self.predict(texts, k=len(self.labels))
        return [dict(zip(row_l, row_p)).get(label, 0.0) for row_l, row_p in zip(labels, probs)]


def builtin_path(name: str) -> Path:
    path = Path(__file__).resolve().parents[1] / "assets" / f"{name}.ftz"
    if not path.exists():
        raise InputError(f'unknown built-in model "builtin:{name}"; the built-in model is builtin:lid.176')
    return path


def load_classifier(ref: str) -> Classifier:
    import fasttext

    lowercase = False
    if ref.startswith("builtin:"):
        path = builtin_path(ref.removeprefix("builtin:"))
    elif Path(ref).is_dir():
        from llmpipe.artifacts.manifest import read_manifest

        manifest = read_manifest(Path(ref))
        path = Path(ref) / "model.bin"
        lowercase = manifest.get("preprocessing", {}).get("lowercase", False)
    else:
        path = Path(ref)
    try:
        fasttext.FastText.eprint = lambda *a, **k: None  # silence the load_model deprecation notice
        model = fasttext.load_model(str(path))
    except ValueError as e:
        raise InputError(f"{ref}: not a fastText model: {e}") from None
    return Classifier(model, lowercase, [lab.removeprefix("__label__") for lab in model.get_labels()])
