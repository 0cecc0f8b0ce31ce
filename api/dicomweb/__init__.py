"""DICOMweb (PS3.18) at ``/dicomweb``: QIDO-RS search, WADO-RS retrieve, STOW-RS store."""

from __future__ import annotations

from fastapi import APIRouter

from api.dicomweb import qido, rendered, stow, wado

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])
router.include_router(qido.router)
router.include_router(stow.router)
router.include_router(wado.router)
router.include_router(rendered.router)
