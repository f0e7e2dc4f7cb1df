"""``stembridge separate --format stem``: the separated stems as one NI stem file, and the stem-file input check.

Kept apart from ``engine.separate`` so the separation path only asks two things: whether an input is already a stem
file (``check_not_stem_file``), and for a writer with ``targets``, ``num_clipped`` and ``write``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from stembridge.engine.audio_io import AudioFileError
from stembridge.engine.stem_file import NI_SLOTS, is_stem_file, stem_file_name, write_stem_file


class NothingToSeparate(AudioFileError):
    """The input is already an NI stem file: its own stems are there."""


def check_not_stem_file(path: Path) -> None:
    """Raise ``NothingToSeparate`` for an NI stem file (a deck plays its stems as they are)."""
    if is_stem_file(path):
        raise NothingToSeparate(
            f"{path}: already an NI stem file (its mixture plus drums, bass, other and vocals): nothing to separate; "
            "load it on a deck to play its own stems, or pass --reseparate to separate its mixture again"
        )


class StemFileOutput:
    """Writes ``out_dir/<input name>.stem.mp4`` from the input (the mixture stream, its tags and cover) and the
    model's stems. The model must have NI's four stems; ``residual`` (the model's residual stem) takes the 24-bit
    rounding in ALAC so the stems sum to the mixture exactly."""

    def __init__(
        self,
        out_dir: Path,
        input_path: Path,
        model_stems: tuple[str, ...],
        residual: str | None,
        *,
        codec: str = "aac",
        overwrite: bool = False,
    ) -> None:
        missing = [s for s in NI_SLOTS if s not in model_stems]
        if missing:
            raise AudioFileError(
                f"--format stem needs a model with NI's four stems ({', '.join(NI_SLOTS)}); "
                f"this model has {', '.join(model_stems)}"
            )
        self.input_path = input_path
        self.codec = codec
        self.residual = residual if residual in NI_SLOTS else None
        self.overwrite = overwrite
        target = out_dir / stem_file_name(input_path)
        if target.exists() and not overwrite:
            raise AudioFileError(f"output exists (use --overwrite to replace): {target}")
        self.targets = {"stem": target}
        self.num_clipped = 0
        self.bit_rate: int | None = None

    def write(self, mixture: np.ndarray, sample_rate: int, stems: dict[str, np.ndarray]) -> None:
        """mixture: float32 (num_channels, n), the input; stems: NI slot -> float32 (num_channels, n)."""
        result = write_stem_file(
            self.targets["stem"],
            mixture,
            {s: stems[s] for s in NI_SLOTS},
            sample_rate,
            codec=self.codec,
            tags_from=self.input_path,
            residual=self.residual,
            overwrite=self.overwrite,
        )
        self.num_clipped = result.num_clipped
        self.bit_rate = result.bit_rate
