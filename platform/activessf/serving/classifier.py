"""The deployed classifier: cell crops or whole smear fields in, cells with subtype probabilities out.

Pure code (torch, timm, OpenCV; no MLflow): ``CellClassifier.load(dir)`` reads a
fine-tuning output's ``model/`` (``model.json`` + ``model.pt``, weights loaded
with ``weights_only=True``). A field runs the region filter (stage 1, with the
configuration the model was registered with) and classifies every region; a
cell crop is classified whole. Inputs are checked before decoding: too many
bytes, too many pixels (read from the header) or an undecodable file raise
:class:`BadInput` with the reason, so a server can answer 400 and go on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import FilterConfig
from ..data.decode import BadImage, decode_image


class BadInput(ValueError):
    """An input the model refuses; the message names which one and why."""


@dataclass(frozen=True)
class Limits:
    max_image_bytes: int = 20_000_000
    max_image_pixels: int = 25_000_000
    max_images: int = 64
    max_request_bytes: int = 64_000_000  # a served request's body, checked before it is parsed


# The starts of a PNG, a JPEG and a TIFF file once base64-encoded: an image encoded twice, or sent in MLflow's
# "inputs"/"instances" formats, which hand the base64 text to the model as it is.
BASE64_STARTS = (b"iVBORw0KGgo", b"/9j/", b"SUkqA", b"TU0AK")


class CellClassifier:
    """A fine-tuned timm classifier with its preprocessing, the region filter and input limits."""

    def __init__(self, model: torch.nn.Module, spec: dict, filter_cfg: FilterConfig, limits: Limits):
        from ..ssl.augment import eval_view

        self.model, self.spec, self.filter_cfg, self.limits = model.eval(), spec, filter_cfg, limits
        self.classes: list[str] = list(spec["classes"])
        self.view = eval_view(spec["image_size"])

    @classmethod
    def load(cls, model_dir: str | Path, filter_cfg: FilterConfig | None = None,
             limits: Limits | None = None) -> "CellClassifier":
        model_dir = Path(model_dir)
        spec = json.loads((model_dir / "model.json").read_text())
        state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
        return cls.from_state(spec, state, filter_cfg, limits)

    @classmethod
    def from_state(cls, spec: dict, state: dict, filter_cfg: FilterConfig | None = None,
                   limits: Limits | None = None) -> "CellClassifier":
        """From ``model.json``'s record and the state dict of ``model.pt`` (e.g. shipped to Ray workers)."""
        from ..finetune.model import create_classifier

        model = create_classifier(spec["timm_name"], spec["timm_kwargs"], spec["num_classes"])
        model.load_state_dict(state)
        return cls(model, spec, filter_cfg or FilterConfig(), limits or Limits())

    def to(self, device) -> "CellClassifier":
        """Run the network on ``device`` (a ``torch.device``); probabilities still come back as numpy."""
        self.model.to(device)
        return self

    def decode(self, data: bytes, index: int) -> np.ndarray:
        """RGB uint8 of input ``index``, or :class:`BadInput` saying why not."""
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise BadInput(f"image {index}: empty or not binary (send the file's bytes, base64 in JSON)")
        if len(data) > self.limits.max_image_bytes:
            raise BadInput(f"image {index}: {len(data):,} bytes is above the limit of "
                           f"{self.limits.max_image_bytes:,} bytes")
        try:
            return decode_image(bytes(data), self.limits.max_image_pixels, "register.max_image_pixels")
        except BadImage as exc:
            hint = ""
            if exc.code == "not_image" and bytes(data[:11]).startswith(BASE64_STARTS):
                hint = (" (base64 text of an image, not the image: send the file base64-encoded once, in "
                        "'dataframe_split' or 'dataframe_records'; MLflow's 'inputs' and 'instances' do not decode it)")
            raise BadInput(f"image {index}: {exc}{hint}") from None

    @torch.inference_mode()
    def probabilities(self, crops: Sequence[np.ndarray], batch: int = 64) -> np.ndarray:
        """Class probabilities (N, C) of RGB uint8 crops of any size."""
        if not len(crops):
            return np.zeros((0, len(self.classes)), np.float32)
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(crops), batch):
            x = torch.stack([self.view(torch.from_numpy(np.ascontiguousarray(c)).permute(2, 0, 1))
                             for c in crops[i:i + batch]]).to(device)
            out.append(torch.softmax(self.model(x).float(), dim=1).cpu().numpy())
        return np.concatenate(out)

    def cells(self, rgb: np.ndarray, kind: str) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
        """(box x, y, w, h; crop) of every cell: the filter's regions of a field, or the whole crop."""
        if kind == "cell":
            return [((0, 0, rgb.shape[1], rgb.shape[0]), rgb)]
        from ..regions.filter import crop, filter_image

        return [((r.x, r.y, r.w, r.h), crop(rgb, r)) for r in filter_image(rgb, self.filter_cfg).regions]

    def predict(self, images: Sequence[bytes], kinds: Sequence[str]) -> list[dict]:
        """One row per cell found: image index, cell index, box, subtype, confidence, p_<class>.

        Every input is checked first; one bad input refuses the whole request (nothing half done).
        """
        if len(images) > self.limits.max_images:
            raise BadInput(f"{len(images)} images in one request; the limit is {self.limits.max_images}")
        bad = [k for k in kinds if k not in ("cell", "field")]
        if bad:
            raise BadInput(f"kind must be 'cell' or 'field', got {bad[0]!r}")
        decoded = [self.decode(data, i) for i, data in enumerate(images)]
        rows = []
        for i, (rgb, kind) in enumerate(zip(decoded, kinds)):
            found = self.cells(rgb, kind)
            probs = self.probabilities([c for _, c in found])
            for j, ((x, y, w, h), p) in enumerate(zip([b for b, _ in found], probs)):
                rows.append({"image": i, "cell": j, "x": int(x), "y": int(y), "w": int(w), "h": int(h),
                             "subtype": self.classes[int(p.argmax())], "confidence": float(p.max()),
                             **{f"p_{c}": float(v) for c, v in zip(self.classes, p)}})
        return rows
