"""Services: units of work over repositories, built by the container."""

from memfuse.services.tenancy import TenancyService

__all__ = ["TenancyService"]
