"""Storage status codes, shared by C-STORE responses and STOW-RS reasons.

PS3.4 Annex B.2.3 (Storage Service Class statuses), PS3.7 C.4.2.1.4 (the general
processing failure) and PS3.18 Annex I (STOW-RS FailureReason / WarningReason use
the same values).
"""

from __future__ import annotations

from storage import Problem

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
ELEMENTS_DISCARDED = 0xB006  # warning: same UID, other content, first copy kept
NOT_AUTHORIZED = 0x0124  # PS3.4 C.4.2.1.4 "Refused: Not Authorized"

FAILURE_STATUS = {
    Problem.INVALID: CANNOT_UNDERSTAND,
    Problem.MISMATCH: DATASET_MISMATCH,
    Problem.CONFLICT: PROCESSING_FAILURE,
    Problem.OUT_OF_RESOURCES: OUT_OF_RESOURCES,
}


def error_comment(reason: str) -> str:
    """An ErrorComment (0000,0902) is an LO: 64 characters, no backslash or control
    characters (PS3.7 C.4.2.1.3, PS3.5 6.2)."""
    clean = "".join(c if c.isprintable() and c != "\\" else " " for c in reason)
    return clean[:64]
