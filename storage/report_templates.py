"""Structured report templates: the fields a radiologist fills in per kind of study.

Each template is an ordered list of (key, label) pairs; a report's ``fields`` holds
text for any of its keys. The keys are stable (they are stored); the labels are what
the PDF prints. ``none`` is a free report with findings and impression only.
"""

from __future__ import annotations

TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "none": (),
    "ct-head": (
        ("haemorrhage", "Haemorrhage"),
        ("midline_shift", "Midline shift"),
        ("ventricles", "Ventricles"),
        ("grey_white", "Grey-white differentiation"),
        ("skull", "Skull and scalp"),
    ),
    "ct-chest": (
        ("lungs", "Lungs"),
        ("nodules", "Nodules"),
        ("pleura", "Pleura"),
        ("mediastinum", "Mediastinum and hila"),
        ("heart", "Heart and great vessels"),
        ("bones", "Bones"),
    ),
    "mr-brain": (
        ("parenchyma", "Parenchyma"),
        ("white_matter", "White matter"),
        ("diffusion", "Diffusion"),
        ("ventricles", "Ventricles"),
        ("extra_axial", "Extra-axial spaces"),
        ("enhancement", "Enhancement"),
    ),
    "xa-coronary": (
        ("dominance", "Dominance"),
        ("left_main", "Left main"),
        ("lad", "LAD"),
        ("lcx", "LCx"),
        ("rca", "RCA"),
        ("timi_flow", "TIMI flow"),
        ("intervention", "Intervention"),
    ),
}


def labelled(template: str, fields: dict[str, str]) -> list[tuple[str, str]]:
    """The filled-in fields of ``template`` as (label, text), in the template's order."""
    return [(label, fields[key]) for key, label in TEMPLATES.get(template, ()) if fields.get(key)]
