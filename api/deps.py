"""Typed dependencies: what the routes take from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from htrq.queue import CelerySender
from htrq.settings import Settings
from htrq.storage import BlobStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions  # type: ignore[no-any-return]


def get_storage(request: Request) -> BlobStore:
    return request.app.state.storage  # type: ignore[no-any-return]


def get_sender(request: Request) -> CelerySender:
    return request.app.state.sender  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]
StorageDep = Annotated[BlobStore, Depends(get_storage)]
SenderDep = Annotated[CelerySender, Depends(get_sender)]
