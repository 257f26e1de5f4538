"""The memory layers: M0 raw messages, M1 episodes, M2 facts, and the pipeline between them."""
