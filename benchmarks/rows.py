"""Preference rows rebuilt from sentences of the real corpus, for the benchmark data generator.

The real hh-rlhf and human-eval files are split into sentences, and new rows are made of
random sentences with an occasional word swapped. The rows are therefore new but compress
like the real text. zstd -3 stored the generated JSONL at about 1/5 of its size and the
real hh-rlhf test file at about 1/4.8 (measured on a benchmarks/generate.py tree made
with --size-mb 50).
"""

from __future__ import annotations

import gzip
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Corpus:
    """Text material taken from the real corpus."""

    sentences: list[str]
    vocabulary: list[str]
    eval_rows: list[dict]
    configs: list[tuple[str, str]]


def load_corpus(root: Path) -> Corpus:
    """Read the real preference rows, human-eval rows and configs under `root`."""
    preference_file = root / "preferences" / "hh-rlhf-harmless-base-test.jsonl.gz"
    if not preference_file.is_file():
        raise SystemExit(f"corpus file {preference_file} not found: pass --corpus DIR pointing at the corpus")
    texts: list[str] = []
    with gzip.open(preference_file, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            texts.extend([row["chosen"], row["rejected"]])
    eval_rows: list[dict] = []
    for path in sorted((root / "human-eval").glob("*.jsonl")):
        with open(path, encoding="utf-8") as handle:
            eval_rows.extend(json.loads(line) for line in handle if line.strip())
    for row in eval_rows:
        texts.append(row.get("prompt", ""))
    sentences = sorted({s.strip() for text in texts for s in re.split(r"(?<=[.!?\n])\s+", text) if len(s.strip()) > 3})
    vocabulary = sorted({w for s in sentences for w in s.split() if w.isalpha()})
    configs = []
    for path in sorted((root / "configs").rglob("*")):
        if path.is_file():
            configs.append((str(path.relative_to(root / "configs")), path.read_text(encoding="utf-8", errors="replace")))
    return Corpus(sentences=sentences, vocabulary=vocabulary, eval_rows=eval_rows, configs=configs)


class RowMaker:
    """Builds preference rows from recombined corpus sentences, with stable ids."""

    def __init__(self, corpus: Corpus, rng: random.Random) -> None:
        self.corpus = corpus
        self.rng = rng

    def _utterance(self) -> str:
        rng = self.rng
        words = []
        for _ in range(rng.randint(1, 4)):
            sentence = rng.choice(self.corpus.sentences)
            # Swapping one word keeps the text readable but stops whole rows from repeating,
            # which would make the data compress far better than real preference data does.
            if rng.random() < 0.5:
                parts = sentence.split(" ")
                parts[rng.randrange(len(parts))] = rng.choice(self.corpus.vocabulary)
                sentence = " ".join(parts)
            words.append(sentence)
        return " ".join(words)

    def _dialogue_prefix(self, turns: int) -> str:
        parts = [f"\n\nHuman: {self._utterance()}\n\nAssistant: {self._utterance()}" for _ in range(turns)]
        parts.append(f"\n\nHuman: {self._utterance()}\n\nAssistant: ")
        return "".join(parts)

    def row(self, row_id: str) -> dict:
        rng = self.rng
        # Both responses continue the same dialogue, as in hh-rlhf.
        prefix = self._dialogue_prefix(rng.randint(0, 3))
        chosen = prefix + self._utterance()
        rejected = prefix + self._utterance() + " " + self._utterance()
        return {
            "id": row_id,
            "chosen": chosen,
            "rejected": rejected,
            "score_chosen": round(rng.uniform(5, 10), 2),
            "score_rejected": round(rng.uniform(0, 5), 2),
            "annotator": f"ann-{rng.randrange(400):03d}",
            "source": rng.choice(["hh-rlhf/harmless-base", "hh-rlhf/helpful-base", "tulu-eval/human"]),
        }


def relabel(row: dict) -> dict:
    """Swap chosen and rejected, as a re-annotation pass does. The JSON length stays the same."""
    swapped = dict(row)
    swapped["chosen"], swapped["rejected"] = row["rejected"], row["chosen"]
    swapped["score_chosen"], swapped["score_rejected"] = row["score_rejected"], row["score_chosen"]
    return swapped
