"""The write buffer: group commit for concurrent ``add()`` calls."""

from memfuse.buffer.write_buffer import WriteBuffer

__all__ = ["WriteBuffer"]
