"""Scores in a CLI sweep: the two pack nodes added to every queued workflow, what comes back, and the
scores document (sd35wb/scores.py) built from every cell's scores.

Each queued copy of the workflow gets a ``SD35WB_SweepScores`` node (the scoring models and thresholds)
and a ``SD35WB_ScoreImages`` node fed by the images the workflow saves, so the server that renders an
image scores it (its GPU, its models folder) and the scores return in the prompt's history beside the
image. Diversity and drift need several cells at once, so they are computed here from the returned
embeddings. The per-cell scores are kept in the resume state with the images.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import scores
from .plan import Cell, checkpoint_step

SCORER_NODE = "sd35wb_scorer"
SCORE_NODE = "sd35wb_score"
IMAGE_OUTPUTS = ("SaveImage", "PreviewImage")


@dataclass
class ScoreSpec:
    """The Sweep Scores node's inputs, from the CLI's flags."""

    clip_model: str = scores.CLIP_HUB_CHOICE
    dino_model: str = "none"
    training_images: str = ""
    max_memorisation: float = scores.THRESHOLDS["max_memorisation"][0]
    max_drift: float = scores.THRESHOLDS["max_drift"][0]

    def node_inputs(self) -> dict:
        return {"clip_model": self.clip_model, "dino_model": self.dino_model, "training_images": self.training_images,
                "max_memorisation": self.max_memorisation, "max_drift": self.max_drift}


def image_source(prompt: dict, output_node: str | None) -> list:
    """The link (``[node id, output]``) of the images the workflow saves: what gets scored."""
    ids = [output_node] if output_node else sorted(prompt, key=lambda n: (len(n), n))
    for nid in ids:
        node = prompt.get(str(nid)) or {}
        link = node.get("inputs", {}).get("images")
        if (output_node or node.get("class_type") in IMAGE_OUTPUTS) and isinstance(link, list):
            return link
    raise ValueError("--scores: the workflow saves no images (no SaveImage / PreviewImage with an images input); "
                     "end it in SaveImage, or name the output with --output-node")


def add_to(prompt: dict, spec: ScoreSpec, text: str, output_node: str | None) -> dict:
    """The queued copy with the two scoring nodes added (``prompt`` is already a copy)."""
    for nid in (SCORER_NODE, SCORE_NODE):
        if nid in prompt:
            raise ValueError(f"--scores: the workflow already has a node with id {nid!r}; rename it")
    prompt[SCORER_NODE] = {"class_type": "SD35WB_SweepScores", "inputs": spec.node_inputs()}
    prompt[SCORE_NODE] = {"class_type": "SD35WB_ScoreImages",
                          "inputs": {"images": image_source(prompt, output_node), "scorer": [SCORER_NODE, 0],
                                     "prompt": text}}
    return prompt


def read(outputs: dict) -> list[dict] | None:
    """The per-image scores the server returned for one prompt, or None."""
    got = (outputs.get(SCORE_NODE) or {}).get("sd35wb_scores")
    return got if isinstance(got, list) else None


def build_doc(rows: list[tuple[str, float | None]], labels: dict[str, str], cell_scores: dict[Cell, list[dict]],
              held: list[bool], base_model: str | None, thresholds: dict, lora: bool, look: str = "DINOv2") -> dict:
    """The scores document of a CLI sweep from each cell's returned scores."""
    import numpy as np

    doc_rows = [scores.Row(m, labels[m], checkpoint_step(labels[m]), st,
                           base=(st == 0) if lora else m == base_model) for m, st in rows]
    samples = []
    for c, per_image in cell_scores.items():
        for b, o in enumerate(per_image or []):
            samples.append(scores.Sample(c.row, c.prompt_index, c.seed, c.axes, b,
                                         held[c.prompt_index] if c.prompt_index < len(held) else False,
                                         o.get("clip"), o.get("memorisation"), o.get("nearest"),
                                         np.asarray(o["look"]) if o.get("look") is not None else None))
    return scores.score_doc(doc_rows, samples, scores.Options(dict(thresholds), look))
