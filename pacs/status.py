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

FAILURE_STATUS = {
    Problem.INVALID: CANNOT_UNDERSTAND,
    Problem.MISMATCH: DATASET_MISMATCH,
    Problem.CONFLICT: PROCESSING_FAILURE,
    Problem.OUT_OF_RESOURCES: OUT_OF_RESOURCES,
}
