"""How a stored M0 message enters the layers: as a :class:`~memfuse.types.ChunkData`."""

from __future__ import annotations

from memfuse.types import ChunkData, MessageRow


def message_chunk(row: MessageRow) -> ChunkData:
    """A stored message as the chunk the M1 and M2 layers take."""
    return ChunkData(
        content=row.content,
        user_id=row.user_id,
        agent_id=row.agent_id,
        session_id=row.session_id,
        message_ids=(row.id,),
        first_seq=row.seq,
        last_seq=row.seq,
        started_at=row.created_at,
        ended_at=row.created_at,
        token_count=row.token_count,
        role=row.role,
        speaker=row.name or row.role,
        metadata=row.metadata,
    )
