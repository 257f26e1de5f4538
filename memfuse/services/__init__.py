"""Services: units of work over repositories, built by the container."""

from memfuse.services.tenancy import MemoryScope, TenancyService

__all__ = ["MemoryScope", "TenancyService"]
