"""The write buffer: group commit for concurrent ``add()`` calls."""

from memfuse.buffer.write_buffer import BufferStats, WriteBuffer

__all__ = ["BufferStats", "WriteBuffer"]
