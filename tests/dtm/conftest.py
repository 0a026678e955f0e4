from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.dtm_participant import DtmParticipant, dtm_participant


@pytest.fixture
async def dtm_busi() -> AsyncIterator[DtmParticipant]:
    async with dtm_participant() as participant:
        yield participant
